"""Interactive SSH: a real terminal (pexpect) running the real OpenSSH client."""

from __future__ import annotations

import os
import signal

import pexpect
from ssh_support import BOB, ensure_local_user, ssh_daemon, until

__all__ = ["ssh_daemon"]

PREFIX = "\x1c"  # C-\ , the default prefix key
SHELL = ("bash", "--norc", "--noprofile")


PROMPT = "ready> "


def _bash(s) -> dict:
    return s.daemon.new(*SHELL, name="work", env=f"PS1={PROMPT}")


def test_attach_type_see_resize_detach_and_reattach(ssh_daemon):
    s = ssh_daemon
    session = _bash(s)
    term = s.spawn("attach", "work", rows=27, cols=91)
    try:
        term.expect(PROMPT)  # attached: the terminal is in raw mode now
        term.send("echo typed-$((6*7))\r")
        term.expect("typed-42")
        # The pty-request's size is the client's size in the session.
        assert (s.session("work")["pty"]["rows"], s.session("work")["pty"]["cols"]) == (27, 91)
        # The terminal changes size: ssh sends window-change, the session follows.
        term.setwinsize(30, 100)
        until(lambda: s.session("work")["pty"]["rows"] == 30)
        assert s.session("work")["pty"]["cols"] == 100
        term.send("stty size\r")
        term.expect("30 100")
        # Prefix then d: detached, the SSH connection ends with status 0.
        term.send(PREFIX + "d")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0
    assert s.session("work")["state"] in ("suspended", "active")
    assert s.session("work")["closeReason"] is None

    again = s.spawn("attach", session["id"], rows=30, cols=100)
    try:
        again.expect("typed-42")  # the current screen comes back at once
        again.send("echo back-$((7*6))\r")
        again.expect("back-42")
        again.send(PREFIX + "d")
        again.expect(pexpect.EOF)
    finally:
        again.close()
    assert again.exitstatus == 0


def test_exit_status_of_the_session_command_is_the_ssh_exit_status(ssh_daemon):
    s = ssh_daemon
    term = s.spawn("new", "--", "sh", "-c", "'echo wait-for-$((1+1)); read line; exit 7'")
    try:
        term.expect("wait-for-2")
        term.send("go\r")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 7


def test_menu_lists_joinable_sessions_and_attaches_to_the_choice(ssh_daemon):
    s = ssh_daemon
    session = _bash(s)
    s.daemon.run("send", "work", "echo in-the-menu-session\\n", check=True)
    term = s.spawn()
    try:
        term.expect(r"1\) " + session["id"])
        term.expect("attach to")
        term.send("1\r")
        term.expect("in-the-menu-session")
        term.expect(PROMPT)
        term.send(PREFIX + "d")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0
    # Without a terminal, the "menu" is the list of live sessions.
    listed = s.ssh()
    assert listed.returncode == 0 and session["id"] in listed.stdout


def test_observer_input_never_reaches_the_session(ssh_daemon, tmp_path):
    ensure_local_user(BOB)  # `share --user` names a local account
    s = ssh_daemon
    session = _bash(s)
    s.daemon.run("share", "work", "--role", "observer", "--user", BOB, check=True)
    marker = tmp_path / "observer-was-here"
    term = s.spawn("attach", session["id"], key="bob")
    try:
        term.expect(PROMPT)  # attached, watching
        term.send(f"touch {marker}\r")
        # The owner's input arrives and the observer sees its output.
        s.ssh("send", "work", "'echo owner-typed-$((2+3))\\n'")
        term.expect("owner-typed-5")
        assert not marker.exists()
        assert "touch" not in s.daemon.run("capture", "work", check=True).stdout
        attached = [r for r in s.audit() if r["action"] == "session.attach"][-1]
        assert attached["principal"] == BOB and attached["details"]["role"] == "observer"
        assert attached["details"]["readOnly"] is True
        assert attached["source"].startswith("ssh:127.0.0.1:")
        # An observer's window size never changes the session's.
        rows = s.session("work")["pty"]["rows"]
        term.setwinsize(40, 120)
        term.send("x")
        assert s.session("work")["pty"]["rows"] == rows
        term.send(PREFIX + "d")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert not os.path.exists(marker)


def test_daemon_stop_ends_ssh_clients_cleanly(ssh_daemon):
    s = ssh_daemon
    _bash(s)
    term = s.spawn("attach", "work")
    try:
        term.expect(PROMPT)
        assert s.daemon.stop() == 0
        term.expect(pexpect.EOF, timeout=10)
    finally:
        term.close()
    log = s.daemon.log.read_text()
    assert "Traceback" not in log, log
    assert "INFO asyncssh" not in log  # asyncssh's per-connection chatter stays out


def test_typeahead_before_the_menu_is_up_is_not_lost(ssh_daemon):
    s = ssh_daemon
    term = s.spawn()
    try:
        term.send("q\r")  # typed at once, before the daemon has started the menu
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0


def _runners(daemon_pid: int) -> list[int]:
    """Processes the daemon started to serve SSH channels."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == daemon_pid and b"tachi_ssh.runner" in cmdline:
            found.append(int(entry))
    return found


def test_a_client_that_vanishes_is_detached_and_its_runner_ends(ssh_daemon):
    s = ssh_daemon
    _bash(s)
    term = s.spawn("attach", "work")
    try:
        term.expect(PROMPT)
        assert s.session("work")["clients"] == 1
        assert s.daemon.proc is not None
        assert len(_runners(s.daemon.proc.pid)) == 1
        os.kill(term.pid, signal.SIGKILL)  # the client machine goes away
    finally:
        term.close(force=True)
    until(lambda: s.session("work")["clients"] == 0)
    until(lambda: not _runners(s.daemon.proc.pid))
    assert s.session("work")["closeReason"] is None
