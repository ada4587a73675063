"""Scripts over SSH: the real OpenSSH client in BatchMode against a real daemon."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
from ssh_support import (
    BOB,
    CAROL,
    OWNER,
    authorized_line,
    ensure_local_user,
    make_key,
    ssh_daemon,
    start_ssh_daemon,
    until,
)

from tachi.testing import DaemonProcess

__all__ = ["ssh_daemon"]


def test_ls_new_send_capture_work_as_the_cli_does(ssh_daemon):
    s = ssh_daemon
    empty = s.ssh("ls", "--json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == []

    created = s.ssh("new", "-d", "--json", "--name", "viassh", "--", "bash", "--norc")
    assert created.returncode == 0, created.stderr
    session = json.loads(created.stdout)
    assert session["name"] == "viassh" and session["userId"] == OWNER

    listed = s.ssh("ls")
    assert listed.returncode == 0 and "viassh" in listed.stdout and session["id"] in listed.stdout

    sent = s.ssh("send", "viassh", "'echo from-ssh-$((6*7))\\n'")
    assert sent.returncode == 0, sent.stderr
    waited = s.ssh("wait", "viassh", "--match", "from-ssh-42", "--timeout", "10")
    assert waited.returncode == 0, waited.stderr
    captured = s.ssh("capture", "viassh")
    assert captured.returncode == 0 and "from-ssh-42" in captured.stdout
    # The same screen the local CLI captures.
    assert captured.stdout == s.daemon.run("capture", "viassh", check=True).stdout


def test_exit_codes_and_errors_are_the_clis(ssh_daemon):
    s = ssh_daemon
    missing = s.ssh("capture", "nosuch")
    assert missing.returncode == 3
    assert missing.stderr.strip() == "tachi: no session 'nosuch' (see 'tachi ls')"
    usage = s.ssh("send")
    assert usage.returncode == 2 and usage.stderr.startswith("tachi: ")
    timed_out = s.daemon.new("sleep", "300")
    waited = s.ssh("wait", timed_out["id"], "--match", "never", "--timeout", "0.3")
    assert waited.returncode == 124
    unparsable = s.ssh("send", "x", "'unterminated")
    assert unparsable.returncode == 2 and "cannot parse" in unparsable.stderr


def test_commands_that_touch_the_host_are_not_offered(ssh_daemon):
    s = ssh_daemon
    for command in (("daemon", "stop"), ("play", "/etc/passwd"), ("record", "ls"), ("audit",)):
        result = s.ssh(*command)
        assert result.returncode == 2, command
        assert "is not available over SSH" in result.stderr
    assert s.daemon.run("daemon", "status").returncode == 0  # still running


def test_a_principal_without_grants_sees_nothing_and_is_refused(ssh_daemon):
    s = ssh_daemon
    session = s.daemon.new("sleep", "300")
    listed = s.ssh("ls", "--json", key="bob")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    # A session bob may not see looks like one that does not exist (F19).
    refused = s.ssh("capture", session["id"], key="bob")
    assert refused.returncode == 3
    assert refused.stderr.strip() == f"tachi: no session {session['id']!r} (see 'tachi ls')"
    created = s.ssh("new", "-d", "--", "true", key="bob")
    assert created.returncode == 4
    denied = [r for r in s.audit() if r["principal"] == BOB and r["result"] == "denied"]
    assert {r["action"] for r in denied} >= {"session.read", "session.create"}
    assert all(r["source"].startswith("ssh:127.0.0.1:") for r in denied)


def test_unknown_key_is_refused_and_audited_with_the_address(ssh_daemon):
    s = ssh_daemon
    refused = s.ssh("ls", key="stranger")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    record = until(
        lambda: [r for r in s.audit() if r["action"] == "auth" and r["result"] == "denied"]
    )[-1]
    assert record["details"]["address"] == "127.0.0.1"
    assert record["source"].startswith("ssh:127.0.0.1:")
    assert record["reason"].startswith("unknown key SHA256:")


def test_host_key_is_made_once_and_shown_by_status(ssh_daemon):
    s = ssh_daemon
    key_file = s.daemon.state_dir / "ssh_host_ed25519_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(key_file)], capture_output=True, text=True, check=True
    ).stdout
    assert printed.split()[1] == s.fingerprint
    s.daemon.stop()
    s.daemon.start()
    listener = s.refresh_listener()
    assert listener["hostKey"] == printed.split()[1]  # the same key after a restart
    # StrictHostKeyChecking=yes with the key from status: ssh trusts the daemon.
    assert s.ssh("ls").returncode == 0


def test_a_changed_host_key_is_detected_by_the_client(ssh_daemon):
    s = ssh_daemon
    other = make_key(s.home, "other_host").with_suffix(".pub").read_text().split()
    s.known_hosts.write_text(f"[127.0.0.1]:{s.port} {other[0]} {other[1]}\n")
    result = s.ssh("ls")
    assert result.returncode == 255  # ssh refuses a daemon whose key is not the pinned one


def test_connection_from_a_denied_address_is_refused(tachi_home):
    s = start_ssh_daemon(tachi_home, extra_config='[security]\ndeny_ip = ["127.0.0.2/32"]\n')
    try:
        assert s.ssh("ls").returncode == 0  # from 127.0.0.1
        refused = s.ssh("ls", bind="127.0.0.2")
        assert refused.returncode == 255
        record = until(
            lambda: [r for r in s.audit() if r["action"] == "connect" and r["result"] == "denied"]
        )[-1]
        assert record["details"]["address"] == "127.0.0.2"
        assert "deny_ip" in record["reason"]
    finally:
        s.daemon.stop()


def test_user_certificates_signed_by_the_ca_log_in_as_their_principal(tachi_home):
    keydir = tachi_home / "ca"
    keydir.mkdir()
    ca = make_key(keydir, "user_ca")
    ensure_local_user(CAROL)
    s = start_ssh_daemon(tachi_home, extra_ssh=f'ca_keys = "{ca}.pub"')
    try:
        carol = make_key(s.home / "keys", "carol")
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-s",
                str(ca),
                "-I",
                "carol@test",
                "-n",
                CAROL,
                "-V",
                "+1h",
                str(carol) + ".pub",
            ],
            check=True,
        )
        s.keys["carol"] = carol
        session = s.daemon.new("bash", "--norc")
        s.daemon.run("share", session["id"], "--role", "observer", "--user", CAROL, check=True)
        shared = s.ssh("capture", session["id"], key="carol", user=CAROL)
        assert shared.returncode == 0, shared.stderr
        login = [r for r in s.audit() if r["action"] == "ssh.login"][-1]
        assert login["principal"] == CAROL and login["details"]["method"] == "certificate"
        # The certificate does not name dave: refused.
        refused = s.ssh("ls", key="carol", user="dave")
        assert refused.returncode == 255
        # A certificate from a CA nobody configured: refused.
        rogue = make_key(keydir, "rogue_ca")
        mallory = make_key(s.home / "keys", "mallory")
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-s",
                str(rogue),
                "-I",
                "m",
                "-n",
                CAROL,
                "-V",
                "+1h",
                str(mallory) + ".pub",
            ],
            check=True,
        )
        s.keys["mallory"] = mallory
        assert s.ssh("ls", key="mallory", user=CAROL).returncode == 255
    finally:
        s.daemon.stop()


def test_help_lists_what_is_offered_and_the_plugin_is_loaded(ssh_daemon):
    s = ssh_daemon
    shown = s.ssh("help")
    assert shown.returncode == 0 and "commands: ls get new attach" in shown.stdout
    plugins = json.loads(s.daemon.run("plugins", "--json", check=True).stdout)
    (plugin,) = [p for p in plugins if p.get("distribution") == "tachi-ssh"]
    assert set(plugin["hooks"]) == {
        "tachi_register_transports",
        "tachi_authenticate",
        "tachi_connect",
    }


def test_forwarding_is_not_offered(ssh_daemon):
    s = ssh_daemon
    # stdio forwarding (a direct-tcpip channel) to the daemon's own listener
    forwarded = s.ssh(options=("-W", f"127.0.0.1:{s.port}"), tty=False, timeout=20)
    assert forwarded.returncode == 255
    assert s.ssh("ls").returncode == 0


def test_from_option_restricts_where_a_key_may_be_used(tachi_home):
    s = start_ssh_daemon(tachi_home)
    try:
        lines = (s.home / "authorized_keys").read_text().splitlines()
        lines[0] = authorized_line(s.keys["owner"], OWNER, 'from="127.0.0.2"')
        (s.home / "authorized_keys").write_text("\n".join(lines) + "\n")
        # Re-read without a restart; the key now works from 127.0.0.2 only.
        assert s.ssh("ls").returncode == 255
        assert s.ssh("ls", bind="127.0.0.2").returncode == 0
        assert s.ssh("ls", key="bob").returncode == 0  # other entries unaffected
    finally:
        s.daemon.stop()


@pytest.mark.parametrize(
    ("ssh_config", "expected"),
    [
        ('listen = "nonsense"', "[transports.ssh]: listen must be HOST:PORT"),
        ('listen = "127.0.0.1:0"\nca_keys = "/nonexistent/ca.pub"', "ssh: cannot read ca_keys"),
        ('listen = "127.0.0.1:0"\nhost_key = "{home}/bad_key"', "ssh: cannot use the host key"),
        ('listen = "127.0.0.1:{busy}"', "ssh: cannot listen on 127.0.0.1:"),
    ],
)
def test_a_bad_ssh_setting_stops_the_daemon_with_one_clear_line(tachi_home, ssh_config, expected):
    (tachi_home / "bad_key").write_text("not a key\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = ssh_config.format(home=tachi_home, busy=busy.getsockname()[1])
        daemon = DaemonProcess(
            tachi_home,
            extra_env={"TACHI_LOAD_PLUGINS": "ssh"},
            config=f"[transports.ssh]\n{config}\n",
        )
        with pytest.raises(RuntimeError):
            daemon.start()
    log = daemon.log.read_text()
    assert f"tachid: {expected}" in log, log
    assert "Traceback" not in log


def test_sessions_per_connection_are_limited(tachi_home):
    s = start_ssh_daemon(tachi_home, extra_ssh="max_sessions = 2")
    control = tachi_home / "ctl"
    master = subprocess.Popen(
        s.ssh_argv(options=("-M", "-S", str(control), "-N")), stdin=subprocess.DEVNULL
    )
    waiting: list[subprocess.Popen[bytes]] = []
    try:
        until(control.exists)
        session = s.daemon.new("sleep", "300")
        over_one = ("-S", str(control))
        for _ in range(2):  # two long-running commands on the one connection
            argv = s.ssh_argv("wait", session["id"], "--match", "never", options=over_one)
            waiting.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL))
        until(lambda: len([r for r in s.audit() if r["action"] == "ssh.login"]) == 1)
        time.sleep(1.0)  # both channels open
        third = s.ssh("ls", options=over_one)
        # Refused on the shared connection (ssh then falls back to a new one).
        assert "Session open refused by peer" in third.stderr
        assert len([r for r in s.audit() if r["action"] == "ssh.login"]) == 2
    finally:
        for proc in [*waiting, master]:
            proc.terminate()
            proc.wait(10)
        s.daemon.stop()
