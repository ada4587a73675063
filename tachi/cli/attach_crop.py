"""A session larger than the terminal, shown as a terminal-sized crop of it.

Written as it comes, a 153-column program's output wraps on a 50-column
terminal and the lines pile up. Instead, while the session is larger than the
terminal in either direction, attach keeps its own copy of the session's
screen (an avt emulator at the session's size, fed the ``screen`` snapshot and
every output chunk after it) and draws the part of it that fits, at the
terminal's top left. The crop follows the cursor as tmux does: it stays where
it is while the cursor is inside it and moves just enough to bring the cursor
back when it leaves (a shell prompt on the session's bottom row is shown with
the rows above it). Only the rows that changed since the last drawing are
written again.

Pure apart from the emulator: :meth:`CropView.render` returns bytes and writes
nothing.
"""

from __future__ import annotations

import codecs
import re

import avt

#: DECSET/DECRST of bracketed paste: forwarded to the terminal, so a paste into
#: a program that asked for it still arrives bracketed. Mouse reporting is not
#: forwarded: its coordinates would be the crop's, not the session's.
_PASTE_MODE = re.compile(rb"\x1b\[\?2004([hl])")


def crops(session_size: tuple[int, int] | None, term_size: tuple[int, ...]) -> bool:
    """Whether a session of ``session_size`` (rows, cols) is larger than the
    terminal in either direction, so that only a crop of it can be shown."""
    if session_size is None:
        return False
    return session_size[0] > term_size[0] or session_size[1] > term_size[1]


def view_size(session_size: tuple[int, int], term_size: tuple[int, ...]) -> tuple[int, int]:
    """The (rows, cols) of the session shown on the terminal: the smaller of each."""
    return min(session_size[0], term_size[0]), min(session_size[1], term_size[1])


def follow(
    offset: tuple[int, int],
    cursor: tuple[int, int],
    view: tuple[int, int],
    screen: tuple[int, int],
) -> tuple[int, int]:
    """The crop's new top-left (row, col) on a ``screen`` of (rows, cols): the
    ``offset`` it had if the ``cursor`` is inside the ``view`` there, else
    moved just far enough to bring it in, and never past the screen's edges."""
    rows, cols = screen
    vrows, vcols = view
    cy, cx = min(max(cursor[0], 0), rows - 1), min(max(cursor[1], 0), cols - 1)
    oy, ox = offset
    if cy < oy:
        oy = cy
    elif cy >= oy + vrows:
        oy = cy - vrows + 1
    if cx < ox:
        ox = cx
    elif cx >= ox + vcols:
        ox = cx - vcols + 1
    return max(0, min(oy, rows - vrows)), max(0, min(ox, cols - vcols))


def _color(color: object, base: int, bright: int, extended: int) -> str:
    if isinstance(color, avt.Color.RGB):
        return f";{extended};2;{color[0]};{color[1]};{color[2]}"  # type: ignore[index]
    n = int(color[0])  # type: ignore[index]
    if n < 8:
        return f";{base + n}"
    if n < 16:
        return f";{bright + n - 8}"
    return f";{extended};5;{n}"


def sgr(pen: avt.Pen) -> str:
    """The SGR sequence that sets exactly ``pen`` (from a reset)."""
    out = "\x1b[0"
    if pen.bold:
        out += ";1"
    if pen.faint:
        out += ";2"
    if pen.italic:
        out += ";3"
    if pen.underline:
        out += ";4"
    if pen.blink:
        out += ";5"
    if pen.inverse:
        out += ";7"
    if pen.strikethrough:
        out += ";9"
    if pen.foreground is not None:
        out += _color(pen.foreground, 30, 90, 38)
    if pen.background is not None:
        out += _color(pen.background, 40, 100, 48)
    return out + "m"


