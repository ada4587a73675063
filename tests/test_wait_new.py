"""Waiting for what is new: ``wait --new`` / ``--since POS`` never match text
already on the screen (the stale-match trap), and expect-style waits on several
patterns say which one matched, the text before it, or EOF/timeout."""

from __future__ import annotations

import json
import time

import pytest

from helpers import shell_session
from tachi.core.patterns import compile_pattern
from tachi.daemon.run_ops import WAIT_LOOKBACK, WaitText
from tachi.errors import InvalidRequest, TimedOut

T = 20


def test_new_output_only_text_already_on_the_screen_does_not_match(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        client.run(sid, "echo READY", timeout=T)
        # The stale match: READY is on the screen already.
        assert client.wait(sid, match="READY", timeout=T)["matched"] == "READY"
        with pytest.raises(TimedOut):
            client.wait(sid, match="READY", new=True, timeout=0.5)
        client.send(sid, "sleep 0.3; echo RE''ADY again\n")
        got = client.wait(sid, match="READY", new=True, timeout=T)
        assert got["matched"] == "READY" and got["outcome"] == "match"


def test_since_a_position_sees_output_made_before_the_call(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        first = client.expect(sid, ["my-prompt"], timeout=0.2)  # only to learn the position
        mark = first.position
        assert isinstance(mark, int)
        client.run(sid, "echo one-two-three", timeout=T)
        # The output came before this call, but after the position: it counts.
        got = client.wait(sid, match=r"two-\w+", since=mark, timeout=T)
        assert got["matched"] == "two-three"
        # From the position after it, the same text is old.
        later = client.expect(sid, [r"two-\w+"], since=got["position"], timeout=0.5)
        assert later.outcome == "timeout"


def test_expect_on_several_patterns_returns_which_matched_and_the_text_before(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        client.send(sid, "sleep 0.3; echo pre; echo 'warn''ing: disk'; echo 'err''or: full'\n")
        got = client.expect(sid, ["error: (\\w+)", "warning: (\\w+)"], timeout=T)
        # The earliest match in the output wins, whatever the pattern order.
        assert (got.outcome, got.index, got.match) == ("match", 1, "warning: disk")
        assert got.before.endswith("pre\n")
        assert client.expect(sid, ["nothing-like-this"], timeout=0.3).outcome == "timeout"
        client.send(sid, "exit 0\n")
        assert client.expect(sid, ["nothing-like-this"], timeout=T).outcome == "eof"


def test_patterns_run_in_linear_time_and_bad_ones_are_refused(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        with pytest.raises(InvalidRequest, match="lookahead"):
            client.expect(sid, ["ok", "(?=x)"], timeout=1)
        client.send(sid, "printf 'a%.0s' $(seq 1 30000); echo\n")
        started = time.monotonic()
        got = client.expect(sid, ["(?:[\\s\\S]+)+Q", "(a+)+$"], timeout=10)
        assert got.outcome in ("match", "timeout")
        assert time.monotonic() - started < 10 + 5


def test_session_conn_expect_keeps_what_follows_a_match(tachi_daemon):
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client, client.attach(sid) as conn:
        conn.write(b"echo alpha; echo beta; echo gamma\n")
        first = conn.expect(["^beta", "^alpha"], timeout=T)
        assert (first.outcome, first.index, first.match) == ("match", 1, "alpha")
        second = conn.expect(["^gamma", "^beta"], timeout=T)
        # beta came before gamma: the earliest match, and alpha was consumed.
        assert (second.index, second.match) == (1, "beta")
        assert "alpha" not in second.before
        assert conn.expect(["never"], timeout=0.3).outcome == "timeout"


def test_cli_wait_new_since_and_several_matches(tachi_daemon):
    sid = shell_session(tachi_daemon)
    tachi_daemon.run("run", sid, "--", "echo SEEN", check=True)
    stale = tachi_daemon.run("wait", sid, "--match", "SEEN", "--new", "--timeout", "0.5")
    assert stale.returncode == 124
    tachi_daemon.run("send", sid, "sleep 0.5; echo B-two; echo A-one\n", check=True)
    got = tachi_daemon.run(
        "wait",
        sid,
        "--match",
        "A-\\w+",
        "--match",
        "B-\\w+",
        "--new",
        "--json",
        "--timeout",
        str(T),
    )
    assert got.returncode == 0, got.stderr
    result = json.loads(got.stdout)
    assert (result["index"], result["matched"]) == (1, "B-two")
    since = tachi_daemon.run(
        "wait", sid, "--match", "A-one", "--since", str(result["position"] - 200), "--timeout", "5"
    )
    assert (since.returncode, since.stdout) == (0, "A-one\n")


# -- the text a wait searches: each chunk once, not all it saw for every chunk --------
def _wait_text(*patterns: str) -> WaitText:
    return WaitText([compile_pattern(p) for p in patterns])


def test_a_wait_searches_a_flood_once_not_once_per_read():
    """A wait for text that never comes, while 8 MiB arrive in 4 KiB reads,
    searches each read once with the lookback before it (the whole text it
    held, up to 1 MiB, for every read before: quadratic in the flood)."""
    text = _wait_text("never-printed")
    chunk = "x" * 4095 + "\n"
    for _ in range(2048):
        assert text.add(chunk) is None
    flood = 2048 * len(chunk)
    assert text.searched <= flood + 2048 * WAIT_LOOKBACK
    assert len(text.text) <= 1 << 20  # and it holds a bounded tail


def test_a_match_across_reads_is_found_with_what_came_before_it():
    text = _wait_text(r"^ready (\d+)", "error")
    assert text.add("booting\nxready 1\nrea") is None  # `^` holds at a read's start too
    found = text.add("dy 42\n")
    assert found is not None
    index, match, offset = found
    assert (index, match.group(0)) == (0, "ready 42")
    assert text.text[: offset + match.start()] == "booting\nxready 1\n"


def test_the_earliest_match_wins_then_the_first_pattern():
    text = _wait_text("b+", "a", "ab")
    index, match, _ = text.add("xxab") or (None, None, None)
    assert (index, match.group(0)) == (1, "a")


def test_output_a_character_at_a_time_is_not_held_in_a_piece_each():
    """A program that prints one character per write gives the wait a read of
    each: 200,000 of them must not become 200,000 strings held and walked."""
    text = _wait_text("never-printed")
    for _ in range(200_000):
        assert text.add("y") is None
    assert len(text._chunks) <= 64
    assert text.text == "y" * 200_000
