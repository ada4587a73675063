"""Recording sessions to asciicast, checked with upstream asciinema."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest

from helpers import SHELL, until, wait_match
from tachi.playback import read_cast
from tachi.testing import DaemonProcess

ASCIINEMA = str(Path(sys.executable).parent / "asciinema")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def recordings(daemon, *args) -> list[dict]:
    return json.loads(daemon.run("record", "ls", "--json", *args, check=True).stdout)


def export(daemon, rec_id, tmp_path) -> Path:
    out = tmp_path / f"{rec_id}.cast"
    daemon.run("record", "export", rec_id, "-o", str(out), check=True)
    return out


def output_of(path: Path) -> str:
    _, events = read_cast(path)
    return "".join(e.data for e in events if e.code == "o")


def test_round_trip_is_byte_exact_and_plays_in_asciinema(tachi_daemon, tmp_path):
    script = "printf 'first\\n'; sleep 0.2; printf 'é€😀 second\\n'; read x"
    s = tachi_daemon.new("bash", "--norc", "-c", script, record=True)
    wait_match(tachi_daemon, s["id"], "second")
    stopped = json.loads(tachi_daemon.run("record", "stop", s["id"], "--json", check=True).stdout)
    assert stopped["format"] == "asciicast" and stopped["sessionId"] == s["id"]
    assert RFC3339.match(stopped["startTime"]) and isinstance(stopped["duration"], int)
    assert stopped["duration"] > 200_000_000 and stopped["size"] > 0 and not stopped["active"]
    cast = export(tachi_daemon, stopped["id"], tmp_path)
    header, events = read_cast(cast)
    assert (header.width, header.height) == (80, 24) and header.env["TERM"] == "xterm-256color"
    o_events = [e for e in events if e.code == "o"]
    # After the starting snapshot: exactly what the program wrote, as the PTY delivered it.
    assert "".join(e.data for e in o_events[1:]) == "first\r\né€😀 second\r\n"
    played = subprocess.run([ASCIINEMA, "cat", str(cast)], capture_output=True, timeout=30)
    assert played.returncode == 0, played.stderr
    text = played.stdout.decode()
    assert text.index("first") < text.index("é€😀 second")


def test_resize_events_carry_the_new_size(tachi_daemon, tmp_path):
    s = tachi_daemon.new(*SHELL, record=True)
    tachi_daemon.run("resize", s["id"], "--rows", "30", "--cols", "100", check=True)
    tachi_daemon.run("resize", s["id"], "--rows", "40", "--cols", "132", check=True)
    rec = json.loads(tachi_daemon.run("record", "stop", s["id"], "--json", check=True).stdout)
    _, events = read_cast(export(tachi_daemon, rec["id"], tmp_path))
    assert [e.data for e in events if e.code == "r"] == ["100x30", "132x40"]


def test_recording_started_mid_session_begins_with_the_screen(tachi_daemon, tmp_path):
    s = tachi_daemon.new(*SHELL)
    tachi_daemon.run("send", s["id"], r"echo before-recording\n", check=True)
    wait_match(tachi_daemon, s["id"], "^before-recording")
    rec_id = tachi_daemon.run("record", "start", s["id"], check=True).stdout.strip()
    tachi_daemon.run("send", s["id"], r"echo after-recording\n", check=True)
    wait_match(tachi_daemon, s["id"], "^after-recording")
    tachi_daemon.run("record", "stop", s["id"], check=True)
    _, events = read_cast(export(tachi_daemon, rec_id, tmp_path))
    assert events[0].code == "o" and events[0].time == 0 and "before-recording" in events[0].data
    assert "after-recording" in output_of(tmp_path / f"{rec_id}.cast")


def test_recording_follows_the_active_window_with_markers(tachi_daemon, tmp_path):
    s = tachi_daemon.new(*SHELL, record=True)
    sid = s["id"]
    tachi_daemon.run(
        "window",
        "new",
        sid,
        "-d",
        "--name",
        "logs",
        "--",
        "bash",
        "--norc",
        "-c",
        "echo only-in-logs; read",
        check=True,
    )
    tachi_daemon.run(
        "wait", sid, "--window", "1", "--match", "only-in-logs", "--timeout", "10", check=True
    )
    tachi_daemon.run("window", "select", sid, "1", check=True)
    tachi_daemon.run("window", "select", sid, "0", check=True)
    rec = json.loads(tachi_daemon.run("record", "stop", sid, "--json", check=True).stdout)
    _, events = read_cast(export(tachi_daemon, rec["id"], tmp_path))
    markers = [e.data for e in events if e.code == "m"]
    assert markers == ["window 1: logs", "window 0: bash"]
    first_marker = next(i for i, e in enumerate(events) if e.code == "m")
    redraw = events[first_marker + 1]
    assert redraw.code == "o" and "\x1b[2J" in redraw.data and "only-in-logs" in redraw.data


def test_input_is_not_recorded_unless_configured(tachi_daemon, tachi_home, tmp_path):
    s = tachi_daemon.new("cat", record=True)
    tachi_daemon.run("send", s["id"], r"secret-typed\n", check=True)
    wait_match(tachi_daemon, s["id"], "secret-typed")
    rec = json.loads(tachi_daemon.run("record", "stop", s["id"], "--json", check=True).stdout)
    _, events = read_cast(export(tachi_daemon, rec["id"], tmp_path))
    assert not [e for e in events if e.code == "i"]
    tachi_daemon.stop()
    (tachi_home / "config.toml").write_text("[recording]\ninput = true\n")
    daemon = DaemonProcess(tachi_home)
    daemon.start()
    try:
        s = daemon.new("cat", record=True)
        daemon.run("send", s["id"], r"typed-in\n", check=True)
        wait_match(daemon, s["id"], "typed-in")
        rec = json.loads(daemon.run("record", "stop", s["id"], "--json", check=True).stdout)
        _, events = read_cast(export(daemon, rec["id"], tmp_path))
        assert "".join(e.data for e in events if e.code == "i") == "typed-in\n"
    finally:
        daemon.stop()


def test_sigkill_leaves_a_playable_file_and_the_index_is_repaired(tachi_home, tmp_path):
    # Without the session keeper the session ends with the daemon, so the recording
    # is closed (with it, it goes on: tests/test_survival.py).
    off = {"TACHI_KEEPER": "off"}
    daemon = DaemonProcess(tachi_home, extra_env=off)
    daemon.start()
    s = daemon.new(
        "bash",
        "--norc",
        "-c",
        "for i in $(seq 1 200); do echo line-$i; done; sleep 300",
        record=True,
    )
    wait_match(daemon, s["id"], "line-200")
    (rec,) = recordings(daemon)
    daemon.kill()
    cast = Path(rec["path"])
    assert "line-200" in output_of(cast)
    played = subprocess.run([ASCIINEMA, "cat", str(cast)], capture_output=True, timeout=30)
    assert played.returncode == 0 and b"line-200" in played.stdout
    again = DaemonProcess(tachi_home, extra_env=off)
    again.start()
    try:
        (repaired,) = recordings(again)
        assert not repaired["active"] and repaired["size"] == cast.stat().st_size > 0
    finally:
        again.stop()


@pytest.fixture
def tiny_disk(tachi_home):
    if os.getuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root (CI runs as root)")
    mount = tachi_home / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_stops_the_recording_not_the_session(tachi_home, tiny_disk):
    daemon = DaemonProcess(tachi_home, config=f"[recording]\ndir = '{tiny_disk}'\n")
    daemon.start()
    try:
        s = daemon.new(
            "bash",
            "--norc",
            "-c",
            "head -c 300000 /dev/zero | base64; echo FLOOD-DONE; cat",
            record=True,
        )
        wait_match(daemon, s["id"], "FLOOD-DONE")
        (rec,) = until(lambda: [r for r in recordings(daemon) if not r["active"]])
        assert rec["size"] <= 64 * 1024
        daemon.run("send", s["id"], r"session-still-alive\n", check=True)
        wait_match(daemon, s["id"], "session-still-alive")
        errors = [
            r
            for r in json.loads(daemon.run("audit", "--json", check=True).stdout)
            if r["action"] == "record.error"
        ]
        assert errors and "No space left" in errors[0]["reason"]
    finally:
        daemon.stop()


def test_play_in_a_terminal_and_ctrl_c_leaves_it_sane(tachi_daemon, tmp_path):
    s = tachi_daemon.new(
        "bash",
        "--norc",
        "-c",
        "printf 'play-me-1\\n'; sleep 3; printf 'play-me-2\\n'; read",
        record=True,
    )
    wait_match(tachi_daemon, s["id"], "play-me-2")
    (rec,) = recordings(tachi_daemon)
    tachi_daemon.run("record", "stop", s["id"], check=True)
    argv = tachi_daemon.tachi_argv("play", rec["id"], "--speed", "1")
    child = pexpect.spawn(argv[0], argv[1:], env=tachi_daemon.env, timeout=15)
    child.expect("play-me-1")
    started = time.monotonic()
    child.sendintr()
    child.expect(pexpect.EOF)
    assert time.monotonic() - started < 2.5  # stopped, did not wait out the pause
    assert b"play-me-2" not in child.before
    child.close()
    assert child.exitstatus == 130 and b"[playback interrupted]" in child.before
    assert b"\x1b[?25h" in child.before  # cursor shown again
    # --idle-limit caps the pause.
    argv = tachi_daemon.tachi_argv("play", rec["id"], "--idle-limit", "0.2")
    started = time.monotonic()
    done = subprocess.run(argv, env=tachi_daemon.env, capture_output=True, timeout=20)
    assert b"play-me-2" in done.stdout and time.monotonic() - started < 2.5


def test_record_rm_and_unknown_ids(tachi_daemon):
    s = tachi_daemon.new("sleep", "300", record=True)
    (rec,) = recordings(tachi_daemon)
    busy = tachi_daemon.run("record", "rm", rec["id"])
    assert busy.returncode == 1 and "still running" in busy.stderr
    tachi_daemon.run("record", "stop", s["id"], check=True)
    tachi_daemon.run("record", "rm", rec["id"], check=True)
    assert recordings(tachi_daemon) == [] and not Path(rec["path"]).exists()
    missing = tachi_daemon.run("play", "nope")
    assert missing.returncode == 3 and "no recording 'nope'" in missing.stderr


def _recorder_pids(daemon_pid: int) -> list[int]:
    """The daemon's recorder processes (``python -m tachi.core.recorder_worker``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == daemon_pid and b"tachi.core.recorder_worker" in cmdline:
            found.append(int(proc.name))
    return found


