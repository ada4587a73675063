"""What ``tachi attach`` draws itself, as bytes for the terminal: the dots in
the part of a larger terminal the session does not use, the scroll region
that keeps output out of it, one-line flashes and the rename prompt on the
bottom row, and the reset sent on the way out.

Pure: every function returns what to write and writes nothing; sizes are
``(rows, cols)`` of the session and ``(rows, cols, xpixel, ypixel)`` of the
terminal, as :func:`tachi.cli.attach.terminal_size` reads them.
"""

from __future__ import annotations

from typing import Any

#: Sent on the way out: every mode a program may have set in the terminal, back
#: to its default (alternate screen, scroll region, cursor and keypad keys,
#: mouse reporting, focus events, bracketed paste, the kitty keyboard stack,
#: cursor visibility and shape, origin mode, autowrap, insert mode, charset, SGR).
RESTORE_TERMINAL = (
    b"\x1b[?1049l\x1b[r\x1b[?1l\x1b>"
    b"\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1005l\x1b[?1006l\x1b[?1015l"
    b"\x1b[?1004l\x1b[?2004l\x1b[<99u"
    b"\x1b[?25h\x1b[0 q\x1b[?6l\x1b[?7h\x1b[4l\x1b(B\x1b[0m"
)
#: What fills the part of a larger terminal that the session does not use.
UNUSED = "·"

TermSize = tuple[int, int, int, int]


def farewell(rows: int) -> bytes:
    """The terminal's modes reset, and the cursor on a fresh line below the
    ``rows`` it shows: what attach writes last."""
    return RESTORE_TERMINAL + f"\x1b[{rows};1H\r\n".encode()


def region(session_size: tuple[int, int] | None, term_size: TermSize) -> bytes:
    """Scrolling confined to the session's rows when the terminal has more
    (the whole terminal otherwise; nothing before the session's size is known)."""
    if session_size is None:
        return b""
    rows = term_size[0]
    srows = session_size[0]
    return f"\x1b[1;{srows}r".encode() if srows < rows else b"\x1b[r"


def leaves_unused(session_size: tuple[int, int] | None, term_size: TermSize) -> bool:
    """Whether the session leaves part of this terminal unused."""
    if session_size is None:
        return False
    rows, cols, _, _ = term_size
    return session_size[0] < rows or session_size[1] < cols


def unused_area(session_size: tuple[int, int] | None, term_size: TermSize) -> bytes | None:
    """Dots over the part of a larger terminal the session does not use, as
    tmux does, so nothing stale shows there; the cursor and attributes are
    saved and restored around them. ``None`` when nothing is unused."""
    if session_size is None:
        return None
    rows, cols, _, _ = term_size
    srows, scols = session_size
    if srows >= rows and scols >= cols:
        return None
    out = ["\x1b7\x1b[0;2m"]
    if scols < cols:
        for r in range(1, min(srows, rows) + 1):
            out.append(f"\x1b[{r};{scols + 1}H" + UNUSED * (cols - scols))
    for r in range(srows + 1, rows + 1):
        out.append(f"\x1b[{r};1H" + UNUSED * cols)
    out.append("\x1b[0m\x1b8")
    return "".join(out).encode()


def flash_line(text: str, term_size: TermSize) -> bytes:
    """``text`` on one line in reverse video on the bottom row (newlines made
    spaces, cut to fit), the cursor left where it was."""
    rows, cols, _, _ = term_size
    line = text.replace("\n", " ")[: max(cols - 1, 1)]
    return f"\x1b7\x1b[{rows};1H\x1b[0;7m{line}\x1b[K\x1b[0m\x1b8".encode()


def prompt_line(text: str, term_size: TermSize) -> bytes:
    """The rename prompt with ``text`` typed so far, on the bottom row (not cut)."""
    rows = term_size[0]
    text = "rename window: " + text
    return f"\x1b7\x1b[{rows};1H\x1b[0;7m{text}\x1b[K\x1b[0m\x1b8".encode()


def window_list(windows: list[dict[str, Any]]) -> str:
    """``window.list``'s result as one line: ``id:name``, the active one starred."""
    return " ".join(f"{w['id']}:{w['name']}{'*' if w['active'] else ''}" for w in windows)
