"""Scrollback, copy mode, keys after the prefix, the terminal left as it was,
and the unused area of a larger terminal: in a real terminal (pexpect) against
a real daemon."""

from __future__ import annotations

import base64
import contextlib
import io
import time

import avt
import pexpect
import pytest

from helpers import SHELL, capture, get, spawn_attach, until, wait_match
from tachi.cli.copy_mode import CopyMode
from tachi.cli.keyseq import keys
from tachi.testing import DaemonProcess

PREFIX = "\x1c"


def test_history_is_kept_and_captured(tachi_daemon):
    s = tachi_daemon.new("bash", "--norc", "-c", "seq 1 300; sleep 60", rows="10", cols="40")
    wait_match(tachi_daemon, s["id"], "^300$")
    screen = capture(tachi_daemon, s["id"]).split()
    assert screen[-1] == "300" and "200" not in screen
    everything = capture(tachi_daemon, s["id"], "--history").split()
    assert everything == [str(i) for i in range(1, 301)]
    last = capture(tachi_daemon, s["id"], "-S", "-5").split()
    assert last == everything[len(everything) - len(screen) - 5 :] and last[-1] == "300"
    bad = tachi_daemon.run("capture", s["id"], "-S", "7")
    assert bad.returncode == 2


def test_history_is_bounded_by_the_config(tachi_home):
    daemon = DaemonProcess(tachi_home, config="[session]\nhistory_limit = 50\n")
    daemon.start()
    try:
        s = daemon.new("bash", "--norc", "-c", "seq 1 5000; sleep 60", rows="10", cols="40")
        wait_match(daemon, s["id"], "^5000$")
        lines = capture(daemon, s["id"], "--history").split()
        assert len(lines) <= 50 + 10 and lines[-1] == "5000"
    finally:
        daemon.stop()


def test_a_bad_history_limit_is_refused(tachi_home):
    daemon = DaemonProcess(tachi_home, config="[session]\nhistory_limit = -1\n")
    result = daemon.run("ls")
    assert result.returncode != 0 and "history_limit must be 0-100000" in result.stderr


def test_keys_are_split_into_whole_sequences():
    assert keys(b"\x1b[5~a\x1b[A\x1bOB\r\x7f\x03\x1b") == [
        "pageup", "a", "up", "down", "enter", "backspace", "C-c", "escape",
    ]  # fmt: skip
    assert keys("é/x".encode()) == ["é", "/", "x"]
    assert keys(b"\x1b[1;5C") == ["unknown"]


def test_copy_mode_moves_searches_and_copies():
    written: list[bytes] = []
    lines = [f"line {i}" for i in range(100)]
    cm = CopyMode(lines, rows=11, cols=40, write=written.append)
    assert cm.cursor == 99 and cm.top == 90
    for k in ["g", "/", "4", "2", "enter"]:
        assert cm.key(k)
    assert cm.lines[cm.cursor] == "line 42"
    assert cm.key("n") and cm.lines[cm.cursor] == "line 42"  # only one match: wraps to itself
    for k in ["?", "l", "i", "n", "e", " ", "5", "enter"]:
        cm.key(k)
    assert cm.lines[cm.cursor] == "line 5"
    assert cm.key(" ") and cm.key("down") and cm.key("down")
    assert cm.key("enter") is False
    assert cm.copied == "line 5\nline 6\nline 7"
    assert written[-1] == b"\x1b]52;c;" + base64.b64encode(b"line 5\nline 6\nline 7") + b"\x07"
    cm2 = CopyMode(lines, rows=11, cols=40, write=written.append)
    for k in ["/", "n", "o", "p", "e", "enter"]:
        cm2.key(k)
    assert "not found" in cm2.message and cm2.cursor == 99
    assert cm2.key("q") is False


