"""What every terminal emulator behind ``tachi_create_screen`` must get right.

A test class to subclass, for the built-in screen and for plugins alike::

    from tachi.screen_contract import ScreenContract

    class TestMyScreen(ScreenContract):
        make = staticmethod(MyScreen)   # (cols, rows, history) -> Screen

The checks drive the emulator through ``tachi.core.screen.LazyScreen``, as the
daemon does: its shortcuts (plain text cut without parsing, long lines cut to
their last rows, escape-laden output parsed in small batches) must leave the
same screen, cursor and history as feeding the emulator everything, and a
redraw (``ansi()``) must rebuild the same screen on a fresh terminal. Needs
pytest and hypothesis (tachi's ``test`` extra).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tachi.core.screen import ESCAPED_CATCH_UP_BYTES, LazyScreen, Screen

# One method runs for every subclass: that is the point, not a mistake.
_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.differing_executors]}

text_line = st.text(st.sampled_from("abcdefghij é€ \t"), max_size=70)
wrapped_line = st.text(st.sampled_from("abcdefghij é€ \t"), max_size=100)  # 3+ rows at 30
prefix = st.sampled_from(
    ["", "\x1b[31m", "\x1b[?1049h", "\x1b[5;5H", "\x1b[1;44m\x1b[2J", "\x1b[4h",
     # Scroll regions, set with a 7- or 8-bit CSI, reset, or on the alternate screen.
     "\x1b[2;4r", "\u009b2;4r", "\x1b[2;4r\x1b[r", "\x1b[2;4r\x1b[?1049h", "\x1b[?1049h\x1b[1;3r"]
)  # fmt: skip
suffix = st.sampled_from(
    ["", "\x1b[3A\x1b[2Kup", "\x1b[H\x1b[2J", "\x1b[?1049hALT", "\x1b[31mred\x1b[0m\r\nmore",
     "\x1bM"]
)  # fmt: skip
# DECSTBM with a 7-bit CSI, and with U+009B, the 8-bit CSI in UTF-8 (which avt
# obeys and Ghostty, like most terminals in UTF-8 mode, does not).
_REGIONS = [b"\x1b[2;4r", "\u009b2;4r".encode()]


class Spy:
    """A screen that counts what it is fed and how often it is asked for its
    scroll region, passing everything on to the emulator under test."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self.fed: list[int] = []
        self.asked = 0
        if getattr(screen, "has_scroll_region", None) is None:
            self.has_scroll_region = None  # as optional as in the emulator

    def feed(self, data: bytes) -> None:
        self.fed.append(len(data))
        self.screen.feed(data)

    def has_scroll_region(self) -> bool:
        self.asked += 1
        return self.screen.has_scroll_region()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.screen, name)


def _redraw_frame(rows: int, cols: int) -> bytes:
    row = b"y" * (cols - 1)
    return b"".join(b"\x1b[%d;1H\x1b[3%dm" % (r + 1, r % 8) + row for r in range(rows))


