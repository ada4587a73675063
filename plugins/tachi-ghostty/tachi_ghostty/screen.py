"""``tachi.core.screen.Screen`` backed by libghostty-vt, Ghostty's emulator core.

Why another emulator: on a full-screen redraw flood (what vim or htop send) the
daemon's time is the emulator's, and this one parses it ~5.6 times as fast as
avt (about 420 against 75 MiB/s on the benchmark machine), in a tenth of the
memory per idle window. Everything read back (the rows, the history, the
escape sequences that redraw the screen) comes from Ghostty's own formatter:
nothing here interprets terminal output.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

from pyghostty import GhosttyError, Terminal, ffi, lib
from pyghostty.core import init_sized, read_buf

from tachi.core.screen import Cursor

# Leave any alternate screen, reset attributes, home and clear: the drawing that
# follows then starts from a known state whatever the client showed before.
_RESET = "\x1b[?1049l\x1b[0m\x1b[H\x1b[2J\x1b[?25h"
# Margins as the formatter writes them, only when narrower than the screen:
# DECSTBM (top and bottom) or DECSLRM (left and right). Either makes scrolling
# something other than whole-screen line feeds.
_MARGINS = re.compile(r"\x1b\[\d*;\d*[rs]")
# What the redraw restores besides the cells. Not the palette: that would
# repaint the client's own colours with the emulator's defaults.
# An SGR sequence with ";"-separated parameters (colons: left as written).
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_REDRAW_EXTRAS = ("modes", "scrolling_region", "tabstops")
_REDRAW_SCREEN_EXTRAS = ("cursor", "style", "hyperlink", "charsets")
_LEAVE_ALTERNATE = b"\x1b[?1049l"
_SCROLLBACK_LINES = lib.GHOSTTY_TERMINAL_OPT_SCROLLBACK_MAX_LINES
_SCROLLBACK_BYTES = lib.GHOSTTY_TERMINAL_OPT_SCROLLBACK_MAX_BYTES
_UNLIMITED = 2**62
# Ghostty's cell and row sizes in its pages (8 and 16 bytes).
_CELL_BYTES = 8
_ROW_BYTES = 16
_PLAIN = lib.GHOSTTY_FORMATTER_FORMAT_PLAIN
_VT = lib.GHOSTTY_FORMATTER_FORMAT_VT


class GhosttyScreen:
    """A window's screen: ``cols`` x ``rows``, keeping ``history`` lines of scrollback."""

    def __init__(self, cols: int, rows: int, history: int = 0) -> None:
        self._term = Terminal(cols=cols, rows=rows, scrollback=_scrollback_limit(history, cols))
        # The raw handle, for the C calls pyghostty's wrapper does not make.
        self._handle = self._term._t[0]
        # Lines are the limit: Ghostty's default byte limit would cut history
        # short of ``history`` on wide screens.
        no_limit = ffi.new("size_t*", _UNLIMITED)
        _check(lib.ghostty_terminal_set(self._handle, _SCROLLBACK_BYTES, no_limit))
        self._cols = cols
        self._rows = rows
        self._history = history

    def feed(self, data: bytes) -> None:
        # A byte stream to libghostty-vt: split UTF-8 and split escape
        # sequences carry over to the next call. cffi releases the GIL here.
        lib.ghostty_terminal_vt_write(self._handle, data, len(data))

    def resize(self, cols: int, rows: int) -> None:
        self._term.resize(cols, rows)
        self._cols, self._rows = cols, rows
        limit = ffi.new("size_t*", _scrollback_limit(self._history, cols))
        _check(lib.ghostty_terminal_set(self._handle, _SCROLLBACK_LINES, limit))

    def lines(self) -> list[str]:
        screen = _area(self._term, "active", 0, self._rows, self._cols)
        return _rows(_format(self._term, screen, _PLAIN), self._rows)

    def history(self) -> list[str]:
        # Ghostty holds more than that (``_scrollback_limit``): the window's
        # history is the newest ``history`` lines of it.
        scrollback = self._term.get("scrollback_rows", "size_t")
        kept = min(scrollback, self._history)
        if kept <= 0:
            return []
        area = _area(self._term, "history", scrollback - kept, kept, self._cols)
        return _rows(_format(self._term, area, _PLAIN), kept)

    def has_scroll_region(self) -> bool:
        corner = _area(self._term, "active", 0, 1, 1)
        return _MARGINS.search(_format(self._term, corner, _VT, ("scrolling_region",))) is not None

    def cursor(self) -> Cursor:
        col, row = self._term.cursor
        return Cursor(row=row, col=col, visible=self._term.get("cursor_visible", "bool"))

    def ansi(self) -> str:
        screen = _area(self._term, "active", 0, self._rows, self._cols)
        body = _format(self._term, screen, _VT, _REDRAW_EXTRAS, _REDRAW_SCREEN_EXTRAS)
        if self._term.get("active_screen", "int") != lib.GHOSTTY_TERMINAL_SCREEN_PRIMARY:
            # On the alternate screen (vim, less), draw the primary screen first,
            # as the program left it: the client's terminal then shows it again
            # when the program leaves the alternate screen (``body`` enters it).
            body = self._primary_screen() + body
        return _RESET + _SGR.sub(_sixteen_colours, body)

    def _primary_screen(self) -> str:
        """The primary screen's cells and cursor as escape sequences, read from a
        copy of the terminal (the formatter reads only the active screen)."""
        copy = _copy(self._handle)
        lib.ghostty_terminal_vt_write(copy._t[0], _LEAVE_ALTERNATE, len(_LEAVE_ALTERNATE))
        screen = _area(copy, "active", 0, self._rows, self._cols)
        return _format(copy, screen, _VT, (), ("cursor", "style", "hyperlink"))


