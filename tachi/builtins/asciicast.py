"""The built-in recorder: asciicast v2, which every asciinema player reads.

v2 rather than v3: the asciinema 2.x tools (and the PyPI ``asciinema``
package) read only v2, and asciinema 3 still plays v2; v3 would lock out the
older, widely installed players for no gain in what tachi records.

Each event is one line, written and flushed at once, so a daemon killed with
SIGKILL leaves every complete event readable. Output events, most of a
recording's bytes, are encoded on bytes (:func:`json_string`): the same JSON
``json.dumps`` writes, in a few fast passes rather than a character loop,
without decoding text that is plain ASCII.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
from pathlib import Path
from typing import Any

from tachi.hookspecs import hookimpl


class AsciicastSink:
    """Writes one asciicast v2 file. OSError (a full disk) propagates to the caller."""

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        timestamp_ns: int,
        env: dict[str, str],
        title: str | None,
        record_input: bool,
    ) -> None:
        # Unbuffered: every event is one writev of its pieces, so a flood's
        # megabytes are copied once, into the file, and never joined into a line.
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._record_input = record_input
        # Output split across reads may cut a UTF-8 character: keep the partial
        # bytes until the rest arrives, per stream.
        self._out_partial = b""
        self._in = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._last_t = 0.0
        self.size = 0
        header: dict[str, Any] = {
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": timestamp_ns // 1_000_000_000,
            "env": {"TERM": env.get("TERM", ""), "SHELL": env.get("SHELL", "")},
        }
        if title is not None:
            header["title"] = title
        self._line(header)

    @classmethod
    def appending(cls, path: Path, *, last_t: float, record_input: bool) -> AsciicastSink:
        """A sink that goes on writing the existing recording at ``path`` (its
        header and events stay; ``last_t`` is the time of its last event, so
        times never go back). Raises ``OSError`` if it cannot be opened."""
        sink = cls.__new__(cls)
        sink._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        sink._record_input = record_input
        sink._out_partial = b""
        sink._in = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sink._last_t = last_t
        sink.size = os.fstat(sink._fd).st_size
        return sink

    @property
    def duration(self) -> float:
        return self._last_t

    def output(self, data: bytes, t: float) -> None:
        if not (data.isascii() and not self._out_partial):
            data = self._valid_utf8(data)
        if data:
            self._last_t = max(self._last_t, round(t, 6))
            head = b'[%s, "o", "' % repr(self._last_t).encode()
            self._write(head, json_string_body(data), b'"]\n')

    def _valid_utf8(self, data: bytes) -> bytes:
        """``data`` after the bytes held from the last call, as valid UTF-8, with an
        incomplete character at its end held back for the next call.

        Valid input (nearly all of it) is only checked, never re-encoded: a
        strict decode is half the cost of decoding and encoding again. Invalid
        bytes become U+FFFD, as the whole output decoded at once would have them:
        the cut is always before a lead byte, where a new character starts."""
        data = self._out_partial + data
        cut = _complete_utf8_end(data)
        data, self._out_partial = data[:cut], data[cut:]
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace").encode()
        return data

    def input(self, data: bytes, t: float) -> None:
        if self._record_input:
            text = self._in.decode(data)
            if text:
                self._event(t, "i", text)

    def resize(self, cols: int, rows: int, t: float) -> None:
        self._event(t, "r", f"{cols}x{rows}")

    def marker(self, label: str, t: float) -> None:
        self._event(t, "m", label)

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            tail = self._out_partial.decode("utf-8", "replace")
            if tail:
                self._event(self._last_t, "o", tail)
        finally:
            self._close_fd()

    def _event(self, t: float, code: str, data: str) -> None:
        # Times never go backwards, whatever the clock did.
        self._last_t = max(self._last_t, round(t, 6))
        self._line([self._last_t, code, data])

    def _line(self, value: Any) -> None:
        self._write((json.dumps(value, ensure_ascii=False) + "\n").encode())

    def _write(self, *parts: bytes) -> None:
        if self._fd is None:
            raise OSError(errno.EBADF, "the recording is closed")
        parts_left = [p for p in parts if p]
        try:
            while parts_left:
                written = os.writev(self._fd, parts_left)
                self.size += written
                while parts_left and written >= len(parts_left[0]):
                    written -= len(parts_left.pop(0))
                if parts_left and written:
                    parts_left[0] = parts_left[0][written:]
        except OSError:
            # The file is unusable now; make every later call fail the same way.
            self._close_fd()
            raise

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _complete_utf8_end(data: bytes) -> int:
    """Where ``data`` ends once a character cut short at its end is left out."""
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            break
        if byte >= 0xC0:  # the lead byte: how long its character is
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if length > back else len(data)
    return len(data)


_SHORT_ESCAPES = {0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0C: b"\\f", 0x0D: b"\\r"}
#: How JSON writes each control character (as ``json.dumps`` does).
_CONTROL_ESCAPES = {c: _SHORT_ESCAPES.get(c, b"\\u%04x" % c) for c in range(0x20)}
#: Every byte JSON escapes: the control characters, the quote and the backslash.
_ESCAPES = {**_CONTROL_ESCAPES, 0x22: b'\\"', 0x5C: b"\\\\"}
_NOT_ESCAPED = bytes(b for b in range(0x100) if b not in _ESCAPES)
#: (byte, its escape) in the order to replace them: the backslash first, since
#: the other escapes add backslashes.
_ESCAPE_PASSES = sorted(
    ((bytes((c,)), e) for c, e in _ESCAPES.items()), key=lambda p: p[0] != b"\\"
)


def json_string(utf8: bytes) -> bytes:
    """``utf8`` (valid UTF-8) as a JSON string, byte for byte what
    ``json.dumps(utf8.decode(), ensure_ascii=False).encode()`` gives."""
    return b'"' + json_string_body(utf8) + b'"'


def json_string_body(utf8: bytes) -> bytes:
    """``json_string`` without its quotes (``utf8`` itself when nothing needs escaping).

    Works on the bytes: every byte JSON escapes is ASCII, and ASCII bytes never
    occur inside a multi-byte UTF-8 character. One pass finds which of them are
    present (``translate`` keeps only those), then one ``replace`` pass per kind
    found, each at memory speed; output with none (a long line of base64) costs the
    one pass.
    """
    found = utf8.translate(None, _NOT_ESCAPED)
    if not found:
        return utf8
    # Looking each one up in the (short) bytes found beats building a set of them.
    for byte, escaped in _ESCAPE_PASSES:
        if byte in found:
            utf8 = utf8.replace(byte, escaped)
    return utf8


class AsciicastRecorder:
    format = "asciicast"
    extension = ".cast"
    #: Made again in the daemon's recorder process, which does the writing.
    worker_factory = "tachi.builtins.asciicast:AsciicastRecorder"

    def open(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        timestamp_ns: int,
        env: dict[str, str],
        title: str | None,
        record_input: bool = False,
    ) -> AsciicastSink:
        return AsciicastSink(
            path,
            width=width,
            height=height,
            timestamp_ns=timestamp_ns,
            env=env,
            title=title,
            record_input=record_input,
        )

    def repair(self, path: Path) -> float:
        """See :func:`repair_asciicast`."""
        return repair_asciicast(path)

    def resume(self, path: Path, *, record_input: bool = False) -> AsciicastSink:
        """Go on writing a recording a stopped daemon left open (its session was
        adopted by the next daemon): repaired first, then appended to."""
        return AsciicastSink.appending(
            path, last_t=repair_asciicast(path), record_input=record_input
        )


#: How far back from its end a repair looks for the last complete event.
_REPAIR_TAIL = 1 << 20


def repair_asciicast(path: Path) -> float:
    """Make a recording a crashed writer left readable: cut a partial last line
    (an event cut short) and return the recording's duration (the time of its
    last complete event).

    Touches nothing it does not understand: a file that does not begin with an
    asciicast v2 header line raises ``ValueError`` and is left as it is, and
    nothing before the end of the header is ever cut. Raises ``OSError`` if the
    file cannot be read or written.
    """
    with open(path, "rb+") as f:
        head = f.readline(_REPAIR_TAIL)
        try:
            header = json.loads(head)
        except ValueError:
            header = None
        if not head.endswith(b"\n") or not isinstance(header, dict) or header.get("version") != 2:
            raise ValueError(f"{path} does not start with an asciicast v2 header; left as it is")
        header_end = len(head)
        size = f.seek(0, os.SEEK_END)
        start = max(header_end, size - _REPAIR_TAIL)
        f.seek(start)
        tail = f.read()
        if tail and not tail.endswith(b"\n"):
            newline = tail.rfind(b"\n")
            if newline < 0 and start > header_end:
                # A last line longer than what was read: not an event cut short.
                raise ValueError(f"{path} ends with an unreadable line; left as it is")
            keep = start + newline + 1 if newline >= 0 else header_end
            f.truncate(keep)
            os.fsync(f.fileno())
            tail = tail[: keep - start]
    for line in reversed(tail.splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, list) and event and isinstance(event[0], int | float):
            return float(event[0])
    return 0.0


@hookimpl
def tachi_recorders(register: Any) -> None:
    register(AsciicastRecorder())
