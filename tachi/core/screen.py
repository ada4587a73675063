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

    def has_scroll_region(self) -> bool:
        """Whether a scroll region (DECSTBM) is set (optional: without it,
        ``LazyScreen`` finds scroll regions by scanning the output it feeds)."""

    def ansi(self) -> str:
        """Escape sequences that draw this screen (content, colours, cursor, alternate
        screen) on a terminal of the same size, starting from any state."""


#: Compact (or, failing that, feed) the pending output once this much piles up,
#: so memory stays bounded.
CATCH_UP_BYTES = 256 * 1024
#: ... and at least this much per row of screen and history: what stays pending
#: after compaction is about a line per row, so batches of a few rows' worth
#: would compact to almost nothing gained.
CATCH_UP_PER_ROW = 800
#: Output holding escape sequences is parsed once this much is pending: about a
#: millisecond of the emulator's time (it parses ~60 MB/s here).
ESCAPED_CATCH_UP_BYTES = 64 * 1024
# Bytes that cannot change terminal state beyond the cursor and the text itself.
_PLAIN = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)) + b"\r\n\t\b\a"
# One column each, never combining: a run of these wraps at every ``cols`` bytes.
_ASCII = bytes(range(0x20, 0x7F))
# U+0080-U+009F in UTF-8: C1 controls (U+009B is CSI), which are not plain.
_C1 = re.compile(rb"\xc2[\x80-\x9f]")
# DECSTBM with parameters (after a 7- or 8-bit CSI): a scroll region, after which
# scrolling is no longer whole-screen and the plain-text shortcut would be wrong.
_SCROLL_REGION = re.compile(rb"(?:\x1b\[|\xc2\x9b)(\d*;?\d*)r")


class LazyScreen:
    """Wraps a ``Screen`` and defers feeding it until the screen is needed.

    Output piles up unparsed. When it reaches the catch-up size, the part that
    provably cannot show on the screen or in the history is cut away
    (:func:`plain_tail`) *without parsing anything*; only if that leaves more
    than half the catch-up size (escape sequences, a scroll region) is the
    emulator fed. A plain-text flood is then never parsed while nobody looks,
    and whoever looks (attach, capture, wait) pays for the last screenful or so.

    Each chunk is classified as it arrives (plain text or not, and whether the
    line it ends in is printable ASCII), so a cut costs a join and a few
    ``rfind`` calls, never a scan of megabytes on the event loop at once.
    """

    def __init__(
        self,
        screen: Screen,
        cols: int,
        rows: int,
        history: int = 0,
        *,
        catch_up_bytes: int | None = None,
    ) -> None:
        self._screen = screen
        #: Lines of scrollback to keep: the skip logic must not drop them.
        self.history_lines = history
        self._fixed_catch_up = catch_up_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        #: How many of the pending chunks, from the first, are plain text.
        self._plain_chunks = 0
        #: Whether the pending output after its last line feed is printable ASCII.
        self._line_printable = True
        self.cols = cols
        self.rows = rows
        self._catch_up_at = self._catch_up_size()
        self._scroll_region = False
        #: Output that may have changed the scroll region was parsed since we last
        #: asked the emulator (``has_scroll_region``).
        self._region_stale = False
        self._region_probe = getattr(screen, "has_scroll_region", None)
        #: Bytes the emulator never had to parse thanks to :func:`plain_tail`.
        self.skipped_bytes = 0
        #: Bytes the emulator parsed.
        self.parsed_bytes = 0

    def _catch_up_size(self) -> int:
        if self._fixed_catch_up is not None:
            return self._fixed_catch_up
        return max(CATCH_UP_BYTES, CATCH_UP_PER_ROW * (self.rows + self.history_lines))

    def feed(self, data: bytes) -> None:
        if self._plain_chunks == len(self._pending):
            self._classify(data)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._catch_up_at > ESCAPED_CATCH_UP_BYTES and b"\x1b" in data:
            # Escape sequences cannot be cut, and the emulator is no faster on
            # big batches: parse them in small ones, so no session's parsing
            # holds up the event loop (every other session's keystrokes) for long.
            self._catch_up_at = ESCAPED_CATCH_UP_BYTES
        if self._pending_bytes >= self._catch_up_at:
            self._compact()

    def _classify(self, data: bytes) -> None:
        """Extend the plain run of pending chunks with ``data`` if it is plain."""
        lf = data.rfind(b"\n")
        printable = not (data[lf + 1 :] if lf >= 0 else data).translate(None, _ASCII)
        if not ((lf < 0 and printable) or _is_plain(data)):
            return
        self._plain_chunks += 1
        self._line_printable = printable if lf >= 0 else self._line_printable and printable

    def _take(self) -> tuple[bytes, bytes, bool]:
        """Empty the pending output: (its plain head, cut; the rest; whether all
        of it was plain). ``_line_printable`` is left to the caller: it still
        holds for the head if everything was plain (a cut keeps the last line)."""
        pending, plain = self._pending, self._plain_chunks
        self._pending, self._pending_bytes, self._plain_chunks = [], 0, 0
        whole = plain == len(pending)
        head = b"".join(pending[:plain])
        rest = b"" if whole else b"".join(pending[plain:])
        if head and self._in_scroll_region():
            return b"", head + rest, False
        cut = _cut_plain(
            head, self.rows, self.cols, self.history_lines, whole and self._line_printable
        )
        self.skipped_bytes += max(0, len(head) - len(cut))
        return cut, rest, whole

    def _compact(self) -> None:
        head, rest, plain = self._take()
        big = self._catch_up_size()
        if plain and len(head) * 2 <= big:
            self._pending = [head]
            self._pending_bytes = len(head)
            self._plain_chunks = 1
        else:
            self._parse(head + rest)
        self._catch_up_at = big if plain else ESCAPED_CATCH_UP_BYTES

    def catch_up(self) -> None:
        """Bring the emulator up to date with everything pending, in one call."""
        if self._pending:
            head, rest, _ = self._take()
            self._parse(head + rest)

    def _in_scroll_region(self) -> bool:
        """Whether a scroll region is set in the emulator (all pending output is
        plain text up to the cut, which cannot set one)."""
        if self._region_stale and self._region_probe is not None:
            self._region_stale = False
            self._scroll_region = self._region_probe()
        return self._scroll_region

    def _parse(self, data: bytes) -> None:
        self._line_printable = True  # nothing is pending: no line yet
        if b"\x1b" in data or b"\xc2\x9b" in data:
            if self._region_probe is not None:
                # Asked at the next cut, if any: a redraw flood, never cut, then
                # costs no scan (the scan took a fifth of the emulator's time).
                self._region_stale = True
            else:
                for m in _SCROLL_REGION.finditer(data):
                    self._scroll_region = m.group(1) not in (b"", b";")
        self.parsed_bytes += len(data)
        self._screen.feed(data)

    def resize(self, cols: int, rows: int) -> None:
        # Output produced before the resize was laid out at the old size.
        self.catch_up()
        self.cols, self.rows = cols, rows
        self._catch_up_at = self._catch_up_size()
        self._screen.resize(cols, rows)
        self._region_stale = True

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


