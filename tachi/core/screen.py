"""The server-side terminal screen of a window.

A ``Screen`` is any terminal emulator behind a four-method interface (the
built-in is avt, asciinema's emulator; a plugin can supply another through
``tachi_create_screen``). ``LazyScreen`` keeps the emulator off the hot path:
output is forwarded to clients first and fed to the emulator in large batches,
only when someone needs the screen or enough has piled up.
"""

from __future__ import annotations

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

    def ansi(self) -> str:
        """Escape sequences that draw this screen (content, colours, cursor, alternate
        screen) on a terminal of the same size, starting from any state."""


#: Feed the emulator once this much output is pending, so memory stays bounded.
CATCH_UP_BYTES = 256 * 1024


class LazyScreen:
    """Wraps a ``Screen`` and defers feeding it until the screen is needed."""

    def __init__(self, screen: Screen, cols: int, rows: int) -> None:
        self._screen = screen
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.cols = cols
        self.rows = rows

    def feed(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= CATCH_UP_BYTES:
            self.catch_up()

    def catch_up(self) -> None:
        """Feed everything pending to the emulator, in one call."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._screen.feed(data)

    def resize(self, cols: int, rows: int) -> None:
        # Output produced before the resize was laid out at the old size.
        self.catch_up()
        self.cols, self.rows = cols, rows
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

    def ansi(self) -> str:
        self.catch_up()
        return self._screen.ansi()
