"""``tachi --host ssh://… attach`` outlives its daemon (issue 28): after
``tachi daemon restart`` or a ``kill -9`` of tachid (the session keeper holds
the session meanwhile), the attached terminal shows ``reconnecting…``, opens a
new SSH connection to the listener the next daemon starts at the same address
(with the same host key), and goes on typing into the same shell.

A plain ``ssh -p PORT host attach …`` cannot do that: OpenSSH has no
reconnect, so its connection ends with the daemon (docs/survival.md)."""

from __future__ import annotations

import shlex
import socket
import sys

import pexpect
import pytest
from ssh_support import start_ssh_daemon


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("how", ["restart", "kill-9"])
def test_attach_over_ssh_reconnects_after_the_daemon_goes(tachi_home, how: str) -> None:
    s = start_ssh_daemon(tachi_home, listen=f"127.0.0.1:{_free_port()}")
    term = None
    try:
        s.daemon.new("bash", "--norc", "--noprofile", name="far", env="PS1=far> ")
        pid = s.session("far")["windows"][0]["pid"]
        argv = s.ssh_argv()
        argv = argv[: argv.index("-T")]  # the URL names the host and port instead
        at = argv.index("-p")
        del argv[at : at + 2]
        env = {**s.daemon.env, "TACHI_SSH_COMMAND": shlex.join(argv)}
        env.pop("TACHI_SOCKET")  # nothing local: only the URL
        url = f"ssh://127.0.0.1:{s.port}"
        cmd = [sys.executable, "-m", "tachi", "--host", url, "attach", "far"]
        term = pexpect.spawn(cmd[0], cmd[1:], env=env, dimensions=(26, 90), timeout=20)
        term.expect("far> ")
        term.send("echo before-$((1+1))\r")
        term.expect("before-2")
        if how == "restart":
            assert s.daemon.run("daemon", "restart", timeout=60).returncode == 0
        else:
            s.daemon.kill()
            term.expect("reconnecting…".encode())
            assert s.daemon.run("ls", timeout=60).returncode == 0  # starts the next daemon
        term.expect("reconnected", timeout=40)
        term.send("echo after-$((40+2))\r")
        term.expect("after-42")
        assert s.session("far")["windows"][0]["pid"] == pid
        term.send("\x1cd")
        term.expect(pexpect.EOF)
        term.close()
        assert term.exitstatus == 0
    finally:
        if term is not None and term.isalive():
            term.terminate(force=True)
        s.daemon.run("daemon", "stop", timeout=30)
        s.daemon.stop()