class ScreenContract:
    """Subclass with ``make = staticmethod(factory)``; pytest collects the checks."""

    make: ClassVar[Any]

    def lazy(self, cols: int = 40, rows: int = 6, history: int = 0, **kw: Any) -> LazyScreen:
        return LazyScreen(self.make(cols, rows, history), cols, rows, history, **kw)

    # -- the screen itself ------------------------------------------------

    def test_alternate_screen_is_left_cleanly(self) -> None:
        s = self.lazy()
        s.feed(b"shell-line\r\n\x1b[?1049h\x1b[HVIM-SCREEN")
        assert s.lines()[0] == "VIM-SCREEN"
        s.feed(b"\x1b[?1049l")
        assert s.lines()[0] == "shell-line" and "VIM-SCREEN" not in s.text()

    def test_redraw_gives_the_same_screen_on_a_fresh_terminal(self) -> None:
        s = self.lazy()
        s.feed("\x1b[1;31mred\x1b[0m plain\r\n\x1b[44mblue-bg\x1b[0m é\r\nthird".encode())
        copy = self.lazy()
        copy.feed(s.ansi().encode())
        assert copy.lines() == s.lines() and copy.cursor() == s.cursor()

    def test_redraw_of_the_alternate_screen_keeps_the_primary_screen_behind_it(self) -> None:
        # Attach while vim runs: when vim exits, the client's terminal must show
        # the shell again, as the session's screen does.
        s = self.lazy()
        s.feed(b"$ ls\r\nfile-a file-b\r\n$ vim\r\n\x1b[?1049h\x1b[H~\r\n~\x1b[1;1H")
        copy = self.lazy()
        copy.feed(s.ansi().encode())
        assert copy.lines() == s.lines() and copy.cursor() == s.cursor()
        for screen in (s, copy):
            screen.feed(b"\x1b[?1049l")
        assert copy.lines() == s.lines() and s.lines()[1] == "file-a file-b"
        assert copy.cursor() == s.cursor()

    def test_split_utf8_and_escape_sequences_carry_over_between_feeds(self) -> None:
        data = "\x1b[1;31mé€ ok\x1b[0m\r\n\x1b[2;3Hmoved\x1b]0;title\x07 done".encode()
        whole = self.make(30, 5, 0)
        whole.feed(data)
        bytewise = self.make(30, 5, 0)
        for i in range(len(data)):
            bytewise.feed(data[i : i + 1])
        assert bytewise.lines() == whole.lines() and bytewise.cursor() == whole.cursor()
        assert whole.lines()[0] == "é€ ok"

    def test_history_is_the_newest_lines_up_to_its_limit(self) -> None:
        s = self.make(20, 4, 7)
        s.feed(b"".join(b"line-%d\r\n" % i for i in range(300)))
        assert s.history() == [f"line-{i}" for i in range(290, 297)]
        assert s.lines() == ["line-297", "line-298", "line-299", ""]

    @pytest.mark.parametrize("cols", [20, 80, 200])
    def test_a_long_flood_keeps_exactly_the_history_asked_for(self, cols: int) -> None:
        s = self.make(cols, 50, 2000)
        s.feed(b"".join(b"line-%d\r\n" % i for i in range(30_000)))
        assert s.history() == [f"line-{i}" for i in range(27_951, 29_951)]
        s.resize(cols + 7, 50)  # other page sizes: still the whole limit kept
        s.feed(b"".join(b"more-%d\r\n" % i for i in range(30_000)))
        assert s.history()[-1] == "more-29950" and len(s.history()) == 2000

    def test_the_emulator_tells_its_scroll_region(self) -> None:
        s = self.make(40, 6, 0)
        if getattr(s, "has_scroll_region", None) is None:
            pytest.skip(f"{type(s).__name__} has no has_scroll_region (optional)")
        assert not s.has_scroll_region()
        s.feed(b"\x1b[2;4r")
        assert s.has_scroll_region()
        s.feed(b"\x1b[r")
        assert not s.has_scroll_region()
        s.feed(b"\x1b[1;6r")  # the whole screen: no region
        assert not s.has_scroll_region()

    def _obeys(self, region: bytes) -> bool:
        """Whether this emulator sets a scroll region on ``region`` (by its own
        probe; one without a probe is taken to obey every form)."""
        probe = self.make(40, 6, 0)
        if getattr(probe, "has_scroll_region", None) is None:
            return True
        probe.feed(region)
        return probe.has_scroll_region()

    # -- the lazy screen's shortcuts, on this emulator --------------------

    @settings(max_examples=150, **_SETTINGS)
    @given(
        prefix,
        st.lists(text_line, min_size=0, max_size=120),
        st.sampled_from(["\r\n", "\n", "\r\n\r\n"]),
        st.integers(1, 50),
    )
    def test_plain_text_shortcut_gives_the_same_screen_as_feeding_everything(
        self, pre: str, lines: list[str], sep: str, chunk: int
    ) -> None:
        rows, cols = 5, 30
        text = sep.join(lines).encode()
        full = self.make(cols, rows, 0)
        full.feed(pre.encode() + text)
        lazy = self.lazy(cols, rows)
        lazy.feed(pre.encode())
        lazy.catch_up()  # the state the prefix set up is in the emulator; the text follows
        for i in range(0, len(text), chunk * 40):
            lazy.feed(text[i : i + chunk * 40])
        assert lazy.lines() == full.lines()
        assert lazy.cursor() == full.cursor()
        if len(lines) > 40 and sep != "\n":
            assert lazy.skipped_bytes > 0  # the shortcut really ran

    @pytest.mark.parametrize("region", _REGIONS)
    def test_scroll_region_disables_the_shortcut_until_it_is_reset(self, region: bytes) -> None:
        s = self.lazy(40, 6)
        body = b"".join(b"row-%d\r\n" % i for i in range(500))
        s.feed(region)
        s.catch_up()
        s.feed(body)
        s.catch_up()
        if self._obeys(region):
            assert s.skipped_bytes == 0
        full = self.make(40, 6, 0)
        full.feed(region + body)
        assert s.lines() == full.lines()
        s.feed(b"\x1b[r")  # back to whole-screen scrolling: the shortcut is exact again
        s.catch_up()
        s.feed(body)
        full.feed(b"\x1b[r" + body)
        assert s.lines() == full.lines() and s.skipped_bytes > 0

    @settings(max_examples=150, **_SETTINGS)
    @given(
        prefix,
        st.lists(text_line, min_size=0, max_size=30),
        st.text(st.sampled_from("abcxyz0123 -+/="), min_size=0, max_size=3000),
        st.integers(0, 29),
        st.integers(0, 40),
        st.integers(1, 50),
    )
    def test_long_lines_and_history_give_the_same_screen_as_feeding_everything(
        self, pre: str, lines: list[str], long_line: str, indent: int, history: int, chunk: int
    ) -> None:
        # A long last line (base64 -w 0) starting at any column, with scrollback kept.
        rows, cols = 5, 30
        text = ("\r\n".join(lines) + "\r\n" + " " * indent + long_line).encode()
        full = self.make(cols, rows, history)
        full.feed(pre.encode() + text)
        lazy = self.lazy(cols, rows, history)
        lazy.feed(pre.encode())
        lazy.catch_up()
        for i in range(0, len(text), chunk * 40):
            lazy.feed(text[i : i + chunk * 40])
        assert lazy.lines() == full.lines()
        assert lazy.cursor() == full.cursor()
        assert lazy.history() == full.history()

    def test_a_long_line_costs_only_its_last_rows(self) -> None:
        s = self.lazy(80, 24)
        line = b"A" * 1_000_003
        s.feed(line)
        s.catch_up()
        assert s.skipped_bytes > 990_000
        full = self.make(80, 24, 0)
        full.feed(line)
        assert s.lines() == full.lines() and s.cursor() == full.cursor()

    @settings(max_examples=200, **_SETTINGS)
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
        self,
        pre: str,
        lines: list[str],
        sep: str,
        post: str,
        history: int,
        chunk: int,
        catch_up: int,
    ) -> None:
        # A catch-up size of a few hundred bytes makes the lazy screen cut its
        # pending output many times over (wrapped lines, bare LFs, history,
        # escape sequences after the text), each time without parsing; the
        # result must be what feeding it all gives.
        rows, cols = 5, 30
        text = (sep.join(lines) + post).encode()
        full = self.make(cols, rows, history)
        full.feed(pre.encode() + text)
        lazy = self.lazy(cols, rows, history, catch_up_bytes=catch_up)
        lazy.feed(pre.encode())
        lazy.catch_up()
        for i in range(0, len(text), chunk):
            lazy.feed(text[i : i + chunk])
        assert lazy.lines() == full.lines()
        assert lazy.cursor() == full.cursor()
        assert lazy.history() == full.history()

    def test_a_plain_flood_is_not_parsed_until_someone_looks(self) -> None:
        rows, cols, history = 50, 200, 2000
        lazy = self.lazy(cols, rows, history)
        full = self.make(cols, rows, history)
        flood = b"".join(b"%08d " % i + b"x" * 70 + b"\r\n" for i in range(150_000))  # ~12 MB
        for i in range(0, len(flood), 4095):
            lazy.feed(flood[i : i + 4095])
        full.feed(flood)
        assert lazy.parsed_bytes == 0
        assert lazy.lines() == full.lines() and lazy.history() == full.history()
        # Looking costs about the screen plus history, not the flood.
        assert lazy.parsed_bytes < 2 * (rows + history + 1) * 81

    def test_output_with_escapes_is_parsed_in_small_batches_and_plain_text_is_not(self) -> None:
        # A redraw flood cannot be cut: it is fed to the emulator in batches of
        # ESCAPED_CATCH_UP_BYTES, never the whole catch-up size at once; once
        # plain text follows, it piles up unparsed again.
        rows, cols, history = 50, 200, 2000
        spy = Spy(self.make(cols, rows, history))
        lazy = LazyScreen(spy, cols, rows, history)
        frame = _redraw_frame(rows, cols)
        for _ in range(200):  # ~2 MB
            lazy.feed(frame)
        assert spy.fed and max(spy.fed) < ESCAPED_CATCH_UP_BYTES + len(frame)
        spy.fed.clear()
        plain = b"".join(b"%08d " % i + b"x" * 70 + b"\r\n" for i in range(60_000))
        for i in range(0, len(plain), 4095):
            lazy.feed(plain[i : i + 4095])
        assert sum(spy.fed) < 2 * ESCAPED_CATCH_UP_BYTES  # at most the switch-over batch
        full = self.make(cols, rows, history)
        full.feed(frame * 200 + plain)
        assert lazy.lines() == full.lines() and lazy.history() == full.history()

    def test_a_redraw_flood_is_not_scanned_for_scroll_regions(self) -> None:
        spy = Spy(self.make(200, 50, 0))
        if getattr(spy.screen, "has_scroll_region", None) is None:
            pytest.skip(f"{type(spy.screen).__name__} has no has_scroll_region (optional)")
        s = LazyScreen(spy, 200, 50)
        frame = _redraw_frame(50, 200)
        for _ in range(100):
            s.feed(b"\x1b[H" + frame)
        s.catch_up()
        assert s.parsed_bytes > 0 and spy.asked == 0  # parsed, never asked
        flood = b"".join(b"row-%d\r\n" % i for i in range(100_000))
        for i in range(0, len(flood), 4095):  # plain: cut, after asking once
            s.feed(flood[i : i + 4095])
        assert spy.asked == 1 and s.skipped_bytes > 0
