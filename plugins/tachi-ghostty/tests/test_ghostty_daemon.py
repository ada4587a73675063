"""The plugin loaded by a real daemon through its entry point, seen through a
real ``tachi attach`` in a PTY."""

from __future__ import annotations

import json
import time

import pexpect

from tachi.builtins.avt_screen import AvtScreen
from tachi.testing import DaemonProcess

PREFIX = "\x1c"  # Ctrl-\, the attach prefix
PROGRAM = (
    "printf 'before-alt\\n'; printf '\\033[?1049h\\033[H\\033[31mALT-SCREEN\\033[0m'; "
    "read x; printf '\\033[?1049l'; echo after-alt; sleep 60"
)


def test_windows_get_the_ghostty_screen_and_attach_redraws_it(tachi_home):
    daemon = DaemonProcess(tachi_home, extra_env={"TACHI_LOAD_PLUGINS": "ghostty"})
    daemon.start()
    try:
        listed = json.loads(daemon.run("plugins", "--json", check=True).stdout)
        (plugin,) = [p for p in listed if p["distribution"] == "tachi-ghostty"]
        assert plugin["hooks"] == ["tachi_create_screen"] and not plugin["builtin"]

        s = daemon.new("sh", "-c", PROGRAM, cols="60", rows="10")
        waited = daemon.run("wait", s["id"], "--match", "ALT-SCREEN", "--timeout", "10")
        assert waited.returncode == 0, waited.stderr
        assert daemon.run("capture", s["id"], check=True).stdout.startswith("ALT-SCREEN")

        argv = daemon.tachi_argv("attach", s["id"])
        child = pexpect.spawn(argv[0], argv[1:], env=daemon.env, dimensions=(10, 60), timeout=15)
        seen = b""
        child.expect("ALT-SCREEN")
        seen += child.before + child.after
        child.send("\r")  # the program leaves the alternate screen
        child.expect("after-alt")
        seen += child.before + child.after
        time.sleep(0.2)
        child.send(PREFIX + "d")
        child.expect(pexpect.EOF)

        # What the user's terminal shows (an emulator fed what attach wrote):
        # the shell's line that was behind the alternate screen came back.
        terminal = AvtScreen(60, 10)
        terminal.feed(seen)
        assert terminal.lines()[:2] == ["before-alt", "after-alt"]
        assert daemon.run("capture", s["id"], check=True).stdout.startswith("before-alt\nafter-alt")
    finally:
        daemon.stop()
