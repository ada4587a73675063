"""The local tachi CLI against a daemon reached over SSH: ``tachi --host ssh://…``.

The client runs the real OpenSSH client (``ssh -s HOST tachi``); the channel
carries tachi frames, served by the daemon as the SSH principal.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

import pexpect
from ssh_support import ssh_daemon, until

__all__ = ["ssh_daemon"]


def _ssh_command(s, key: str | None = "owner", batch: bool = True) -> str:
    argv = s.ssh_argv(key=key, batch=batch)
    # ssh_argv ends with "-T 127.0.0.1": the URL names the host and port instead.
    argv = argv[: argv.index("-T")]
    port_at = argv.index("-p")
    del argv[port_at : port_at + 2]
    return shlex.join(argv)


def _remote(s, *args: str, key: str | None = "owner", **kwargs) -> subprocess.CompletedProcess:
    env = {**s.daemon.env, "TACHI_SSH_COMMAND": _ssh_command(s, key)}
    env.pop("TACHI_SOCKET")  # nothing local: only the URL
    return subprocess.run(
        [sys.executable, "-m", "tachi", "--host", f"ssh://127.0.0.1:{s.port}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def test_the_local_cli_drives_a_daemon_over_ssh(ssh_daemon):
    s = ssh_daemon
    created = _remote(s, "new", "-d", "--json", "--name", "far", "--", "bash", "--norc")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == "far"
    assert _remote(s, "send", "far", "echo over-frames-$((9*9))\\n").returncode == 0
    waited = _remote(s, "wait", "far", "--match", "over-frames-81", "--timeout", "10")
    assert waited.returncode == 0, waited.stderr
    listed = json.loads(_remote(s, "ls", "--json").stdout)
    assert [x["name"] for x in listed] == ["far"]
    missing = _remote(s, "capture", "nosuch")
    assert missing.returncode == 3 and "no session 'nosuch'" in missing.stderr
    login = [r for r in s.audit() if r["action"] == "ssh.login"][-1]
    assert login["details"]["method"] == "publickey"


def test_attach_over_ssh_frames_types_resizes_and_detaches(ssh_daemon):
    s = ssh_daemon
    s.daemon.new("bash", "--norc", "--noprofile", name="far", env="PS1=far> ")
    env = {**s.daemon.env, "TACHI_SSH_COMMAND": _ssh_command(s)}
    env.pop("TACHI_SOCKET")
    argv = [sys.executable, "-m", "tachi", "--host", f"ssh://127.0.0.1:{s.port}", "attach", "far"]
    term = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(26, 90), timeout=15)
    try:
        term.expect("far> ")
        assert s.session("far")["pty"]["rows"] == 26
        term.send("echo typed-far-$((6*7))\r")
        term.expect("typed-far-42")
        term.setwinsize(31, 101)  # SIGWINCH to the local CLI, resize over SSH
        until(lambda: s.session("far")["pty"]["cols"] == 101)
        term.send("\x1cd")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0
    assert s.session("far")["closeReason"] is None


def test_an_unknown_key_gets_sshs_refusal_and_a_clear_error(ssh_daemon):
    s = ssh_daemon
    refused = _remote(s, "ls", key="stranger")
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr  # from ssh itself
    assert refused.stderr.rstrip().splitlines()[-1].startswith("tachi: ")


def test_malformed_frames_end_that_channel_only(ssh_daemon):
    s = ssh_daemon
    session = s.daemon.new("sleep", "300")
    argv = s.ssh_argv("tachi", options=("-s",))  # ssh … -T -s 127.0.0.1 tachi
    bad = subprocess.run(argv, input=b"\xff" * 64, capture_output=True, timeout=20)
    # The daemon answers with an error event (a frame) and closes the channel.
    assert b'"event": "error"' in bad.stdout or b'"event":"error"' in bad.stdout
    assert s.daemon.run("get", session["id"]).returncode == 0  # the daemon is fine
    assert s.ssh("ls").returncode == 0


def test_a_share_token_typed_at_sshs_prompt(ssh_daemon):
    s = ssh_daemon
    session = s.daemon.new("bash", "--norc", env="PS1=tok> ")
    s.daemon.run("send", session["id"], "echo for-the-token-holder\\n", check=True)
    grant = json.loads(
        s.daemon.run("share", session["id"], "--role", "observer", "--json", check=True).stdout
    )
    command = _ssh_command(s, key=None, batch=False)
    env = {**s.daemon.env, "TACHI_SSH_COMMAND": command + " -o NumberOfPasswordPrompts=1"}
    env.pop("TACHI_SOCKET")
    argv = [sys.executable, "-m", "tachi", "--host", f"ssh://127.0.0.1:{s.port}"]
    term = pexpect.spawn(argv[0], [*argv[1:], "capture", session["id"]], env=env, timeout=15)
    try:
        term.expect("tachi share token: ")
        term.sendline(grant["token"])
        term.expect("for-the-token-holder")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0
    login = [r for r in s.audit() if r["action"] == "ssh.login"][-1]
    assert login["principal"] == f"token:{grant['id']}"


def test_an_observers_raw_input_over_ssh_is_dropped_by_the_daemon(
    ssh_daemon, monkeypatch, tmp_path
):
    """The Python API over ssh:// writes stdin frames as an observer: they never
    reach the PTY, and the daemon audits the attempt."""
    import tachi

    s = ssh_daemon
    session = s.daemon.new("bash", "--norc", env="PS1=obs> ")
    grant = json.loads(
        s.daemon.run("share", session["id"], "--role", "observer", "--json", check=True).stdout
    )
    monkeypatch.setenv("TACHI_LOAD_PLUGINS", "ssh")
    monkeypatch.setenv("TACHI_SSH_COMMAND", _ssh_command(s))
    marker = tmp_path / "observer-typed"
    url = f"ssh://127.0.0.1:{s.port}"
    with tachi.Client(url=url, token=grant["token"]) as client:
        conn = client.attach(session["id"])
        try:
            conn.write(f"touch {marker}\r".encode())
            s.daemon.run("send", session["id"], "echo owner-$((4*4))\\n", check=True)
            seen = b""
            deadline = time.monotonic() + 10
            while b"owner-16" not in seen and time.monotonic() < deadline:
                seen += conn.read(timeout=1)
            assert b"owner-16" in seen  # the observer sees the session
        finally:
            conn.close()
    assert not marker.exists()
    denied = until(
        lambda: [r for r in s.audit() if r["action"] == "session.write" and r["result"] == "denied"]
    )[-1]
    assert denied["principal"] == f"token:{grant['id']}"
    assert denied["source"].startswith("ssh:127.0.0.1:")
