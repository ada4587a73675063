"""Idle timeout and maximum duration are enforced by the daemon."""

from __future__ import annotations

import time

import pexpect

from helpers import get, spawn_attach, until


def test_idle_timeout_closes_a_quiet_session(tachi_daemon):
    s = tachi_daemon.new("sleep", "300", idle_timeout="1s")
    result = tachi_daemon.run("wait", s["id"], "--exit", "--timeout", "10")
    assert result.returncode == 1 and "idle-timeout" in result.stderr
    info = get(tachi_daemon, s["id"])
    assert info["state"] == "closed" and info["closeReason"] == "idle-timeout"


def test_output_counts_as_activity(tachi_daemon):
    s = tachi_daemon.new(
        "bash", "--norc", "-c", "while :; do echo tick; sleep 0.2; done", idle_timeout="1s"
    )
    time.sleep(2.5)
    assert get(tachi_daemon, s["id"])["state"] != "closed"


def test_max_duration_warns_attached_clients_then_closes(tachi_daemon):
    s = tachi_daemon.new("bash", "--norc", "-c", "while :; do sleep 1; done", max_duration="3s")
    child = spawn_attach(tachi_daemon, s["id"])
    child.expect("maximum duration and closes in", timeout=10)
    child.expect(pexpect.EOF, timeout=10)
    child.close()
    assert child.exitstatus == 1
    assert "closed (max-duration)" in child.before.decode()
    info = until(lambda: (i := get(tachi_daemon, s["id"]))["state"] == "closed" and i)
    assert info["closeReason"] == "max-duration"
