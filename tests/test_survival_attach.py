"""``tachi attach`` outlives its daemon (issue 28): while a session keeper holds
the session, a crashed or restarted daemon costs the attached terminal a
``reconnecting…`` line, not its attach."""

from __future__ import annotations

import json
import os
import signal

import pexpect
import pytest

from helpers import SHELL, get, spawn_attach, surviving_daemon, until

PREFIX = "\x1c"  # Ctrl-\\


@pytest.fixture
def daemon(tachi_home):
    with surviving_daemon(tachi_home) as d:
        yield d


def test_attach_shows_reconnecting_and_comes_back_after_the_daemon_is_killed(daemon):
    s = daemon.new(*SHELL)
    child = spawn_attach(daemon, s["id"])
    try:
        child.send("echo before-$((1+1))\r")
        child.expect("before-2")
        until(lambda: get(daemon, s["id"])["state"] == "active")
        daemon.kill()
        child.expect("reconnecting…".encode())
        # The next command starts the next daemon, which adopts the session.
        listed = json.loads(daemon.run("ls", "--json", check=True, timeout=60).stdout)
        assert [x["id"] for x in listed] == [s["id"]]
        child.expect("reconnected", timeout=30)
        # The screen was drawn again, and what is typed reaches the same shell.
        child.send("echo after-$((40+2))\r")
        child.expect("after-42")
        until(lambda: get(daemon, s["id"])["clients"] == 1)
        child.send(PREFIX + "d")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_attach_gives_up_when_nothing_kept_the_session(daemon):
    s = daemon.new(*SHELL)
    keeper = daemon.client().status()["keeper"]["pid"]
    child = spawn_attach(daemon, s["id"])
    try:
        child.send("echo here-$((1+1))\r")
        child.expect("here-2")
        # The keeper first, then the daemon: the session ends with them.
        os.kill(keeper, signal.SIGKILL)
        daemon.kill()
        child.expect(pexpect.EOF, timeout=15)
        child.close()
        assert child.exitstatus == 1
        assert b"lost the daemon" in child.before
    finally:
        if child.isalive():
            child.terminate(force=True)
