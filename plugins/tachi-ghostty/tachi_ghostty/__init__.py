"""tachi plugin: the server-side screen of every window, emulated by libghostty-vt.

Registered like the built-in avt screen, but not ``trylast``: installed and
loaded, it takes over ``tachi_create_screen`` for new windows.
"""

from __future__ import annotations

from tachi.hookspecs import hookimpl

try:
    from tachi_ghostty.screen import GhosttyScreen
except ImportError:  # no pyghostty wheel for this platform (it has Linux x86_64 and aarch64)
    GhosttyScreen = None  # type: ignore[assignment,misc]

__all__ = ["GhosttyScreen", "tachi_create_screen"]


@hookimpl
def tachi_create_screen(cols: int, rows: int, history: int) -> GhosttyScreen | None:
    # None leaves the window to the next emulator: the built-in avt.
    return GhosttyScreen(cols, rows, history) if GhosttyScreen is not None else None
