"""Frames pushed by a transport's ``data_received``, for one connection.

A pull loop (``await next_frame()``) costs every keystroke a task wake-up: the
bytes arrive in a protocol callback, and the connection's task only runs on
the event loop's next turn. A transport built on ``asyncio.Protocol`` feeds a
:class:`FrameInbox` instead: keystrokes for an attached session are written to
its PTY inside that same callback, and everything else (requests, the hello,
input while the program is not keeping up) is queued, in order, for the
connection's loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from tachi import protocol
from tachi.daemon.limits import ConnectionLimits
from tachi.errors import ProtocolError


class StdinSink(Protocol):
    """Takes keystroke frames straight from the transport's callback
    (``tachi.daemon.connection.Connection``)."""

    def stdin_now(self, frame: protocol.Frame) -> bool: ...


#: Frames queued for the connection's loop before the transport stops reading,
#: and the level at which it reads again, by default (``[limits] requests``).
QUEUE_HIGH = ConnectionLimits().read_ahead
QUEUE_LOW = ConnectionLimits().resume_at


class FrameInbox:
    """Decodes pushed bytes into frames; ``next`` hands them to ``Connection.run``.

    ``pause``/``resume`` stop and restart reading the transport, so a peer
    that sends faster than its requests are served is slowed, not buffered.
    """

    def __init__(
        self,
        pause: Callable[[], None],
        resume: Callable[[], None],
        max_payload: int = protocol.MAX_PAYLOAD,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self._decoder = protocol.FrameDecoder(max_payload)
        limits = limits or ConnectionLimits()
        self._high, self._low = limits.read_ahead, limits.resume_at
        self._queue: deque[protocol.Frame] = deque()
        self._pause, self._resume = pause, resume
        self._paused = False
        self._eof = False
        self._error: ProtocolError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._connection: StdinSink | None = None

    def bind(self, connection: StdinSink) -> None:
        """Let ``connection`` take keystrokes straight from :meth:`feed`."""
        self._connection = connection

    def feed(self, data: bytes) -> None:
        if self._error is not None or self._eof:
            return
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self._error = exc
            frames = []
        for frame in frames:
            self._push(frame)
        # A malformed frame ends the connection: nothing more is read.
        if not self._paused and (self._error is not None or len(self._queue) >= self._high):
            self._paused = True
            self._pause()
        if self._queue or self._error is not None:
            # Not for keystrokes already written: waking the connection's task
            # for nothing cost every keystroke a turn of the event loop.
            self._wake()

    def _push(self, frame: protocol.Frame) -> bool:
        # Only with nothing queued ahead of it, so input stays in order.
        connection = self._connection
        if not self._queue and connection is not None and connection.stdin_now(frame):
            return True
        self._queue.append(frame)
        return False

    def offer(self, frame: protocol.Frame) -> bool:
        """Take a keystroke frame from elsewhere than the transport (the client's
        own terminal, read by the daemon): applied at once if it can be, else
        queued in order. Returns whether it was applied."""
        if self._push(frame):
            return True
        self._wake()
        return False

    def push(self, frame: protocol.Frame) -> None:
        """Take ``frame``, which the transport decoded itself (one tachi frame
        per WebSocket message), as :meth:`feed` takes the frames it decodes:
        a keystroke applied at once if it can be, reading paused past the
        read-ahead."""
        if self._error is not None or self._eof:
            return
        if self._push(frame):
            return
        if not self._paused and len(self._queue) >= self._high:
            self._paused = True
            self._pause()
        self._wake()

    def fail(self, error: ProtocolError) -> None:
        """End the connection with ``error`` once the frames queued before it
        are served: a transport that frames the stream itself (one tachi frame
        per WebSocket message) found a message that is not a frame. Nothing
        more is taken; reading goes on, so that the transport can still
        complete its closing handshake."""
        if self._error is not None or self._eof:
            return
        self._error = error
        self._wake()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    async def next(self) -> protocol.Frame | None:
        """The next queued frame; ``None`` at a clean end of stream. Raises
        ``ProtocolError`` for a malformed frame or an end inside one."""
        while not self._queue:
            if self._error is not None:
                raise self._error
            if self._eof:
                if self._decoder.pending:
                    raise ProtocolError("connection closed inside a frame")
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = self._queue.popleft()
        if self._paused and self._error is None and len(self._queue) <= self._low:
            self._paused = False
            self._resume()
        return frame

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
