"""libghostty-vt against the screen contract every tachi emulator must meet."""

from __future__ import annotations

from tachi_ghostty import GhosttyScreen

from tachi.screen_contract import ScreenContract


class TestGhosttyScreen(ScreenContract):
    make = staticmethod(GhosttyScreen)

    def test_left_and_right_margins_count_as_a_scroll_region(self):
        # DECSLRM (with DECLRMM on) narrows scrolling to columns: the lazy
        # screen's whole-screen line-feed arithmetic would be wrong.
        s = GhosttyScreen(40, 6)
        s.feed(b"\x1b[?69h\x1b[5;20s")
        assert s.has_scroll_region()
        s.feed(b"\x1b[?69l")
        assert not s.has_scroll_region()
