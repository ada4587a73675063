"""Share tokens as the SSH password; revocation, expiry, idle and duration limits."""

from __future__ import annotations

import json
import os
import signal
import time

import pexpect
from ssh_support import ssh_daemon, start_ssh_daemon, until

__all__ = ["ssh_daemon"]


def _share(s, session: str, role: str, *extra: str) -> dict:
    out = s.daemon.run("share", session, "--role", role, "--json", *extra, check=True).stdout
    return json.loads(out)


def _with_password(
    s, password: str, *command: str, tty: bool = False, method: str = "keyboard-interactive"
) -> pexpect.spawn:
    """ssh with no key: answer the password prompt (no sshpass needed)."""
    options = ("-o", f"PreferredAuthentications={method}", "-o", "NumberOfPasswordPrompts=1")
    argv = s.ssh_argv(*command, key=None, tty=tty, batch=False, options=options)
    term = pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), timeout=15)
    term.expect("tachi share token: " if method == "keyboard-interactive" else "(?i)password:")
    term.sendline(password)
    return term


def test_a_share_token_as_the_password_gets_the_grants_role(ssh_daemon):
    s = ssh_daemon
    session = s.daemon.new("bash", "--norc", env="PS1=tok> ")
    s.daemon.run("send", session["id"], "echo token-$((40+2))\\n", check=True)
    grant = _share(s, session["id"], "observer")
    term = _with_password(s, grant["token"], "capture", session["id"])
    term.expect("token-42")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0
    login = [r for r in s.audit() if r["action"] == "ssh.login"][-1]
    assert login["principal"] == f"token:{grant['id']}"
    assert login["details"]["method"] == "password"
    # The same with the "password" method; an observer's token does not let it type.
    term = _with_password(s, grant["token"], "send", session["id"], "x", method="password")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 4


def test_a_wrong_token_is_refused_and_audited_with_the_address(ssh_daemon):
    s = ssh_daemon
    term = _with_password(s, "not-a-token", "ls")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 255
    refusal = until(
        lambda: [r for r in s.audit() if r["action"] == "auth.token" and r["result"] == "denied"]
    )[-1]
    assert refusal["details"]["address"] == "127.0.0.1"
    assert refusal["source"].startswith("ssh:127.0.0.1:")
    assert not [r for r in s.audit() if r["action"] == "ssh.login"]


def test_revoking_the_grant_disconnects_the_ssh_client(ssh_daemon):
    s = ssh_daemon
    session = s.daemon.new("bash", "--norc", env="PS1=tok> ")
    grant = _share(s, session["id"], "collaborator")
    term = _with_password(s, grant["token"], "attach", session["id"], tty=True)
    try:
        term.expect("tok> ")
        term.send("echo collab-$((3*3))\r")
        term.expect("collab-9")
        s.daemon.run("revoke", session["id"], grant["id"], check=True)
        term.expect(pexpect.EOF, timeout=10)
        said = term.before.decode()
    finally:
        term.close()
    assert "revoked" in said, said
    # The connection itself is closed: nothing else can be done with it.
    assert until(lambda: [r for r in s.audit() if r["action"] == "ssh.disconnect"])
    assert s.session(session["id"])["closeReason"] is None  # the session runs on


def test_expiry_disconnects_a_connection_that_is_not_attached(ssh_daemon):
    s = ssh_daemon
    session = s.daemon.new("bash", "--norc")
    grant = _share(s, session["id"], "observer", "--ttl", "2s")
    term = _with_password(s, grant["token"], tty=True)  # the menu, waiting for a choice
    try:
        term.expect("attach to")
        term.expect(pexpect.EOF, timeout=10)
        assert "access was revoked or expired" in term.before.decode()
    finally:
        term.close()
    record = until(
        lambda: [
            r for r in s.audit() if r["action"] == "ssh.disconnect" and r["reason"] == "revoked"
        ]
    )[-1]
    assert record["principal"] == f"token:{grant['id']}"


def test_idle_connections_and_long_ones_are_closed(tachi_home):
    s = start_ssh_daemon(tachi_home, extra_ssh='idle_timeout = "1s"\nmax_duration = "3s"')
    try:
        s.daemon.new("bash", "--norc")
        started = time.monotonic()
        idle = s.spawn()  # the menu; nobody types
        idle.expect(pexpect.EOF, timeout=10)
        assert "idle for 1s" in idle.before.decode()
        idle.close()
        assert time.monotonic() - started < 3
        # A client that keeps typing is not idle, but still meets max_duration.
        session = json.loads(s.daemon.run("ls", "--json", check=True).stdout)[0]
        term = s.spawn("attach", session["id"])
        started = time.monotonic()
        while time.monotonic() - started < 10:
            term.send("x")
            try:
                term.expect(pexpect.EOF, timeout=0.4)
                break
            except pexpect.TIMEOUT:
                continue
        term.close()
        assert 2.5 < time.monotonic() - started < 10
        reasons = {r["reason"] for r in s.audit() if r["action"] == "ssh.disconnect"}
        assert {"idle-timeout", "max-duration"} <= reasons
    finally:
        s.daemon.stop()


def test_keepalive_drops_a_client_that_stopped_answering(tachi_home):
    s = start_ssh_daemon(tachi_home, extra_ssh='keepalive_interval = "1s"\nkeepalive_count_max = 1')
    try:
        term = s.spawn()
        term.expect("attach to")
        os.kill(term.pid, signal.SIGSTOP)  # the client hangs: it no longer answers
        try:
            record = until(
                lambda: [r for r in s.audit() if r["action"] == "ssh.disconnect"], timeout=15
            )[-1]
        finally:
            os.kill(term.pid, signal.SIGCONT)
            term.close(force=True)
        assert record["principal"] != "-"
    finally:
        s.daemon.stop()


def test_a_rotated_token_keeps_its_ssh_connection(ssh_daemon):
    s = ssh_daemon
    session = s.daemon.new("bash", "--norc", env="PS1=tok> ")
    grant = _share(s, session["id"], "collaborator")
    term = _with_password(s, grant["token"], "attach", session["id"], tty=True)
    try:
        term.expect("tok> ")
        s.daemon.run("token", "rotate", session["id"], grant["id"], "--grace", "1s", check=True)
        time.sleep(2.5)  # past the grace period of the old token
        term.send("echo still-here-$((5*5))\r")
        term.expect("still-here-25")
    finally:
        term.close()
    assert not [r for r in s.audit() if r.get("reason") == "revoked"]


def test_passwords_can_be_turned_off(tachi_home):
    s = start_ssh_daemon(tachi_home, extra_ssh="passwords = false")
    try:
        refused = s.ssh("ls", key=None)
        assert refused.returncode == 255
        assert "Permission denied (publickey)" in refused.stderr  # no password method offered
    finally:
        s.daemon.stop()
