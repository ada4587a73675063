"""The default terminal emulator: avt (asciinema's virtual terminal, in Rust).

Chosen over pyte after measuring here: avt parses ~35-80 MB/s and implements the
alternate screen, which pyte (under 1 MB/s) lacks, so vim's screen would
otherwise linger after it exits.
"""

from __future__ import annotations

import codecs
import re

import avt

from tachi.core.screen import Cursor
from tachi.hookspecs import hookimpl

# Leave any alternate screen, reset attributes, home and clear: the drawing that
# follows then starts from a known state whatever the client showed before.
_RESET = "\x1b[?1049l\x1b[0m\x1b[H\x1b[2J\x1b[?25h"
# DECSTBM as avt dumps it (8-bit CSI).
_DECSTBM = re.compile("\x9b[0-9;]*r")


class AvtScreen:
    """``tachi.core.screen.Screen`` backed by ``avt.Vt``."""

    def __init__(self, cols: int, rows: int, history: int = 0) -> None:
        self._vt = avt.Vt(cols=cols, rows=rows, scrollback_limit=history)
        self._rows = rows
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        self._vt.feed_str(self._decoder.decode(data))

    def resize(self, cols: int, rows: int) -> None:
        self._vt.resize(cols, rows)
        self._rows = rows

    def lines(self) -> list[str]:
        return [line.text.rstrip() for line in self._vt.view()]

    def history(self) -> list[str]:
        every = self._vt.lines()
        return [line.text.rstrip() for line in every[: max(0, len(every) - self._rows)]]

    def has_scroll_region(self) -> bool:
        # avt's dump holds DECSTBM exactly when margins narrower than the screen are set.
        return _DECSTBM.search(self._vt.dump()) is not None

    def cursor(self) -> Cursor:
        c = self._vt.cursor
        return Cursor(row=c.row, col=c.col, visible=c.visible)

    def ansi(self) -> str:
        # avt writes 8-bit CSI (U+009B); UTF-8 terminals want the 7-bit ESC [ form.
        body = self._vt.dump().replace("\x9b", "\x1b[")
        keys = "\x1b[?1h" if self._vt.cursor_key_app_mode else "\x1b[?1l"
        return _RESET + body + keys


@hookimpl(trylast=True)
def tachi_create_screen(cols: int, rows: int, history: int) -> AvtScreen:
    return AvtScreen(cols, rows, history)
