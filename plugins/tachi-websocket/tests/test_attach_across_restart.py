"""A remote ``tachi attach`` over ``wss://`` outlives its daemon (issue 28):
``tachi daemon restart`` or a ``kill -9`` (the session keeper holds the
session meanwhile) costs the attached terminal a ``reconnecting…`` line; the
same listener comes back and the client resumes on the same shell."""

from __future__ import annotations

import json
import socket

import pexpect
import pytest
from ws_support import Remote, start_remote

from tachi.testing import DaemonProcess

PREFIX = "\x1c"  # Ctrl-\\


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("how", ["restart", "kill-9"])
def test_remote_attach_reconnects_after_the_daemon_goes(tachi_home, how: str) -> None:
    # A fixed port: a restarted daemon listens where the config says, and a
    # client can only come back to an address it knows.
    remote: Remote = start_remote(
        tachi_home, f'listen = "127.0.0.1:{free_port()}"\ntls = "self-signed"'
    )
    daemon: DaemonProcess = remote.daemon
    child = None
    try:
        session = json.loads(remote.run("new", "-d", "--json", "--", "bash", "--norc").stdout)
        pid = session["windows"][0]["pid"]
        argv = daemon.tachi_argv(*remote.flags(), "attach", session["id"])
        env = {**daemon.env, "TACHI_TOKEN": remote.token}
        child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(30, 90), timeout=20)
        child.send("echo before-$((1+1))\r")
        child.expect("before-2")
        if how == "restart":
            restarted = daemon.run("daemon", "restart", timeout=60)
            assert restarted.returncode == 0, restarted.stderr
            child.expect("reconnecting…".encode())
        else:
            daemon.kill()
            child.expect("reconnecting…".encode())
            # The next local command starts the next daemon, which adopts the
            # session and listens where the config says.
            assert daemon.run("ls", timeout=60).returncode == 0
        child.expect("reconnected", timeout=40)
        child.send("echo after-$((40+2))\r")
        child.expect("after-42")
        out = remote.run("ls", "--json")
        assert out.returncode == 0, out.stderr
        listed = json.loads(out.stdout)
        assert [(s["id"], s["windows"][0]["pid"]) for s in listed] == [(session["id"], pid)]
        child.send(PREFIX + "d")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child is not None and child.isalive():
            child.terminate(force=True)
        daemon.run("daemon", "stop", timeout=30)
        daemon.stop()
