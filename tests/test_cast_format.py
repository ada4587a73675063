"""The asciicast writer and player, on their own."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tachi.builtins.asciicast import AsciicastRecorder
from tachi.playback import play, read_cast, repair_cast

ASCIINEMA = str(Path(sys.executable).parent / "asciinema")


def _open(path, **kw):
    env = {"TERM": "xterm-256color", "SHELL": "/bin/bash"}
    return AsciicastRecorder().open(
        path, width=80, height=24, timestamp_ns=1_700_000_000 * 10**9, env=env, title="t", **kw
    )


def test_header_and_event_forms(tmp_path):
    sink = _open(tmp_path / "a.cast")
    sink.output(b"hi", 0.5)
    sink.resize(100, 30, 1.0)
    sink.marker("window 1: logs", 1.5)
    sink.input(b"secret", 2.0)  # input recording off: dropped
    sink.close()
    lines = (tmp_path / "a.cast").read_text().splitlines()
    header = json.loads(lines[0])
    assert header == {
        "version": 2,
        "width": 80,
        "height": 24,
        "timestamp": 1_700_000_000,
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        "title": "t",
    }
    assert [json.loads(x) for x in lines[1:]] == [
        [0.5, "o", "hi"],
        [1.0, "r", "100x30"],
        [1.5, "m", "window 1: logs"],
    ]
    assert (tmp_path / "a.cast").stat().st_mode & 0o777 == 0o600


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("aé€😀\n\x1b[m"), max_size=200),
    st.lists(st.integers(1, 7), min_size=1),
)
def test_utf8_is_never_split_inside_an_event(tmp_path_factory, text, cuts):
    path = tmp_path_factory.mktemp("c") / "u.cast"
    data = text.encode()
    sink = _open(path)
    pos = i = 0
    while pos < len(data):
        sink.output(data[pos : pos + cuts[i % len(cuts)]], 0.1 * i)
        pos, i = pos + cuts[i % len(cuts)], i + 1
    sink.close()
    _, events = read_cast(path)
    assert "".join(e.data for e in events) == text
    assert all("\ufffd" not in e.data for e in events)


def test_play_scales_and_caps_delays(tmp_path):
    sink = _open(tmp_path / "p.cast")
    for t, text in [(1.0, "a"), (1.5, "b"), (11.5, "c")]:
        sink.output(text.encode(), t)
    sink.close()
    delays, out = [], io.BytesIO()
    play(tmp_path / "p.cast", out, speed=2.0, idle_limit=2.0, sleep=delays.append)
    assert out.getvalue() == b"abc"
    assert delays == [0.5, 0.25, 1.0]


def test_a_crash_cut_file_reads_and_plays_after_repair(tmp_path):
    path = tmp_path / "cut.cast"
    sink = _open(path)
    sink.output(b"complete-event\r\n", 0.1)
    sink.output(b"x" * 100, 0.2)
    sink.close()
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # SIGKILL mid-line
    _, events = read_cast(path)
    assert [e.data for e in events] == ["complete-event\r\n"]
    assert repair_cast(path) and path.read_bytes().endswith(b"\n")
    played = subprocess.run([ASCIINEMA, "cat", str(path)], capture_output=True, timeout=30)
    assert played.returncode == 0 and b"complete-event" in played.stdout


# Every character but lone surrogates, which are not UTF-8 (the sink decodes
# with "replace", so it never meets one).
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=400))
def test_output_events_are_encoded_as_json_dumps_would(text):
    from tachi.builtins.asciicast import json_string

    assert json_string(text.encode()) == json.dumps(text, ensure_ascii=False).encode()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=12))
def test_any_output_bytes_make_lines_json_reads_back_as_the_decoded_text(tmp_path_factory, chunks):
    # ASCII goes straight to the byte encoder, anything else through the
    # incremental UTF-8 decoder (invalid bytes become U+FFFD, a character cut
    # between chunks is joined): the events must hold exactly that text.
    path = tmp_path_factory.mktemp("cast") / "a.cast"
    sink = _open(path)
    for i, chunk in enumerate(chunks):
        sink.output(chunk, i / 10)
    sink.close()
    # Split at "\n" only, as the format does: splitlines() also cuts at U+0085.
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[1:-1]]
    assert "".join(e[2] for e in events) == b"".join(chunks).decode("utf-8", "replace")
    _header, played = read_cast(path)
    assert "".join(e.data for e in played) == b"".join(chunks).decode("utf-8", "replace")
    assert all(e[1] == "o" for e in events)


def test_output_with_unicode_line_separators_plays_back_whole(tmp_path):
    # JSON strings carry U+2028, U+2029 and U+0085 unescaped; only "\n" ends a line.
    text = "one\u2028two\x85three\u2029four"
    path = tmp_path / "sep.cast"
    sink = _open(path)
    sink.output(text.encode(), 0.1)
    sink.close()
    _header, events = read_cast(path)
    assert [(e.code, e.data) for e in events] == [("o", text)]


def test_a_file_size_limit_mid_event_fails_the_sink_with_what_fit_on_disk(tmp_path):
    # An event is one writev of its pieces: when the kernel takes only part of it
    # (the file hits RLIMIT_FSIZE, or the disk fills), the sink writes the rest
    # or raises, and `size` counts exactly what reached the file.
    script = f"""
import errno, json, resource, signal, sys
sys.path[:0] = {sys.path!r}
from pathlib import Path
from tachi.builtins.asciicast import AsciicastRecorder
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
sink = AsciicastRecorder().open(Path({str(tmp_path / "big.cast")!r}), width=80, height=24,
                                timestamp_ns=0, env={{}}, title=None)
events = 0
try:
    for i in range(10):
        sink.output(b"x" * 65536, i / 10)
        events += 1
except OSError as exc:
    print(json.dumps({{"errno": exc.errno, "events": events, "size": sink.size}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    path = tmp_path / "big.cast"
    assert result["errno"] == 27 and result["events"] == 3  # EFBIG on the fourth
    assert result["size"] == path.stat().st_size == 200_000
    lines = path.read_bytes().split(b"\n")
    assert [json.loads(x)[2] for x in lines[1:4]] == ["x" * 65536] * 3
