"""Pure functions: encodings, durations, key notation, frame decoding."""

from __future__ import annotations

import contextlib
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tachi import protocol
from tachi.cli.keys import decode_escapes, parse_key
from tachi.errors import ProtocolError
from tachi.gotime import format_rfc3339, parse_duration, parse_rfc3339
from tachi.models import CloseReason, PTYConfig, Session, SessionState, Window, field_mask


def test_rfc3339_is_gos_rfc3339nano():
    assert format_rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert format_rfc3339(1_700_000_000_100_000_000) == "2023-11-14T22:13:20.1Z"
    assert format_rfc3339(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


@given(st.integers(0, 4_000_000_000 * 10**9))
def test_rfc3339_round_trips(ns):
    assert parse_rfc3339(format_rfc3339(ns)) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("90s", 90 * 10**9),
        ("30m", 1800 * 10**9),
        ("8h", 8 * 3600 * 10**9),
        ("1h30m", 5400 * 10**9),
        ("0", 0),
        ("2.5", 2_500_000_000),
        ("500ms", 500_000_000),
    ],
)
def test_durations(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("bad", ["soon", "5x", "m5", "1h 30m", "-5s"])
def test_bad_durations_name_the_input(bad):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_keys_and_escapes():
    assert (
        parse_key("C-\\") == b"\x1c" and parse_key("C-b") == b"\x02" and parse_key("^A") == b"\x01"
    )
    assert decode_escapes(r"a\n\x03\e[1m\\e é") == "a\n\x03\x1b[1m\\e é"
    with pytest.raises(ValueError):
        parse_key("C-long")


@pytest.mark.parametrize("bad", [r"\q", r"a\x4", "end\\", r"\uD800", r"\U00110000", r"\z"])
def test_malformed_escapes_are_refused(bad):
    with pytest.raises(ValueError, match="unknown escape"):
        decode_escapes(bad)


def test_escapes_cover_c_and_unicode_forms():
    assert decode_escapes(r"\u20ac\U0001F600\t\r\a\0\'\"") == "\u20ac\U0001f600\t\r\a\0'\""


@given(
    st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.binary(max_size=300)), max_size=8),
    st.lists(st.integers(1, 50), min_size=1),
)
def test_frames_decode_the_same_whatever_the_split(frames, cuts):
    wire = b"".join(protocol.encode(c, p) for c, p in frames)
    decoder, out, pos, i = protocol.FrameDecoder(), [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        out += decoder.feed(wire[pos : pos + step])
        pos, i = pos + step, i + 1
    assert [(f.channel, f.payload) for f in out] == frames and decoder.pending == 0


@given(st.binary(max_size=64))
def test_decoder_raises_only_protocol_errors(data):
    with contextlib.suppress(ProtocolError):
        protocol.FrameDecoder(max_payload=1024).feed(data)


def test_models_give_python_times():
    import datetime as dt

    from tachi.models import Recording, Session, SessionState

    ns = 1_795_581_375_123_456_000
    s = Session(
        id="a", agentId="x", userId="u", state=SessionState.ACTIVE, pty=None,
        createdAt=ns, lastActivity=ns, idleTimeout=90_000_000_000,
    )  # fmt: skip
    assert s.created_at == dt.datetime(2026, 11, 25, 4, 36, 15, 123456, tzinfo=dt.UTC)
    assert s.idle_timeout == dt.timedelta(seconds=90) and s.closed_at is None
    rec = Recording(id="r", sessionId="a", startTime=ns, duration=1_500_000_000, size=0)
    assert rec.length == dt.timedelta(seconds=1.5) and rec.start_time == s.created_at


_NS = st.integers(min_value=1, max_value=4_000_000_000 * 10**9)


@given(
    pty=st.none() | st.builds(PTYConfig, rows=st.integers(1, 500), cols=st.integers(1, 1000)),
    closed=st.none() | _NS,
    reason=st.none() | st.sampled_from(list(CloseReason)),
    windows=st.integers(0, 3),
    created=_NS,
    picked=st.sets(st.sampled_from(["state", "pty", "pty.rows", "windows", "windows.pid",
                                    "windows.createdAt", "closedAt", "closeReason", "name"])),
)  # fmt: skip
def test_a_masked_session_is_the_full_json_cut_down(pty, closed, reason, windows, created, picked):
    s = Session(
        id="abcd1234", agentId="a", userId="u", state=SessionState.CLOSED, pty=pty,
        createdAt=created, lastActivity=created + 5, closedAt=closed, closeReason=reason,
        name="n", command=["sh"],
        windows=[Window(id=i, name=f"w{i}", active=i == 0, createdAt=created, pid=100 + i)
                 for i in range(windows)],
    )  # fmt: skip
    full = s.to_json()
    # Every field, whole: exactly the full JSON.
    assert s.to_json(field_mask(f.name for f in fields(Session))) == full
    masked = s.to_json(field_mask(picked))
    for key, value in masked.items():
        whole = full[key]
        if key == "pty" and "pty" not in picked:
            assert value == {"rows": whole["rows"]}
        elif key == "windows" and "windows" not in picked:
            kept = {p.split(".")[1] for p in picked if p.startswith("windows.")}
            assert value == [{k: w[k] for k in kept} for w in whole]
        else:
            assert value == whole, key
    expected = {"id"} | {p.split(".")[0] for p in picked} - ({"pty"} if pty is None else set())
    assert set(masked) == expected


@given(
    st.text(alphabet="ab", min_size=1, max_size=4).map(str.encode),
    st.lists(st.text(alphabet="ab", max_size=5).map(str.encode), max_size=20),
)
def test_read_until_finds_a_pattern_split_anywhere(pattern, chunks):
    # PatternWait searches only where a match could still start: after every
    # chunk it must agree with a search of everything read.
    from tachi.client.shared import PatternWait

    wait = PatternWait(pattern, 1.0)
    for chunk in chunks:
        wait.add(chunk)
        assert wait.found == (pattern in wait.seen)
        if wait.found:
            break
    assert bytes(wait.seen) == b"".join(chunks)[: len(wait.seen)]
