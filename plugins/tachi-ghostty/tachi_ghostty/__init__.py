"""tachi plugin: the server-side screen of every window, emulated by libghostty-vt.

Registered like the built-in avt screen, but not ``trylast``: installed and
loaded, it takes over ``tachi_create_screen`` for new windows.
"""

from __future__ import annotations

from tachi.hookspecs import hookimpl
from tachi_ghostty.screen import GhosttyScreen

__all__ = ["GhosttyScreen", "tachi_create_screen"]


@hookimpl
def tachi_create_screen(cols: int, rows: int, history: int) -> GhosttyScreen:
    return GhosttyScreen(cols, rows, history)
