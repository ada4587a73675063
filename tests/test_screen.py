"""The server-side screen: alternate screen handling, and the plain-text shortcut is exact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tachi.builtins.avt_screen import AvtScreen
from tachi.core.screen import LazyScreen, plain_tail


def _lazy(cols=40, rows=6):
    return LazyScreen(AvtScreen(cols, rows), cols, rows)


def test_alternate_screen_is_left_cleanly():
    s = _lazy()
    s.feed(b"shell-line\r\n\x1b[?1049h\x1b[HVIM-SCREEN")
    assert s.lines()[0] == "VIM-SCREEN"
    s.feed(b"\x1b[?1049l")
    assert s.lines()[0] == "shell-line" and "VIM-SCREEN" not in s.text()


def test_snapshot_redraws_the_same_screen_on_a_fresh_terminal():
    s = _lazy()
    s.feed("\x1b[1;31mred\x1b[0m plain\r\n\x1b[44mblue-bg\x1b[0m é\r\nthird".encode())
    copy = _lazy()
    copy.feed(s.ansi().encode())
    assert copy.lines() == s.lines() and copy.cursor() == s.cursor()


def test_plain_tail_keeps_only_what_stays_visible():
    data = b"".join(b"line-%d\r\n" % i for i in range(1000))
    tail = plain_tail(data, rows=24)
    assert len(tail) < 1000 and tail.endswith(b"line-999\r\n")
    assert plain_tail(b"\x1b[31m" + data, rows=24) == b"\x1b[31m" + data  # escapes: no shortcut


text_line = st.text(st.sampled_from("abcdefghij é€ \t"), max_size=70)
prefix = st.sampled_from(
    ["", "\x1b[31m", "\x1b[?1049h", "\x1b[5;5H", "\x1b[1;44m\x1b[2J", "\x1b[4h",
     # Scroll regions, set with a 7- or 8-bit CSI, reset, or on the alternate screen.
     "\x1b[2;4r", "\u009b2;4r", "\x1b[2;4r\x1b[r", "\x1b[2;4r\x1b[?1049h", "\x1b[?1049h\x1b[1;3r"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    prefix,
    st.lists(text_line, min_size=0, max_size=120),
    st.sampled_from(["\r\n", "\n", "\r\n\r\n"]),
    st.integers(1, 50),
)
def test_plain_text_shortcut_gives_the_same_screen_as_feeding_everything(pre, lines, sep, chunk):
    rows, cols = 5, 30
    text = sep.join(lines).encode()
    full = AvtScreen(cols, rows)
    full.feed(pre.encode() + text)
    lazy = LazyScreen(AvtScreen(cols, rows), cols, rows)
    lazy.feed(pre.encode())
    lazy.catch_up()  # the state the prefix set up is in the emulator; the text batch follows
    for i in range(0, len(text), chunk * 40):
        lazy.feed(text[i : i + chunk * 40])
    assert lazy.lines() == full.lines()
    assert lazy.cursor() == full.cursor()
    if len(lines) > 40 and sep != "\n":
        assert lazy.skipped_bytes > 0  # the shortcut really ran


class ScanningScreen(AvtScreen):
    """An emulator that cannot tell its scroll region: LazyScreen scans for it."""

    has_scroll_region = None  # type: ignore[assignment]


@pytest.mark.parametrize("screen", [AvtScreen, ScanningScreen])
@pytest.mark.parametrize("region", [b"\x1b[2;4r", "\u009b2;4r".encode()])
def test_scroll_region_disables_the_shortcut_until_it_is_reset(screen, region):
    s = LazyScreen(screen(40, 6), 40, 6)
    body = b"".join(b"row-%d\r\n" % i for i in range(500))
    s.feed(region)
    s.catch_up()
    s.feed(body)
    s.catch_up()
    assert s.skipped_bytes == 0
    full = AvtScreen(40, 6)
    full.feed(region + body)
    assert s.lines() == full.lines()
    s.feed(b"\x1b[r")  # back to whole-screen scrolling: the shortcut is exact again
    s.catch_up()
    s.feed(body)
    full.feed(b"\x1b[r" + body)
    assert s.lines() == full.lines() and s.skipped_bytes > 0


def test_a_redraw_flood_is_not_scanned_for_scroll_regions():
    asked: list[int] = []

    class Probed(AvtScreen):
        def has_scroll_region(self) -> bool:
            asked.append(1)
            return super().has_scroll_region()

    s = LazyScreen(Probed(200, 50), 200, 50)
    frame = b"".join(b"\x1b[%d;1H\x1b[3%dm" % (r + 1, r % 8) + b"y" * 199 for r in range(50))
    for _ in range(100):
        s.feed(b"\x1b[H" + frame)
    s.catch_up()
    assert s.parsed_bytes > 0 and asked == []  # parsed, never asked
    flood = b"".join(b"row-%d\r\n" % i for i in range(100_000))
    for i in range(0, len(flood), 4095):  # plain: cut, after asking once
        s.feed(flood[i : i + 4095])
    assert len(asked) == 1 and s.skipped_bytes > 0


@settings(max_examples=150, deadline=None)
@given(
    prefix,
    st.lists(text_line, min_size=0, max_size=30),
    st.text(st.sampled_from("abcxyz0123 -+/="), min_size=0, max_size=3000),
    st.integers(0, 29),
    st.integers(0, 40),
    st.integers(1, 50),
)
def test_long_lines_and_history_give_the_same_screen_as_feeding_everything(
    pre, lines, long_line, indent, history, chunk
):
    # A long last line (base64 -w 0) starting at any column, with scrollback kept.
    rows, cols = 5, 30
    text = ("\r\n".join(lines) + "\r\n" + " " * indent + long_line).encode()
    full = AvtScreen(cols, rows, history)
    full.feed(pre.encode() + text)
    lazy = LazyScreen(AvtScreen(cols, rows, history), cols, rows, history)
    lazy.feed(pre.encode())
    lazy.catch_up()
    for i in range(0, len(text), chunk * 40):
        lazy.feed(text[i : i + chunk * 40])
    assert lazy.lines() == full.lines()
    assert lazy.cursor() == full.cursor()
    assert lazy.history() == full.history()


def test_a_long_line_costs_only_its_last_rows():
    s = LazyScreen(AvtScreen(80, 24), 80, 24)
    line = b"A" * 1_000_003
    s.feed(line)
    s.catch_up()
    assert s.skipped_bytes > 990_000
    full = AvtScreen(80, 24)
    full.feed(line)
    assert s.lines() == full.lines() and s.cursor() == full.cursor()


wrapped_line = st.text(st.sampled_from("abcdefghij é€ \t"), max_size=100)  # up to 3+ rows at 30


suffix = st.sampled_from(
    [
        "",
        "\x1b[3A\x1b[2Kup",
        "\x1b[H\x1b[2J",
        "\x1b[?1049hALT",
        "\x1b[31mred\x1b[0m\r\nmore",
        "\x1bM",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    prefix,
    st.lists(wrapped_line, min_size=0, max_size=150),
    st.sampled_from(["\r\n", "\n", "\r\n\r\n"]),
    suffix,
    st.integers(0, 12),
    st.integers(1, 400),
    st.integers(64, 2000),
)
def test_compacting_pending_output_gives_the_same_screen_and_history(
    pre, lines, sep, post, history, chunk, catch_up
):
    # A catch-up size of a few hundred bytes makes the lazy screen cut its
    # pending output many times over (with wrapped lines, bare LFs, history,
    # escape sequences after the text), each time without parsing; the result
    # must be what feeding it all gives.
    rows, cols = 5, 30
    text = (sep.join(lines) + post).encode()
    full = AvtScreen(cols, rows, history)
    full.feed(pre.encode() + text)
    lazy = LazyScreen(AvtScreen(cols, rows, history), cols, rows, history, catch_up_bytes=catch_up)
    lazy.feed(pre.encode())
    lazy.catch_up()
    for i in range(0, len(text), chunk):
        lazy.feed(text[i : i + chunk])
    assert lazy.lines() == full.lines()
    assert lazy.cursor() == full.cursor()
    assert lazy.history() == full.history()


def test_a_plain_flood_is_not_parsed_until_someone_looks():
    rows, cols, history = 50, 200, 2000
    lazy = LazyScreen(AvtScreen(cols, rows, history), cols, rows, history)
    full = AvtScreen(cols, rows, history)
    flood = b"".join(b"%08d " % i + b"x" * 70 + b"\r\n" for i in range(150_000))  # ~12 MB
    for i in range(0, len(flood), 4095):
        lazy.feed(flood[i : i + 4095])
    full.feed(flood)
    assert lazy.parsed_bytes == 0
    assert lazy.lines() == full.lines() and lazy.history() == full.history()
    # Looking costs about the screen plus history, not the flood.
    assert lazy.parsed_bytes < 2 * (rows + history + 1) * 81


def test_c1_controls_are_not_plain_text():
    # U+009B is CSI to the emulator: text holding it must be parsed, not cut.
    data = b"".join(b"line-%d\r\n" % i for i in range(1000)) + "\u009b2J".encode()
    assert plain_tail(data, rows=24) == data


def test_output_with_escapes_is_parsed_in_small_batches_and_plain_text_is_not():
    # A redraw flood cannot be cut: it is fed to the emulator in batches of
    # ESCAPED_CATCH_UP_BYTES (a millisecond or so each), never the whole
    # catch-up size at once; once plain text follows, it piles up unparsed again.
    from tachi.core.screen import ESCAPED_CATCH_UP_BYTES

    rows, cols, history = 50, 200, 2000
    fed: list[int] = []

    class Counting(AvtScreen):
        def feed(self, data: bytes) -> None:
            fed.append(len(data))
            super().feed(data)

    lazy = LazyScreen(Counting(cols, rows, history), cols, rows, history)
    frame = b"".join(b"\x1b[%d;1H\x1b[3%dm" % (r + 1, r % 8) + b"y" * 199 for r in range(rows))
    for _ in range(200):  # ~2 MB
        lazy.feed(frame)
    assert fed and max(fed) < ESCAPED_CATCH_UP_BYTES + len(frame)
    fed.clear()
    plain = b"".join(b"%08d " % i + b"x" * 70 + b"\r\n" for i in range(60_000))
    for i in range(0, len(plain), 4095):
        lazy.feed(plain[i : i + 4095])
    assert sum(fed) < 2 * ESCAPED_CATCH_UP_BYTES  # at most the switch-over batch
    full = AvtScreen(cols, rows, history)
    full.feed(frame * 200 + plain)
    assert lazy.lines() == full.lines() and lazy.history() == full.history()