def test_copy_mode_in_attach_scrolls_searches_and_copies_without_typing(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    tachi_daemon.run("send", s["id"], "for i in $(seq 1 200); do echo row-$i; done\n", check=True)
    wait_match(tachi_daemon, s["id"], "row-200")
    child = spawn_attach(tachi_daemon, s["id"], rows=20, cols=80)
    child.expect("row-200")
    child.send(PREFIX + "[")
    child.expect(r"\[copy mode\]")
    child.send("g")
    child.expect("row-1\\b")
    child.send("/row-57\r")
    child.expect("/row-57")
    child.send("y")
    child.expect(r"\x1b\]52;c;" + base64.b64encode(b"row-57").decode())
    child.expect("row-200")  # back to the live screen
    # PageUp and an arrow after the prefix: copy mode or a bell, never typed.
    child.send(PREFIX + "\x1b[5~")
    child.expect(r"\[copy mode\]")
    child.send("q")
    child.send(PREFIX + "\x1b[A")
    child.send("echo after-$((6*7))\r")
    child.expect("after-42")
    screen = capture(tachi_daemon, s["id"])
    assert "[5~" not in screen and "[A" not in screen and "row-57y" not in screen
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def test_observers_may_use_copy_mode(tachi_daemon):
    s = tachi_daemon.new("bash", "--norc", "-c", "seq 1 100; sleep 60")
    wait_match(tachi_daemon, s["id"], "^100$")
    child = spawn_attach(tachi_daemon, s["id"], "--read-only", rows=20, cols=80)
    child.expect("100")
    child.send(PREFIX + "[")
    child.expect(r"\[copy mode\]")
    child.send("g")
    child.expect(r"\[copy mode\] 1/")
    child.send("q")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def test_every_mode_is_restored_and_the_cursor_left_below(tachi_daemon, tmp_path):
    set_modes = (
        r"printf '\e[?1h\e=\e[?1000h\e[?1006h\e[?2004h\e[?1004h\e[?25l\e[3;5r\e[>1u"
        r"\e[?1049h\e[31mMODES-SET\n'; sleep 60"
    )
    s = tachi_daemon.new("bash", "--norc", "-c", set_modes)
    wait_match(tachi_daemon, s["id"], "MODES-SET")
    child = spawn_attach(tachi_daemon, s["id"], rows=24, cols=80)
    child.expect("MODES-SET")
    time.sleep(0.3)
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    out = tail = child.before  # everything printed after MODES-SET
    for reset in (
        b"\x1b[?1l", b"\x1b>", b"\x1b[?1000l", b"\x1b[?1006l", b"\x1b[?2004l", b"\x1b[?1004l",
        b"\x1b[?25h", b"\x1b[r", b"\x1b[<99u", b"\x1b[?1049l", b"\x1b[0m",
    ):  # fmt: skip
        assert reset in tail, reset
    # A real emulator fed everything the client printed ends in normal cursor keys,
    # with the cursor on the last row under the session's output.
    vt = avt.Vt(cols=80, rows=24)
    vt.feed_str(out.decode(errors="replace"))
    assert not vt.cursor_key_app_mode
    assert vt.cursor.row == 23
    assert "detached from session" in vt.view()[23].text or "detached" in out.decode(
        errors="replace"
    )


def test_a_larger_terminal_shows_the_unused_area(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    big = spawn_attach(tachi_daemon, s["id"], rows=30, cols=100)
    big.logfile_read = io.BytesIO()
    until(lambda: get(tachi_daemon, s["id"])["clients"] == 1)
    tachi_daemon.run("send", s["id"], "for i in $(seq 1 40); do echo stale-$i; done\n", check=True)
    big.expect("stale-40")
    small = spawn_attach(tachi_daemon, s["id"], rows=10, cols=50)
    until(lambda: get(tachi_daemon, s["id"])["pty"]["rows"] == 10)
    big.expect(("·" * 50).encode())
    time.sleep(0.5)
    with contextlib.suppress(pexpect.TIMEOUT):
        big.expect("never", timeout=0.5)
    # What the big terminal shows: the 10x50 session top left, dots elsewhere,
    # nothing stale.
    vt = avt.Vt(cols=100, rows=30)
    vt.feed_str(big.logfile_read.getvalue().decode(errors="replace"))
    rows = [line.text for line in vt.view()]
    for r in range(10, 30):
        assert set(rows[r]) == {"·"}, (r, rows[r])
    for r in range(10):
        assert set(rows[r][50:]) == {"·"}, (r, rows[r])
    assert not any("stale" in row for row in rows[10:])
    for child in (small, big):
        child.send(PREFIX + "d")
        child.expect(pexpect.EOF)


@pytest.mark.parametrize("cols", [80, 120])
def test_copy_mode_help_fits_the_status_line(cols):
    """At 80 columns the full help is cut: the status line says a shorter one, whole."""
    written: list[bytes] = []
    cm = CopyMode([f"line {i}" for i in range(1000)], rows=24, cols=cols, write=written.append)
    cm.render()
    status = written[-1].decode().rsplit("\x1b[24;1H\x1b[0;7m", 1)[1].split("\x1b[K")[0]
    assert status.endswith("enter copy"), status
    assert len(status) < cols
