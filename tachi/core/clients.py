"""Attached clients and their bounded output buffers.

A client that cannot keep up must never slow the session or the other clients,
nor grow the daemon's memory. Each client's transport buffer is capped; when a
write would go past the cap, output for that client is dropped and, once its
buffer has drained, it is resynchronised with one snapshot of the screen.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tachi import protocol
from tachi.gotime import now_ns

if TYPE_CHECKING:
    from tachi.core.principal import Principal
    from tachi.models import PTYConfig

_ids = itertools.count(1)


class Wire(Protocol):
    """The transport side of a connection, as the core needs it."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer; never blocks."""

    def buffered(self) -> int:
        """Bytes queued and not yet sent."""

    def drained(self) -> Awaitable[None]:
        """Resolves once the queue is below the transport's low-water mark."""

    def close(self) -> None: ...


@dataclass(eq=False)
class AttachedClient:
    """One client attached to a session.

    ``role`` is the principal's role on the session (``owner``, ``collaborator``,
    ``observer``); ``read_only`` is true for observers and for owners or
    collaborators that attached with ``--read-only``.
    """

    wire: Wire
    principal: Principal
    role: str
    read_only: bool
    size: PTYConfig | None
    limit: int
    snapshot: Callable[[], tuple[int, int, str, tuple[int, int]]]
    id: int = field(default_factory=lambda: next(_ids))
    attached_at: int = field(default_factory=now_ns)
    size_changed_at: int = 0
    dropped_bytes: int = 0
    resyncs: int = 0
    denied_inputs: int = 0
    _lagging: bool = False
    _resync_task: asyncio.Task[None] | None = None
    on_end: Callable[[str], None] | None = None
    #: The transport connection this client came in on (opaque to the core).
    connection: Any = None

    @property
    def writable(self) -> bool:
        return not self.read_only

    def send_output(self, window: int, seq: int, data: bytes) -> None:
        """Forward one chunk of the active window's output, or drop it if lagging."""
        if self._lagging:
            self.dropped_bytes += len(data)
            return
        if self.wire.buffered() + len(data) > self.limit:
            self.dropped_bytes += len(data)
            self._start_resync()
            return
        for start in range(0, len(data), protocol.MAX_OUTPUT_CHUNK):
            chunk = data[start : start + protocol.MAX_OUTPUT_CHUNK]
            self.wire.write(protocol.encode_output(window, seq + start, chunk))

    def send_screen(
        self, window: int, seq: int, ansi: str, size: tuple[int, int] | None = None
    ) -> None:
        """Replace what the client shows with a snapshot (attach, switch, resync);
        ``size`` is the window's (rows, cols)."""
        event: dict[str, Any] = {"event": "screen", "window": window, "seq": seq, "data": ansi}
        if size is not None:
            event["rows"], event["cols"] = size
        self.send_event(event)

    def send_event(self, event: dict[str, Any]) -> None:
        self.wire.write(protocol.encode_control(event))

    def _start_resync(self) -> None:
        self._lagging = True
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        await self.wire.drained()
        self._lagging = False
        self.resyncs += 1
        self.send_screen(*self.snapshot())

    def end(self, reason: str, message: str) -> None:
        """Tell the client why it is being detached, then let its connection go on
        (``on_end`` lets the connection forget the attachment)."""
        self.send_event({"event": "detached", "reason": reason, "message": message})
        if self._resync_task:
            self._resync_task.cancel()
        if self.on_end:
            self.on_end(reason)
