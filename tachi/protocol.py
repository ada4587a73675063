"""The tachi wire protocol, version 1: small typed frames over any byte stream.

Every transport (Unix socket, WebSocket, SSH channel) carries the same frames;
``docs/protocol.md`` is the reference. A frame is::

    +---------+-----------------+----------------------+
    | channel | length (uint32) | payload (length B)   |
    | 1 byte  | big-endian      |                      |
    +---------+-----------------+----------------------+

Channels (numbered after Kubernetes' ``v5.channel.k8s.io``):

- ``STDIN`` (0): raw bytes for the attached session's active window.
- ``STDOUT`` (1): ``window id (uint32) | seq (uint64) | bytes`` — ``seq`` is the
  offset of the first byte in that window's output stream, so a client that
  reconnects can ask to resume from the last offset it saw.
- ``CONTROL`` (2): one UTF-8 JSON object: a request ``{"id", "op", "args"}``,
  a reply ``{"id", "ok", "result"|"error"}`` or an event ``{"event", ...}``.

The first frame a client sends must be ``{"op": "hello", "args": {"version": 1}}``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tachi.errors import ProtocolError

if TYPE_CHECKING:
    import asyncio

VERSION = 1
STDIN = 0
STDOUT = 1
CONTROL = 2
CHANNELS = frozenset({STDIN, STDOUT, CONTROL})

HEADER = struct.Struct("!BI")
OUTPUT_HEADER = struct.Struct("!IQ")
#: The largest payload a peer may send; bigger frames are a protocol error.
MAX_PAYLOAD = 1 << 20
#: Output is sliced to this size so one window cannot hog a connection.
MAX_OUTPUT_CHUNK = 64 * 1024
#: How much a stream reader asks for at a time.
READ_CHUNK = 256 * 1024


@dataclass(slots=True, frozen=True)
class Frame:
    channel: int
    payload: bytes


def encode(channel: int, payload: bytes) -> bytes:
    """One frame as bytes. Raises ``ProtocolError`` if the payload is too large."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(channel, len(payload)) + payload


def encode_control(message: dict[str, Any]) -> bytes:
    """A control frame carrying ``message`` as compact JSON."""
    return encode(CONTROL, json.dumps(message, separators=(",", ":")).encode())


def encode_output(window: int, seq: int, data: bytes) -> bytes:
    """A stdout frame for ``data`` starting at output offset ``seq`` of ``window``."""
    return encode(STDOUT, OUTPUT_HEADER.pack(window, seq) + data)


def decode_output(payload: bytes) -> tuple[int, int, bytes]:
    """Split a stdout payload into (window, seq, data)."""
    if len(payload) < OUTPUT_HEADER.size:
        raise ProtocolError("stdout frame shorter than its 12-byte header")
    window, seq = OUTPUT_HEADER.unpack_from(payload)
    return window, seq, payload[OUTPUT_HEADER.size :]


def decode_control(payload: bytes) -> dict[str, Any]:
    """Parse a control payload. Raises ``ProtocolError`` unless it is a JSON object."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"control frame is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("control frame must be a JSON object")
    return message


class FrameDecoder:
    """Incremental decoder: feed bytes in any split, get whole frames out.

    Raises ``ProtocolError`` on an unknown channel or an oversized length, before
    buffering the payload, so a hostile peer cannot make the daemon allocate.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max = max_payload

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        start, size = 0, len(buf)
        # Walk the buffer by offset and cut it once at the end: deleting each frame
        # from the front would move the rest of a 256 KiB read once per frame.
        while size - start >= HEADER.size:
            channel, length = HEADER.unpack_from(buf, start)
            _check_header(channel, length, self._max)
            end = start + HEADER.size + length
            if size < end:
                break
            frames.append(Frame(channel, bytes(buf[start + HEADER.size : end])))
            start = end
        if start:
            del buf[:start]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back (non-zero at EOF means truncation)."""
        return len(self._buf)


async def read_frame(reader: asyncio.StreamReader, max_payload: int = MAX_PAYLOAD) -> Frame | None:
    """Read one frame; ``None`` on a clean EOF between frames.

    Raises ``ProtocolError`` for a bad header or EOF inside a frame.
    """
    import asyncio  # here, not at the top: the CLI imports this module and never needs it

    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    channel, length = HEADER.unpack(header)
    _check_header(channel, length, max_payload)
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError(f"connection closed inside a {length}-byte frame") from None
    return Frame(channel, payload)


class StreamFrames:
    """Frames from an ``asyncio.StreamReader``, one ``read`` for as many frames
    as have arrived (a keystroke costs one wake-up, not two ``readexactly``).

    ``await frames.next()`` returns the next frame, ``None`` on a clean EOF
    between frames; raises ``ProtocolError`` for a bad header or EOF inside a
    frame.
    """

    def __init__(self, reader: asyncio.StreamReader, max_payload: int = MAX_PAYLOAD) -> None:
        self._reader = reader
        self._decoder = FrameDecoder(max_payload)
        self._frames: list[Frame] = []
        self._next = 0

    async def next(self) -> Frame | None:
        while self._next >= len(self._frames):
            data = await self._reader.read(READ_CHUNK)
            if not data:
                if self._decoder.pending:
                    raise ProtocolError("connection closed inside a frame")
                return None
            self._frames = self._decoder.feed(data)
            self._next = 0
        frame = self._frames[self._next]
        self._next += 1
        return frame


def _check_header(channel: int, length: int, max_payload: int) -> None:
    if channel not in CHANNELS:
        raise ProtocolError(f"unknown channel {channel}")
    if length > max_payload:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_payload}-byte limit")