def test_recordings_are_written_by_one_process_beside_the_daemon(tachi_home, tmp_path):
    # The encoding and the disk are off the event loop: one worker process for
    # every recording, gone with the daemon, every event on disk by then.
    daemon = DaemonProcess(tachi_home)
    daemon.start()
    assert daemon.proc is not None
    try:
        a = daemon.new("bash", "--norc", "-c", "echo first-rec; sleep 300", record=True)
        b = daemon.new("bash", "--norc", "-c", "echo second-rec; sleep 300", record=True)
        wait_match(daemon, b["id"], "second-rec")
        assert len(_recorder_pids(daemon.proc.pid)) == 1
        paths = {r["sessionId"]: Path(r["path"]) for r in recordings(daemon)}
    finally:
        daemon.stop()
    assert _recorder_pids(daemon.proc.pid) == []
    assert "first-rec" in output_of(paths[a["id"]])
    assert "second-rec" in output_of(paths[b["id"]])


def test_a_dead_recorder_process_fails_its_recordings_not_the_sessions(tachi_daemon):
    assert tachi_daemon.proc is not None
    s = tachi_daemon.new("bash", "--norc", "-c", "echo before-kill; cat", record=True)
    wait_match(tachi_daemon, s["id"], "before-kill")
    (worker,) = _recorder_pids(tachi_daemon.proc.pid)
    os.kill(worker, 9)
    (rec,) = until(lambda: [r for r in recordings(tachi_daemon) if not r["active"]])
    audit = json.loads(tachi_daemon.run("audit", "--json", check=True).stdout)
    errors = [r for r in audit if r["action"] == "record.error"]
    assert errors and "recorder process" in errors[0]["reason"]
    tachi_daemon.run("send", s["id"], r"still-typing\n", check=True)
    wait_match(tachi_daemon, s["id"], "still-typing")
    # The next recording gets a new worker.
    tachi_daemon.run("record", "start", s["id"], check=True)
    tachi_daemon.run("send", s["id"], r"after-restart\n", check=True)
    wait_match(tachi_daemon, s["id"], "after-restart")
    tachi_daemon.run("record", "stop", s["id"], check=True)
    newest = [r for r in recordings(tachi_daemon) if r["id"] != rec["id"]]
    assert "after-restart" in output_of(Path(newest[0]["path"]))


