"""Sessions outlive the daemon (issue 28): a SIGKILLed tachid loses no session.

Every scenario kills a real daemon with SIGKILL and lets ``tachi ls`` start
the next one (as a user would), then checks by PID in /proc, by ``capture``
and by numbered lines that nothing was lost or repeated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import capture, get, saved_screen, surviving_daemon, until, wait_match
from tachi.testing import DaemonProcess

#: Scrollback enough for every numbered line of a scenario.
CONFIG = "[session]\nhistory_limit = 20000\n"


@pytest.fixture
def daemon(tachi_home):
    # The daemon that `tachi ls` started is not d.proc: stopped by the CLI.
    with surviving_daemon(tachi_home, config=CONFIG) as d:
        yield d


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def restart_by_ls(daemon: DaemonProcess) -> list[dict]:
    """``tachi ls --json`` with no daemon running: it starts one, which adopts."""
    result = daemon.run("ls", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def numbers(text: str, prefix: str) -> list[int]:
    return [int(n) for n in re.findall(rf"^{prefix}(\d+)$", text, re.MULTILINE)]


def full_text(daemon: DaemonProcess, session: str) -> str:
    return capture(daemon, session, "--history")


def test_an_idle_shell_survives_sigkill_with_its_pid_screen_and_input(daemon):
    s = daemon.new("bash", "--norc", "--noprofile", "-i")
    pid = s["windows"][0]["pid"]
    daemon.run("send", s["id"], r"echo before-$((20+1))\r", check=True)
    wait_match(daemon, s["id"], "before-21")
    until(lambda: "before-21" in saved_screen(daemon, s["id"]))
    daemon.kill()
    # The keeper, not init, is now its parent, and the shell did not get SIGHUP.
    assert Path(f"/proc/{pid}").exists()
    keeper = ppid(pid)
    assert keeper != 1 and "tachi.keeper" in Path(f"/proc/{keeper}/cmdline").read_text()

    (listed,) = restart_by_ls(daemon)
    assert listed["id"] == s["id"] and listed["state"] == "suspended"
    assert [w["pid"] for w in listed["windows"]] == [pid]
    assert "before-21" in capture(daemon, s["id"])
    daemon.run("send", s["id"], r"echo after-$((40+2))\r", check=True)
    wait_match(daemon, s["id"], "after-42")
    screen = capture(daemon, s["id"])
    assert screen.index("before-21") < screen.index("after-42")
    assert Path(f"/proc/{pid}").exists() and ppid(pid) == keeper


def test_output_made_while_no_daemon_runs_waits_in_the_pty_and_none_is_lost(daemon, tmp_path):
    go = tmp_path / "go"
    script = (
        "for i in $(seq 1 200); do echo L$i; done; "
        f"while [ ! -e {go} ]; do sleep 0.02; done; "
        # 6,000 lines (~40 KiB): more than a PTY holds, so the program blocks
        # until a daemon reads again.
        "for i in $(seq 201 6200); do echo L$i; done; echo DONE; sleep 300"
    )
    s = daemon.new("bash", "--norc", "-c", script)
    pid = s["windows"][0]["pid"]
    wait_match(daemon, s["id"], "L200")
    until(lambda: "L200" in saved_screen(daemon, s["id"]))
    daemon.kill()
    go.touch()
    # Blocked in a write to the full PTY (n_tty_write waits in wait_woken),
    # not finished and not killed.
    blocked = ("wait_woken", "n_tty_write")
    until(lambda: Path(f"/proc/{pid}/wchan").read_text() in blocked, timeout=10)

    restart_by_ls(daemon)
    wait_match(daemon, s["id"], "DONE", timeout=30)
    seen = numbers(full_text(daemon, s["id"]), "L")
    assert seen == list(range(1, 6201)), "lines missing or repeated across the crash"


def test_output_flowing_during_the_kill_comes_back_in_order_without_repeats(daemon):
    script = "for i in $(seq 1 3000); do echo F$i; sleep 0.001; done; echo DONE; sleep 300"
    s = daemon.new("bash", "--norc", "-c", script)
    wait_match(daemon, s["id"], "F300")
    until(lambda: "F" in saved_screen(daemon, s["id"]))
    daemon.kill()
    restart_by_ls(daemon)
    wait_match(daemon, s["id"], "DONE", timeout=60)
    seen = numbers(full_text(daemon, s["id"]), "F")
    assert seen == sorted(set(seen)), "a line came back twice or out of order"
    # What the killed daemon had read after its last snapshot comes back from
    # the window's journal: no gap.
    assert seen == list(range(1, 3001)), "lines missing across the crash"


def test_an_exit_while_no_daemon_runs_is_reported_by_the_next_one(daemon, tmp_path):
    go = tmp_path / "go"
    s = daemon.new(
        "sh", "-c", f"echo started; while [ ! -e {go} ]; do sleep 0.02; done; echo bye; exit 7"
    )
    pid = s["windows"][0]["pid"]
    wait_match(daemon, s["id"], "started")
    daemon.kill()
    go.touch()
    # Reaped by the keeper: no zombie is left for init.
    until(lambda: not Path(f"/proc/{pid}").exists())
    restart_by_ls(daemon)
    info = until(lambda: (i := get(daemon, s["id"]))["state"] == "closed" and i)
    assert info["closeReason"] == "exit" and info["exitCode"] == 7


def test_daemon_restart_keeps_every_session_and_says_how_long_it_was_away(daemon):
    one = daemon.new("sleep", "300")
    two = daemon.new("bash", "--norc", "-i")
    pids = [one["windows"][0]["pid"], two["windows"][0]["pid"]]
    result = daemon.run("daemon", "restart", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "2 sessions kept" in result.stderr
    assert re.search(r"\d+ ms without service", result.stderr)
    listed = json.loads(daemon.run("ls", "--json", check=True).stdout)
    assert sorted(w["pid"] for s in listed for w in s["windows"]) == sorted(pids)


def test_stop_still_closes_the_sessions_and_the_keeper_goes(daemon):
    s = daemon.new("sleep", "300")
    pid = s["windows"][0]["pid"]
    keeper = ppid(pid)
    daemon.stop()
    until(lambda: not Path(f"/proc/{pid}").exists())
    until(lambda: not Path(f"/proc/{keeper}").exists(), timeout=15)
    assert not Path(str(daemon.socket) + ".keeper").exists()


def test_without_the_keeper_sessions_end_with_the_daemon(tachi_home):
    d = DaemonProcess(tachi_home, extra_env={"TACHI_KEEPER": "off"})
    d.start()
    try:
        s = d.new("sleep", "300")
        pid = s["windows"][0]["pid"]
        assert ppid(pid) == d.proc.pid
    finally:
        d.stop()
    assert not os.path.exists(str(d.socket) + ".keeper")


def test_a_recording_goes_on_in_the_same_file_across_a_crash_and_verifies(daemon):
    s = daemon.new("bash", "--norc", "--noprofile", "-i", record=True)
    (rec,) = json.loads(daemon.run("record", "ls", "--json", check=True).stdout)
    daemon.run("send", s["id"], r"echo before-$((20+1))\r", check=True)
    wait_match(daemon, s["id"], "before-21")
    until(lambda: "before-21" in Path(rec["path"]).read_text())
    daemon.kill()
    restart_by_ls(daemon)
    daemon.run("send", s["id"], r"echo after-$((40+2))\r", check=True)
    wait_match(daemon, s["id"], "after-42")
    stopped = json.loads(daemon.run("record", "stop", s["id"], "--json", check=True).stdout)
    assert stopped["id"] == rec["id"] and stopped["path"] == rec["path"]
    assert not stopped.get("error")
    lines = Path(rec["path"]).read_text().splitlines()
    assert json.loads(lines[0])["version"] == 2
    events = [json.loads(line) for line in lines[1:]]
    times = [e[0] for e in events]
    assert times == sorted(times)
    (away,) = [i for i, e in enumerate(events) if e[1] == "m" and "away" in e[2]]
    before = "".join(e[2] for e in events[:away] if e[1] == "o")
    # After the marker comes one redraw of the screen as the next daemon found
    # it (for players); the output after it is what was printed after the crash.
    redraw = next(i for i in range(away + 1, len(events)) if events[i][1] == "o")
    assert "before-21" in events[redraw][2]
    after = "".join(e[2] for e in events[redraw + 1 :] if e[1] == "o")
    assert "before-21" in before and "after-42" in after and "before-21" not in after
    asciinema = str(Path(sys.executable).parent / "asciinema")
    played = subprocess.run([asciinema, "cat", rec["path"]], capture_output=True, timeout=30)
    assert played.returncode == 0, played.stderr
    assert b"after-42" in played.stdout
    verified = daemon.run("record", "verify", rec["id"])
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_second_daemon_on_the_same_socket_takes_no_session(daemon, tmp_path):
    """Another state directory (the same one is refused earlier, by the audit
    log's lock): the keeper must not hand it the sessions, which it does not
    know and would end."""
    s = daemon.new("bash", "--norc", "--noprofile", "-i")
    pid = s["windows"][0]["pid"]
    second = subprocess.run(
        [sys.executable, "-P", "-m", "tachi.daemon.server", "--socket", str(daemon.socket)],
        env={**daemon.env, "TACHI_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert second.returncode == 1 and "already listening" in second.stderr
    # The first daemon still has the session, the keeper still keeps it.
    assert Path(f"/proc/{pid}").exists()
    daemon.run("send", s["id"], r"echo still-$((1+1))\r", check=True)
    wait_match(daemon, s["id"], "still-2")
    daemon.kill()
    (listed,) = restart_by_ls(daemon)
    assert [w["pid"] for w in listed["windows"]] == [pid]
