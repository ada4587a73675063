"""The server-side screen: the built-in avt emulator against the screen contract,
and the plain-text shortcut's own rules."""

from __future__ import annotations

import pytest

from tachi.builtins.avt_screen import AvtScreen
from tachi.core.screen import LazyScreen, plain_tail
from tachi.screen_contract import ScreenContract


class TestAvtScreen(ScreenContract):
    make = staticmethod(AvtScreen)


def test_plain_tail_keeps_only_what_stays_visible():
    data = b"".join(b"line-%d\r\n" % i for i in range(1000))
    tail = plain_tail(data, rows=24)
    assert len(tail) < 1000 and tail.endswith(b"line-999\r\n")
    assert plain_tail(b"\x1b[31m" + data, rows=24) == b"\x1b[31m" + data  # escapes: no shortcut


def test_c1_controls_are_not_plain_text():
    # U+009B is CSI to the emulator: text holding it must be parsed, not cut.
    data = b"".join(b"line-%d\r\n" % i for i in range(1000)) + "\u009b2J".encode()
    assert plain_tail(data, rows=24) == data


class ScanningScreen(AvtScreen):
    """An emulator that cannot tell its scroll region: LazyScreen scans for it."""

    has_scroll_region = None  # type: ignore[assignment]


@pytest.mark.parametrize("region", [b"\x1b[2;4r", "\u009b2;4r".encode()])
def test_without_a_probe_scroll_regions_are_found_by_scanning(region):
    s = LazyScreen(ScanningScreen(40, 6), 40, 6)
    body = b"".join(b"row-%d\r\n" % i for i in range(500))
    s.feed(region)
    s.catch_up()
    s.feed(body)
    s.catch_up()
    assert s.skipped_bytes == 0
    full = AvtScreen(40, 6)
    full.feed(region + body)
    assert s.lines() == full.lines()
    s.feed(b"\x1b[r")
    s.catch_up()
    s.feed(body)
    full.feed(b"\x1b[r" + body)
    assert s.lines() == full.lines() and s.skipped_bytes > 0