def test_a_recording_read_while_the_recorder_process_is_behind_waits_for_it(tachi_daemon, tmp_path):
    # The recorder process creates and writes the file: an export right after
    # `record start` must wait for it (bounded), not fail with "No such file"
    # or miss what was already recorded.
    assert tachi_daemon.proc is not None
    first = tachi_daemon.new("bash", "--norc", "-c", "echo warm-up; sleep 300", record=True)
    wait_match(tachi_daemon, first["id"], "warm-up")
    (worker,) = _recorder_pids(tachi_daemon.proc.pid)
    s = tachi_daemon.new("bash", "--norc", "-c", "echo behind-the-worker; sleep 300")
    wait_match(tachi_daemon, s["id"], "behind-the-worker")
    os.kill(worker, signal.SIGSTOP)  # a worker that has not got to the OPEN yet
    try:
        tachi_daemon.run("record", "start", s["id"], check=True)
        rec = next(r for r in recordings(tachi_daemon) if r["sessionId"] == s["id"])
        threading.Timer(0.5, os.kill, (worker, signal.SIGCONT)).start()
        out = tmp_path / "now.cast"
        tachi_daemon.run("record", "export", rec["id"], "-o", str(out), check=True)
    finally:
        os.kill(worker, signal.SIGCONT)
    assert "behind-the-worker" in output_of(out)  # the screen when recording started


