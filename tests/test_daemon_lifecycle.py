"""The daemon: auto-start, socket permissions, stop, restart with history, crash recovery."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from helpers import get, run_tachi, until
from tachi.testing import DaemonProcess


def _cli(home, *args, env=None):
    full_env = {
        **os.environ,
        "TACHI_HOME": str(home),
        "TACHI_SOCKET": str(home / "run" / "s.sock"),
        "TACHI_LOAD_PLUGINS": "",
        **(env or {}),
    }
    return run_tachi(*args, env=full_env)


def test_first_command_starts_the_daemon_with_private_socket(tachi_home):
    result = _cli(tachi_home, "new", "-d", "--json", "--", "sleep", "300")
    try:
        assert result.returncode == 0, result.stderr
        sock = tachi_home / "run" / "s.sock"
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(sock.stat().st_mode)
        status = json.loads(_cli(tachi_home, "daemon", "status", "--json").stdout)
        assert status["running"] and status["sessions"] == 1
        assert status["auditLog"].startswith(str(tachi_home))
    finally:
        stopped = _cli(tachi_home, "daemon", "stop")
    assert stopped.returncode == 0 and "(1 session closed)" in stopped.stderr
    assert _cli(tachi_home, "daemon", "status").returncode == 1


def test_a_daemon_that_cannot_start_is_reported_with_its_log(tachi_home):
    (tachi_home / "config.toml").write_text("size_policy = 'biggest'\n")
    result = _cli(tachi_home, "ls")
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "tachid exited with status 1 while starting" in line and "size_policy" in line
    assert "daemon.log" in line


def test_stop_closes_sessions_and_restart_keeps_the_history(tachi_home):
    first = DaemonProcess(tachi_home)
    first.start()
    s = first.new("sleep", "300", name="keep")
    assert first.stop() == 0
    second = DaemonProcess(tachi_home)
    second.start()
    try:
        info = get(second, s["id"])
        assert info["state"] == "closed" and info["closeReason"] == "daemon-stopped"
        listed = json.loads(second.run("ls", "--all", "--json", check=True).stdout)
        assert [x["id"] for x in listed] == [s["id"]]
    finally:
        second.stop()


def test_stopping_right_after_a_close_waits_for_its_processes_and_saves_their_exit(tachi_home):
    # A closed session's program may take a while to exit after its hangup: the
    # daemon stopping meanwhile must wait for it and record its exit, not write to
    # a closed store from the exit callback (a traceback, and the exit code lost).
    first = DaemonProcess(tachi_home)
    first.start()
    slow = "trap 'sleep 0.7; exit 7' HUP; echo ready; while :; do sleep 0.1; done"
    s = first.new("sh", "-c", slow)
    until(lambda: "ready" in first.run("capture", s["id"]).stdout)
    first.run("close", s["id"], check=True)
    assert first.stop() == 0
    log = first.log.read_text()
    assert "Traceback" not in log and "closed database" not in log, log
    second = DaemonProcess(tachi_home)
    second.start()
    try:
        info = get(second, s["id"])
        assert info["closeReason"] == "closed"
        assert [w["exitCode"] for w in info["windows"]] == [7]
    finally:
        second.stop()


def test_after_a_crash_the_next_daemon_marks_sessions_closed(tachi_home):
    # Without the session keeper (with it, they survive: tests/test_survival.py).
    off = {"TACHI_KEEPER": "off"}
    first = DaemonProcess(tachi_home, extra_env=off)
    first.start()
    s = first.new("sleep", "300")
    first.kill()
    second = DaemonProcess(tachi_home, extra_env=off)
    second.start()
    try:
        info = get(second, s["id"])
        assert info["state"] == "closed" and info["closeReason"] == "daemon-stopped"
        # The name is free again and new sessions work.
        assert second.new("true")["id"] != s["id"]
    finally:
        second.stop()


def test_stop_hangs_up_the_session_processes(tachi_daemon):
    s = tachi_daemon.new("sleep", "300")
    pid = s["windows"][0]["pid"]
    assert os.path.exists(f"/proc/{pid}")
    tachi_daemon.stop()
    until(
        lambda: (
            not os.path.exists(f"/proc/{pid}")
            or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        )
    )


def test_an_existing_socket_directory_keeps_its_mode(tachi_home):
    # e.g. --socket /tmp/x.sock: the daemon must not make a shared directory 0700.
    tachi_home.chmod(0o755)
    daemon = DaemonProcess(tachi_home)
    daemon.start()
    try:
        assert stat.S_IMODE(tachi_home.stat().st_mode) == 0o755
        assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    finally:
        daemon.stop()


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (an exited one waiting to be reaped is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_daemon_stop_returns_after_the_daemon_has_exited(tachi_home):
    for _ in range(3):  # the race was a matter of milliseconds: try it a few times
        assert _cli(tachi_home, "new", "-d", "--", "sleep", "300").returncode == 0
        pid = json.loads(_cli(tachi_home, "daemon", "status", "--json").stdout)["pid"]
        stopped = _cli(tachi_home, "daemon", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not _running(pid)
        # Its audit log is complete: the stop is its last record, and it verifies.
        lines = (tachi_home / "state" / "audit" / "audit.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["action"] == "daemon.stop"
        assert _cli(tachi_home, "audit", "verify").returncode == 0
