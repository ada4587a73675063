"""A terminal smaller than its session shows a crop of it that follows the
cursor, like tmux, instead of wrapped lines piling up (issue 29).

What the small terminal shows is read with a real terminal emulator (avt) of
the terminal's size, fed everything ``tachi attach`` wrote to its PTY, and
compared with the session's own screen (``session.capture``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import avt
import pexpect
import pytest

from helpers import SHELL, until
from tachi.cli.attach_crop import follow, render_row
from tachi.testing import DaemonProcess

PREFIX = "\x1c"
ROWS, COLS = 48, 153
SMALL = (15, 50)


class Terminal:
    """A pexpect-driven ``tachi attach`` and the screen its terminal shows."""

    def __init__(self, daemon: DaemonProcess, *args: str, rows: int, cols: int, **env: str):
        argv = daemon.tachi_argv("attach", *args)
        self.child = pexpect.spawn(
            argv[0], argv[1:], env={**daemon.env, **env}, dimensions=(rows, cols), timeout=15
        )
        self.vt = avt.Vt(cols=cols, rows=rows)
        self.written = b""

    def pump(self, seconds: float = 0.1) -> None:
        """Feed the emulator what attach wrote in the next ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.written += data
            self.vt.feed_str(data.decode(errors="replace"))

    def rows(self) -> list[str]:
        return [line.text.rstrip() for line in self.vt.view()]

    def cursor(self) -> tuple[int, int]:
        return self.vt.cursor.row, self.vt.cursor.col

    def detach(self) -> None:
        self.child.send(PREFIX + "d")
        self.child.expect(pexpect.EOF)


def _crop_of(
    screen: dict[str, Any], term: Terminal, size: tuple[int, int] = (ROWS, COLS)
) -> tuple[int, int] | None:
    """The (row, col) at which ``term`` shows exactly a crop of ``screen`` (of
    ``size``), with the cursor where the session has it; ``None`` if it shows
    anything else."""
    lines = screen["text"].split("\n")
    lines += [""] * (size[0] - len(lines))
    shown = term.rows()
    vrows, vcols = len(shown), term.vt.size[0]
    for oy in range(size[0] - vrows + 1):
        for ox in range(size[1] - vcols + 1):
            if all(shown[r] == lines[oy + r][ox : ox + vcols].rstrip() for r in range(vrows)):
                cursor = screen["cursor"]
                if term.cursor() == (cursor["row"] - oy, cursor["col"] - ox):
                    return oy, ox
    return None


def _shows_crop(
    daemon: DaemonProcess, sid: str, term: Terminal, size: tuple[int, int] = (ROWS, COLS)
) -> tuple[int, int] | None:
    """Wait (bounded) until ``term`` shows a crop of the session's screen."""
    found: list[tuple[int, int] | None] = [None]

    def check() -> bool:
        term.pump()
        with daemon.client() as client:
            found[0] = _crop_of(client.call("session.capture", session=sid), term, size)
        return found[0] is not None

    until(check, timeout=15, interval=0.05)
    return found[0]


