"""libghostty-vt against the screen contract every tachi emulator must meet."""

from __future__ import annotations

import subprocess
import sys

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


def test_the_redraw_writes_the_sixteen_colours_as_the_program_did():
    # The formatter writes palette colours as 38;5;N; a 16-colour terminal
    # (the Linux console, TERM=screen) only knows 30-37, 90-97 and their
    # backgrounds. 256-colour and truecolour stay as they were.
    s = GhosttyScreen(60, 3)
    s.feed(
        b"\x1b[1;31mred\x1b[0m \x1b[44mbg\x1b[0m \x1b[94mbright\x1b[0m "
        b"\x1b[38;5;200mx256\x1b[0m \x1b[38;2;38;5;1mtc\x1b[0m"
    )
    redraw = s.ansi()
    for expected in ("\x1b[31mred", "\x1b[44mbg", "\x1b[94mbright", "\x1b[38;5;200mx256"):
        assert expected in redraw
    assert "\x1b[38;2;38;5;1mtc" in redraw and "38;5;1m" not in redraw.replace("2;38;5;1m", "")


def test_without_pyghostty_the_plugin_leaves_windows_to_avt():
    # Where no pyghostty wheel exists (macOS, musl), the plugin still loads.
    code = (
        "import sys; sys.modules['pyghostty'] = None\n"  # import pyghostty now fails
        "import tachi_ghostty\n"
        "from tachi.plugins import make_plugin_manager\n"
        "assert tachi_ghostty.tachi_create_screen(cols=80, rows=24, history=0) is None\n"
        "pm = make_plugin_manager(load_entrypoints=False); pm.register(tachi_ghostty)\n"
        "print(type(pm.hook.tachi_create_screen(cols=80, rows=24, history=10)).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "AvtScreen"