def render_row(cells: list[avt.Cell], start: int, width: int) -> str:
    """Cells ``start`` to ``start + width`` of a row, with their colours, as
    exactly ``width`` columns: half of a wide character cut by either edge of
    the crop shows as a space."""
    parts: list[str] = []
    pen = None
    end = min(start + width, len(cells))
    for i in range(start, end):
        cell = cells[i]
        char, cell_width = cell.char, cell.width
        if cell_width == 0:
            if i != start:
                continue  # the right half of the wide character just drawn
            char = " "  # the right half of one that starts left of the crop
        elif cell_width > 1 and i + cell_width > end:
            char = " "
        if pen is None or cell.pen != pen:
            pen = cell.pen
            parts.append(sgr(pen))
        parts.append(char)
    parts.append("\x1b[0m" + " " * (start + width - end))
    return "".join(parts)


class CropView:
    """The session's screen, kept here, and the crop of it last drawn.

    :meth:`reset` starts from a ``screen`` snapshot, :meth:`feed` applies the
    output after it, :meth:`render` returns what brings the terminal up to date.
    """

    def __init__(self, session_size: tuple[int, int], ansi: str) -> None:
        rows, cols = session_size
        self.session_size = session_size
        self._vt = avt.Vt(cols=cols, rows=rows, scrollback_limit=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._vt.feed_str(ansi)
        #: The crop's top-left (row, col) in the session's screen.
        self.offset = (0, 0)
        #: The rows drawn last, by row of the terminal; ``None`` forces a full drawing.
        self._drawn: list[str] | None = None
        self._drawn_for: tuple[int, int, int, int] | None = None
        self._app_keys: bool | None = None
        self._paste = b""

    def feed(self, data: bytes) -> None:
        """Apply session output (which may split characters and sequences)."""
        self._vt.feed_str(self._decoder.decode(data))
        if b"\x1b[?2004" in data:
            for m in _PASTE_MODE.finditer(data):
                self._paste = b"\x1b[?2004" + m.group(1)

    def invalidate(self) -> None:
        """Draw every row next time (something else was drawn over the crop)."""
        self._drawn = None

    def render(self, term_size: tuple[int, ...]) -> bytes:
        """What to write so the terminal shows the crop that holds the cursor:
        the rows that changed (all of them after :meth:`invalidate`, a move or
        a resize), then the cursor in its place, shown or hidden as the
        program has it."""
        vrows, vcols = view_size(self.session_size, term_size)
        cursor = self._vt.cursor
        self.offset = follow(
            self.offset, (cursor.row, cursor.col), (vrows, vcols), self.session_size
        )
        oy, ox = self.offset
        key = (oy, ox, vrows, vcols)
        if self._drawn is None or self._drawn_for != key:
            self._drawn = [""] * vrows
            self._drawn_for = key
        lines = self._vt.view()
        # Autowrap off while drawing: a row that ends in the terminal's last
        # column must not scroll it.
        out = ["\x1b[?25l\x1b[?7l"]
        for r in range(vrows):
            row = render_row(lines[oy + r].cells, ox, vcols)
            if row != self._drawn[r]:
                self._drawn[r] = row
                out.append(f"\x1b[{r + 1};1H{row}")
        out.append("\x1b[?7h")
        app_keys = bool(self._vt.cursor_key_app_mode)
        if app_keys != self._app_keys:
            self._app_keys = app_keys
            out.append("\x1b[?1h" if app_keys else "\x1b[?1l")
        if self._paste:
            out.append(self._paste.decode())
            self._paste = b""
        cy = min(max(cursor.row, 0), self.session_size[0] - 1) - oy
        cx = min(max(cursor.col, 0), self.session_size[1] - 1) - ox
        out.append(f"\x1b[{cy + 1};{cx + 1}H")
        if cursor.visible:
            out.append("\x1b[?25h")
        return "".join(out).encode()


def crop_hint(session_size: tuple[int, int], term_size: tuple[int, ...]) -> str:
    """The flash that says the terminal shows only part of the session."""
    rows, cols = view_size(session_size, term_size)
    return f"[cropped {cols}x{rows} of {session_size[1]}x{session_size[0]}]"