def plain_tail(data: bytes, rows: int, cols: int = 0, history: int = 0) -> bytes:
    """A stream that leaves the same screen and history as ``data``, shorter when
    that is provable; only valid without a scroll region.

    Lines: if ``data`` is plain text (no escape sequences, no control characters
    but CR, LF, TAB, BS, BEL) with at least ``rows`` line feeds before some
    CR LF and ``rows + history + 1`` from it on, then the cursor is on the
    bottom row at that CR LF, and what comes after it scrolls everything
    before out of the screen and the history. The result is ``rows`` line
    feeds (which bring the emulator's cursor to the bottom row too, wherever
    it was) and the rest of ``data`` from that CR LF.

    Long lines: with ``cols``, a last line of printable ASCII longer than
    ``rows + history + 2`` screen rows (``base64 -w 0``) is cut by whole
    multiples of ``cols`` bytes from its start, which keeps every later byte in
    the same column and row phase, while what is cut wraps into rows that
    scroll away.
    """
    if not _is_plain(data):
        return data
    lf = data.rfind(b"\n")
    printable = not data[lf + 1 :].translate(None, _ASCII)
    return _cut_plain(data, rows, cols, history, printable)


def _cut_plain(data: bytes, rows: int, cols: int, history: int, line_printable: bool) -> bytes:
    """:func:`plain_tail` for ``data`` known to be plain; ``line_printable``: the
    part after its last line feed is printable ASCII."""
    data = _plain_lines_tail(data, rows, history)
    if cols and line_printable:
        data = _long_line_tail(data, rows + history, cols)
    return data


def _is_plain(data: bytes) -> bool:
    if data.translate(None, _PLAIN):
        return False
    return not (b"\xc2" in data and _C1.search(data))


def _long_line_tail(data: bytes, rows: int, cols: int) -> bytes:
    start = data.rfind(b"\n") + 1
    keep = (rows + 2) * cols
    if len(data) - start <= keep + cols:
        return data
    drop = (len(data) - start - keep) // cols * cols
    return data[:start] + data[start + drop :]


def _plain_lines_tail(data: bytes, rows: int, history: int) -> bytes:
    needed = rows + history + 1
    if len(data) < 4 * (needed + rows):
        return data
    cut = len(data)
    for _ in range(needed):
        cut = data.rfind(b"\n", 0, cut)
        if cut <= 0:
            return data
    cut = data.rfind(b"\r\n", 0, cut)
    if cut <= 0:
        return data
    before = cut
    for _ in range(rows):  # what is cut must bring the cursor to the bottom row
        before = data.rfind(b"\n", 0, before)
        if before < 0:
            return data
    return b"\n" * rows + data[cut:]
