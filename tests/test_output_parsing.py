"""Parsing a program's output never raises, whatever the program prints: a
hostile OSC 133 mark is ignored or read as an unknown exit status, and every
consumer of the output (clients, subscribers, `tachi run`) still gets it."""

from __future__ import annotations

import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from tachi.core.command_marks import CommandMarks, command_output, exit_code

HUGE = "9" * 5000

# Pieces a hostile or broken program may print: marks with every kind of
# parameter (huge, non-ASCII digits, empty), cut-off marks, and plain bytes.
_piece = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda kind, param, end: b"\x1b]133;" + kind + param.encode("utf-8", "surrogatepass") + end,
        st.sampled_from([b"A", b"B", b"C", b"D", b"Z", b"", b"d"]),
        st.one_of(
            st.just(""),
            st.just(";" + HUGE),
            st.just(";-" + HUGE),
            st.just(";²"),
            st.just(";٣"),
            st.text(max_size=20).map(lambda t: ";" + t),
            st.integers().map(lambda n: f";{n}"),
        ),
        st.sampled_from([b"\x07", b"\x1b\\", b"", b"\x1b"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_piece, max_size=12), st.lists(st.integers(0, 64), max_size=6))
def test_command_marks_never_raise_on_any_output(pieces, cuts):
    """Any output, cut into chunks anywhere: feeding never raises, and the exit
    statuses reported are in the 32-bit range (JSON and ``int`` take them)."""
    data = b"".join(pieces)
    events: list[tuple[str, dict]] = []
    marks = CommandMarks(lambda kind, details: events.append((kind, details)))
    start = 0
    for cut in sorted(cuts):
        marks.feed(data[start : start + cut])
        start += cut
    marks.feed(data[start:])
    for _kind, details in events:
        code = details.get("exitCode", 0)
        assert -(2**31) <= code < 2**31
        json.dumps(details)
    command_output(data, None)
    command_output(data, "tachi-0")


@given(st.text())
def test_exit_code_is_total(text):
    code = exit_code(text)
    assert code == -1 or str(code) == text.lstrip("+") or int(text) == code


def test_hostile_exit_codes_read_as_unknown():
    assert exit_code(HUGE) == -1
    assert exit_code("-" + HUGE) == -1
    assert exit_code("²") == -1
    assert exit_code("99999999999") == -1
    assert exit_code("") == -1
    assert exit_code("3") == 3 and exit_code("-1") == -1 and exit_code("130") == 130


def test_a_session_printing_a_hostile_mark_keeps_every_consumer_fed(tachi_daemon):
    """A program prints an OSC 133 end mark with a 5,000-digit exit code:
    `tachi run` still gets its output and exit status, an output subscriber gets
    what follows the mark, any command end reported has a sane exit code, and
    the daemon logs no error."""
    from tachi.client.wire import WireConnection

    sid = tachi_daemon.new("sh")["id"]
    wire = WireConnection(tachi_daemon.socket, autostart=False)
    try:
        wire.call("events.subscribe", {"session": sid, "output": True})
        # A command's start, then its end with the hostile code.
        hostile = (
            "printf '\\033]133;C\\007'; printf '\\033]133;D;'; printf '9%.0s' $(seq 5000);"
            " printf '\\007'; echo after-mark"
        )
        result = tachi_daemon.run("run", sid, "--timeout", "20", "--", hostile)
        assert result.returncode == 0, result.stderr
        assert "after-mark" in result.stdout
        # The subscriber gets the output after the mark (the chunk that used to
        # be lost), and any command end it is told of has a sane exit code.
        seen, codes = "", []
        deadline = time.monotonic() + 10
        while "after-mark" not in seen and time.monotonic() < deadline:
            frame = wire.next_frame(timeout=1)
            if frame is None or frame.channel != 2:
                continue
            event = json.loads(frame.payload)
            if event.get("type") == "output":
                seen += event.get("data", "")
            elif event.get("type") == "command-finished":
                codes.append(event.get("exitCode"))
        assert "after-mark" in seen, "the output after the mark never reached the subscriber"
        assert all(c is None or -1 <= c <= 255 for c in codes), codes
    finally:
        wire.close()
    # The session and daemon carry on, and nothing was logged as a failure.
    again = tachi_daemon.run("run", sid, "--", "echo still-fine", check=True)
    assert again.stdout == "still-fine\n"
    log = tachi_daemon.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]
