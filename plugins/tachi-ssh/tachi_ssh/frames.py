"""The ``tachi`` SSH subsystem: tachi protocol frames straight over an SSH channel.

``ssh -s host tachi`` (what ``tachi --host ssh://host`` runs) gets a channel
that carries the same frames as the Unix socket (``docs/protocol.md``), served
by the daemon as the connection's SSH principal. No CLI process runs on the
daemon's side: the client's own ``tachi`` does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from tachi import protocol
from tachi.daemon.limits import ConnectionLimits
from tachi.errors import ProtocolError

if TYPE_CHECKING:
    import asyncssh

    from tachi_ssh.login import SSHLogin

SUBSYSTEM = "tachi"


class FrameBridge:
    """Frames from an SSH channel to ``daemon.serve_connection`` and back."""

    def __init__(self, login: SSHLogin, chan: asyncssh.SSHServerChannel) -> None:
        self.login = login
        self.chan = chan
        self._decoder = protocol.FrameDecoder()
        self._queue: asyncio.Queue[protocol.Frame | ProtocolError | None] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused = False
        self._closed = False
        # Decoded frames waiting for the daemon past this pause reading from the
        # client: the daemon's one setting for every transport ([limits] requests).
        limits = ConnectionLimits.of(login.daemon.config)
        self._high, self._low = limits.read_ahead, limits.resume_at

    # -- from the client -------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self._queue.put_nowait(exc)
            return
        for frame in frames:
            self._queue.put_nowait(frame)
        if self._queue.qsize() >= self._high and not self._paused:
            self._paused = True
            self.chan.pause_reading()

    def end(self) -> None:
        """EOF or channel closed: the daemon's connection ends after what was queued."""
        self._queue.put_nowait(None)

    async def next_frame(self) -> protocol.Frame | None:
        item = await self._queue.get()
        if self._paused and self._queue.qsize() <= self._low:
            self._paused = False
            if not self._closed:
                self.chan.resume_reading()
        if isinstance(item, ProtocolError):
            raise item
        if item is None and self._decoder.pending:
            raise ProtocolError("connection closed inside a frame")
        return item

    # -- to the client (``tachi.core.clients.Wire``) -------------------------------------
    def write(self, data: bytes) -> None:
        if not self._closed:
            self.login.touch()
            self.chan.write(data)

    def buffered(self) -> int:
        return 0 if self._closed else int(self.chan.get_write_buffer_size())

    async def drained(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        if not self._closed:
            with contextlib.suppress(Exception):
                self.chan.exit(0)

    # -- flow control and lifetime ---------------------------------------------------------
    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def lost(self) -> None:
        self._closed = True
        self._writable.set()
        self.end()

    async def serve(self) -> None:
        principal = self.login.principal
        assert principal is not None
        await self.login.daemon.serve_connection(
            self, self.next_frame, peer=self.login.peer, principal=principal
        )