def _page(path: Path) -> None:
    """46 lines of 150 columns, every 10 columns labelled with row and column,
    so a crop of them matches at one place only."""
    lines = []
    for r in range(46):
        cells = "".join(f"r{r:02d}c{c:03d}.." for c in range(0, 150, 10))
        lines.append(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct-terminal", "through-attach"])
def test_a_smaller_read_only_client_sees_a_crop_that_follows_the_cursor(
    tachi_daemon, tmp_path, direct
):
    page = tmp_path / "page.txt"
    _page(page)
    s = tachi_daemon.new(*SHELL, rows=ROWS, cols=COLS, env="PS1=$ ")
    sid = s["id"]
    tachi_daemon.run("send", sid, f"clear; cat {page}\n", check=True)
    until(lambda: "r45c140" in tachi_daemon.run("capture", sid).stdout, timeout=15)
    term = Terminal(
        tachi_daemon, sid, "--read-only", rows=SMALL[0], cols=SMALL[1], TACHI_DIRECT=direct
    )
    # Told once that the view is cropped.
    term.child.expect(r"\[cropped 50x15 of 153x48\]")
    term.written += (term.child.before or b"") + term.child.after
    term.vt.feed_str(term.written.decode(errors="replace"))
    # The prompt is below the 46 lines: the crop shows it and the rows above it.
    with tachi_daemon.client() as client:
        prompt_row = client.call("session.capture", session=sid)["cursor"]["row"]
    assert prompt_row == 46
    assert _shows_crop(tachi_daemon, sid, term) == (prompt_row - SMALL[0] + 1, 0), term.rows()
    # The hint goes away (the screen is drawn again) and the crop stays put.
    until(lambda: (term.pump(), "[cropped" not in "".join(term.rows()))[1], timeout=10)
    assert _shows_crop(tachi_daemon, sid, term) == (prompt_row - SMALL[0] + 1, 0), term.rows()
    # The cursor goes far up and right: the view follows it there, and what is
    # drawn there is the session's screen, not wrapped output.
    tachi_daemon.run("send", sid, r"printf '\\033[5;120HF%sR' $((1+1)); read x" + "\n", check=True)
    until(lambda: "F2R" in tachi_daemon.run("capture", sid).stdout, timeout=15)
    where = _shows_crop(tachi_daemon, sid, term)
    assert where == (4, 122 - SMALL[1] + 1), (where, term.rows())
    assert "F2R" in term.rows()[0]
    # Output while it is there changes the view in place.
    tachi_daemon.run("send", sid, "typed-while-far", check=True)
    until(lambda: (term.pump(), "typed-while-far" in "".join(term.rows()))[1], timeout=10)
    assert _shows_crop(tachi_daemon, sid, term) is not None, term.rows()
    term.detach()


@pytest.mark.parametrize("direct", ["1", "0"], ids=["direct-terminal", "through-attach"])
def test_a_client_that_shrinks_below_a_size_another_client_sets_sees_a_crop(tachi_home, direct):
    """size_policy "largest": the session keeps the bigger client's size when
    this one shrinks, so this one shows a crop of it (its terminal had been
    handed to the daemon while the sizes matched)."""
    daemon = DaemonProcess(tachi_home, config='size_policy = "largest"\n')
    daemon.start()
    try:
        s = daemon.new(*SHELL, rows=40, cols=160, env="PS1=$ ")
        sid = s["id"]
        big = Terminal(daemon, sid, rows=40, cols=160)
        small = Terminal(daemon, sid, rows=40, cols=160, TACHI_DIRECT=direct)
        daemon.run("send", sid, "echo both-$((2*3))\n", check=True)
        small.child.expect("both-6")
        time.sleep(0.5)  # the output is handed to the daemon once it is quiet
        small.child.setwinsize(*SMALL)
        small.vt = avt.Vt(cols=SMALL[1], rows=SMALL[0])
        small.child.expect(r"\[cropped 50x15 of 160x40\]")
        until(lambda: (small.pump(), "[cropped" not in "".join(small.rows()))[1], timeout=10)
        assert daemon.client().call("session.get", session=sid)["pty"]["rows"] == 40
        assert _shows_crop(daemon, sid, small, (40, 160)) is not None, small.rows()
        daemon.run("send", sid, r"printf '\\033[30;150HF%sR' $((1+1)); read x" + "\n", check=True)
        until(lambda: "F2R" in daemon.run("capture", sid).stdout, timeout=15)
        # The cursor, after F2R, is on row 29, column 152 (from 0): the crop's
        # bottom-right corner.
        assert _shows_crop(daemon, sid, small, (40, 160)) == (29 - SMALL[0] + 1, 152 - SMALL[1] + 1)
        for term in (small, big):
            term.detach()
    finally:
        daemon.stop()


def test_a_bigger_terminal_still_shows_the_session_as_written(tachi_daemon):
    """The crop is only for a smaller terminal: one the session's size gets its
    output as the program wrote it."""
    s = tachi_daemon.new(*SHELL, rows=20, cols=60, env="PS1=$ ")
    term = Terminal(tachi_daemon, s["id"], "--read-only", rows=20, cols=60)
    tachi_daemon.run("send", s["id"], "echo same-$((6*7))\n", check=True)
    term.child.expect("same-42")
    assert b"[cropped" not in term.child.before
    term.detach()


def test_the_crop_moves_just_enough_to_hold_the_cursor():
    screen, view = (48, 153), (15, 50)
    assert follow((0, 0), (3, 4), view, screen) == (0, 0)
    assert follow((0, 0), (47, 2), view, screen) == (33, 0)
    assert follow((33, 0), (40, 2), view, screen) == (33, 0)  # inside: stays
    assert follow((33, 0), (4, 122), view, screen) == (4, 73)
    assert follow((0, 0), (200, 400), view, screen) == (33, 103)  # never past the edges


def test_a_wide_character_cut_by_the_crop_edge_is_a_space():
    vt = avt.Vt(cols=6, rows=1)
    vt.feed_str("a字b字")
    cells = vt.view()[0].cells
    # Its right half at the crop's left edge, its left half at the right edge.
    assert _text(render_row(cells, 2, 3)) == " b"
    assert "字" not in render_row(cells, 2, 3)
    assert _text(render_row(cells, 0, 3)) == "a字"


def _text(row: str) -> str:
    vt = avt.Vt(cols=10, rows=1)
    vt.feed_str(row)
    return vt.view()[0].text.rstrip()