def _scrollback_limit(history: int, cols: int) -> int:
    """The scrollback to ask Ghostty for, to keep at least ``history`` lines.

    Once over its limit, Ghostty drops a whole page of the oldest rows at a
    time (measured: about 380 KiB of cells, 233 rows at 200 columns), so a
    limit of exactly ``history`` leaves up to a page fewer. Asking for
    ``history`` plus a generously estimated page (1 MiB of cells) keeps enough
    whatever the page size, for a megabyte more memory at most.
    """
    if history <= 0:
        return 0
    return history + -(-(2**20) // (cols * _CELL_BYTES + _ROW_BYTES))


def _area(term: Terminal, tag: str, first: int, count: int, cols: int) -> Any:
    """A selection of ``count`` rows, ``cols`` wide, from row ``first`` of
    ``tag`` (``active``: the screen; ``history``: the scrollback)."""
    selection = init_sized("GhosttySelection")
    selection.start = term.ref(0, first, tag)[0]
    selection.end = term.ref(cols - 1, first + count - 1, tag)[0]
    return selection


def _format(
    term: Terminal,
    selection: Any,
    emit: int,
    extras: tuple[str, ...] = (),
    screen_extras: tuple[str, ...] = (),
) -> str:
    options = init_sized("GhosttyFormatterTerminalOptions")
    options.emit = emit
    # Rows as displayed (soft wraps kept), trailing blanks kept: a styled blank
    # must be redrawn, and ``_rows`` strips plain text itself.
    options.unwrap = False
    options.trim = False
    for name in extras:
        setattr(options.extra, name, True)
    for name in screen_extras:
        setattr(options.extra.screen, name, True)
    options.selection = selection
    formatter = ffi.new("GhosttyFormatter*")
    _check(lib.ghostty_formatter_terminal_new(ffi.NULL, formatter, term._t[0], options[0]))
    try:

        def fill(buf: Any, size: int, written: Any) -> int:
            return lib.ghostty_formatter_format_buf(formatter[0], buf, size, written)

        return read_buf(fill)
    finally:
        lib.ghostty_formatter_free(formatter[0])


def _copy(handle: Any) -> Terminal:
    """An independent terminal in the same state as ``handle`` (both screens,
    modes, history), through Ghostty's snapshot encoding; freed with the object."""
    size = ffi.new("size_t*")
    lib.ghostty_snapshot_encode_buf(handle, ffi.NULL, 0, size)  # asks for the size
    buf = ffi.new("uint8_t[]", max(size[0], 1))
    _check(lib.ghostty_snapshot_encode_buf(handle, buf, len(buf), size))
    decoder = ffi.new("GhosttySnapshotDecoder*")
    _check(lib.ghostty_snapshot_decoder_new_buf(ffi.NULL, decoder, buf, size[0]))
    out = ffi.new("GhosttyTerminal*")
    try:
        _check(lib.ghostty_snapshot_decoder_decode(decoder[0], out))
    finally:
        lib.ghostty_snapshot_decoder_free(decoder[0])
    # pyghostty's Terminal only ever creates its own terminal: adopt this one
    # the way its constructor keeps a handle (pinned by the version range).
    copy = Terminal.__new__(Terminal)
    copy._t = out
    copy._unknown_cb = copy._reply_cb = copy._cb_err = None
    copy._free = weakref.finalize(copy, lib.ghostty_terminal_free, out[0])
    return copy


def _sixteen_colours(sgr: re.Match[str]) -> str:
    """An SGR sequence with the 16 basic colours in their own codes (``31``,
    ``94``, ``45``) instead of the 256-colour form the formatter writes
    (``38;5;1``): what the program sent, and what 16-colour terminals know."""
    params = sgr.group(1).split(";")
    out: list[str] = []
    i = 0
    while i < len(params):
        p = params[i]
        if p in ("38", "48") and i + 2 < len(params) and params[i + 1] == "5":
            n = int(params[i + 2] or 0)
            if n < 16:
                base = (30 if n < 8 else 90) + (10 if p == "48" else 0)
                out.append(str(base + n % 8))
            else:
                out += params[i : i + 3]
            i += 3
        elif p in ("38", "48") and i + 1 < len(params) and params[i + 1] == "2":
            out += params[i : i + 5]  # truecolour: r, g, b follow
            i += 5
        else:
            out.append(p)
            i += 1
    return "\x1b[" + ";".join(out) + "m"


def _rows(text: str, count: int) -> list[str]:
    """``count`` rows from the formatter's plain text, which leaves out the blank
    rows at the end of a selection; trailing spaces removed."""
    rows = [row.rstrip() for row in text.split("\n")] if text else []
    return rows + [""] * (count - len(rows))


def _check(result: int) -> None:
    if result:
        raise GhosttyError(f"libghostty-vt call failed ({result})")


def _warm_up() -> None:
    """Parse, once per process, the C types the methods above use.

    cffi parses a type string the first time it meets it (pycparser, in
    Python): ~100 ms in all here, which the first attach after the daemon
    started would otherwise wait for. Done at import, it is part of the
    daemon's start instead."""
    screen = GhosttyScreen(2, 2, 1)
    screen.feed(b"\x1b[?1049h")
    screen.ansi()
    screen.lines()
    screen.history()
    screen.has_scroll_region()
    screen.resize(3, 2)


_warm_up()