def test_export_of_a_cut_recording_is_a_valid_cast_with_a_marker(tachi_daemon, tmp_path):
    """A recording cut mid-event (a full disk) exports up to its last whole event,
    with a marker there, and asciinema plays it; -o - writes it to stdout."""
    s = tachi_daemon.new("bash", "--norc", "-c", "printf 'whole-line\\n'; read x", record=True)
    wait_match(tachi_daemon, s["id"], "whole-line")
    (rec,) = recordings(tachi_daemon)
    tachi_daemon.run("record", "stop", s["id"], check=True)
    path = Path(rec["path"])
    with open(path, "ab") as f:
        f.write(b'[9.5, "o", "cut mid-ev')  # what a full disk leaves
    out = tmp_path / "cut.cast"
    done = tachi_daemon.run("record", "export", rec["id"], "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "cut mid-event" in done.stderr
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and json.loads(lines[-2])[1] == "m"
    played = subprocess.run([ASCIINEMA, "cat", str(out)], capture_output=True, timeout=30)
    assert played.returncode == 0, played.stderr
    assert b"whole-line" in played.stdout and b"cut mid-ev" not in played.stdout
    to_stdout = subprocess.run(
        tachi_daemon.tachi_argv("record", "export", rec["id"], "-o", "-"),
        env=tachi_daemon.env,
        capture_output=True,
        timeout=30,
    )
    assert to_stdout.returncode == 0 and to_stdout.stdout == out.read_bytes()
    assert not Path("-").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cut.cast"]  # no part file left


def test_a_failed_export_leaves_no_file(tachi_daemon, tmp_path):
    """Not a recording the CLI can check (here: not asciicast): exit 2, nothing written."""
    s = tachi_daemon.new("sleep", "60", record=True)
    (rec,) = recordings(tachi_daemon)
    tachi_daemon.run("record", "stop", s["id"], check=True)
    Path(rec["path"]).write_bytes(b"\x1f\x8b not asciicast\n")
    out = tmp_path / "x.cast"
    done = tachi_daemon.run("record", "export", rec["id"], "-o", str(out))
    assert done.returncode == 2 and "not an asciicast recording" in done.stderr
    assert list(tmp_path.iterdir()) == []
