"""The server-side terminal screen of a window.

A ``Screen`` is any terminal emulator behind a four-method interface (the
built-in is avt, asciinema's emulator; a plugin can supply another through
``tachi_create_screen``). ``LazyScreen`` keeps the emulator off the hot path:
output is forwarded to clients first and fed to the emulator in large batches,
only when someone needs the screen or enough has piled up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True, frozen=True)
class Cursor:
    row: int
    col: int
    visible: bool


class Screen(Protocol):
    """What tachi needs from a terminal emulator."""

    def feed(self, data: bytes) -> None:
        """Process PTY output; ``data`` may split UTF-8 characters and escape sequences."""

    def resize(self, cols: int, rows: int) -> None: ...

    def lines(self) -> list[str]:
        """The visible rows as text, trailing spaces removed."""

    def cursor(self) -> Cursor: ...

    def history(self) -> list[str]:
        """The lines that scrolled off the top, oldest first, trailing spaces
        removed (optional: a screen without it has no scrollback)."""

    def ansi(self) -> str:
        """Escape sequences that draw this screen (content, colours, cursor, alternate
        screen) on a terminal of the same size, starting from any state."""


#: Feed the emulator once this much output is pending, so memory stays bounded.
CATCH_UP_BYTES = 256 * 1024
#: ... and at least this much per row of screen and history: the skip below must
#: still parse every row that can stay visible or in the history, so batches of a
#: few rows' worth would be parsed almost whole (measured: 2000 lines of history
#: with 200-byte-per-row batches parsed 77% of a flood; 800 bytes per row, 20%).
CATCH_UP_PER_ROW = 800
# Bytes that cannot change terminal state beyond the cursor and the text itself.
_PLAIN = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)) + b"\r\n\t\b\a"
# One column each, never combining: a run of these wraps at every ``cols`` bytes.
_ASCII = bytes(range(0x20, 0x7F))
# DECSTBM with parameters: a scroll region, after which scrolling is no longer
# whole-screen and the plain-text shortcut would be wrong.
_SCROLL_REGION = re.compile(rb"\x1b\[(\d*;?\d*)r")


class LazyScreen:
    """Wraps a ``Screen`` and defers feeding it until the screen is needed."""

    def __init__(self, screen: Screen, cols: int, rows: int, history: int = 0) -> None:
        self._screen = screen
        #: Lines of scrollback to keep: the skip logic must not drop them.
        self.history_lines = history
        self._catch_up_at = max(CATCH_UP_BYTES, CATCH_UP_PER_ROW * (rows + history))
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.cols = cols
        self.rows = rows
        self._scroll_region = False
        #: Bytes the emulator never had to parse thanks to :func:`plain_tail`.
        self.skipped_bytes = 0

    def feed(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self._catch_up_at:
            self.catch_up()

    def catch_up(self) -> None:
        """Bring the emulator up to date with everything pending, in one call."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._scroll_region:
            # What scrolls into the history must be parsed too.
            tail = plain_tail(data, self.rows + self.history_lines, self.cols)
            self.skipped_bytes += len(data) - len(tail)
            data = tail
        if b"\x1b" in data:
            for m in _SCROLL_REGION.finditer(data):
                self._scroll_region = m.group(1) not in (b"", b";")
        self._screen.feed(data)

    def resize(self, cols: int, rows: int) -> None:
        # Output produced before the resize was laid out at the old size.
        self.catch_up()
        self.cols, self.rows = cols, rows
        self._catch_up_at = max(CATCH_UP_BYTES, CATCH_UP_PER_ROW * (rows + self.history_lines))
        self._screen.resize(cols, rows)

    def lines(self) -> list[str]:
        self.catch_up()
        return self._screen.lines()

    def text(self) -> str:
        """The visible screen as text, trailing blank rows dropped, ending in a newline."""
        rows = self.lines()
        while rows and not rows[-1]:
            rows.pop()
        return "".join(row + "\n" for row in rows)

    def cursor(self) -> Cursor:
        self.catch_up()
        return self._screen.cursor()

    def history(self) -> list[str]:
        """Scrollback lines, oldest first (``[]`` if the emulator keeps none)."""
        self.catch_up()
        history = getattr(self._screen, "history", None)
        return history() if history is not None else []

    def ansi(self) -> str:
        self.catch_up()
        return self._screen.ansi()


def plain_tail(data: bytes, rows: int, cols: int = 0) -> bytes:
    """The part of ``data`` that decides the final screen, when that is provable.

    If ``data`` is plain text (no escape sequences, no control characters but CR,
    LF, TAB, BS, BEL) and, after a CR LF, still has at least ``2 * rows + 2`` line
    feeds, then everything before that CR LF scrolls off the screen: it can change
    neither the pen (no escapes) nor any visible cell. Returns the tail from that
    CR LF on, else ``data`` unchanged. Only valid without a scroll region.

    With ``cols``, a last line of printable ASCII longer than ``rows + 2`` screen
    rows (``base64 -w 0``) is cut too: by whole multiples of ``cols`` bytes from
    its start, which keeps every later byte in the same column and row phase,
    while what is cut wraps into rows that scroll off.
    """
    data = _plain_lines_tail(data, rows)
    return _long_line_tail(data, rows, cols) if cols else data


def _long_line_tail(data: bytes, rows: int, cols: int) -> bytes:
    start = data.rfind(b"\n") + 1
    keep = (rows + 2) * cols
    if len(data) - start <= keep + cols:
        return data
    if data.translate(None, _PLAIN) or data[start:].translate(None, _ASCII):
        return data
    drop = (len(data) - start - keep) // cols * cols
    return data[:start] + data[start + drop :]


def _plain_lines_tail(data: bytes, rows: int) -> bytes:
    needed = 2 * rows + 2
    if len(data) < 8 * needed or data.count(b"\n") <= needed:
        return data
    if data.translate(None, _PLAIN):
        return data
    cut = len(data)
    for _ in range(needed):
        cut = data.rfind(b"\n", 0, cut)
        if cut <= 0:
            return data
    cut = data.rfind(b"\r\n", 0, cut)
    if cut <= 0:
        return data
    return data[cut:]
