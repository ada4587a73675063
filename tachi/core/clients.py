"""Attached clients and their bounded output buffers.

A client that cannot keep up must never slow the session or the other clients,
nor grow the daemon's memory. Each client's transport buffer is capped; when a
write would go past the cap, output for that client is dropped and, once its
buffer has drained, it is resynchronised with one snapshot of the screen.

A client on this host may hand its terminal's output to the daemon
(``client.terminal``): output is then written to ``terminal`` instead of being
framed for the socket, and screens are drawn there too. Handing it back is
ordered: the daemon stops writing to the terminal, waits until what it wrote
has reached it, then sends a ``terminal`` event with ``output: false`` and only
then what was framed meanwhile, so the client never writes between two halves
of the daemon's output.
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
    """The transport side of a connection, as the core needs it: frame-level.

    Each ``write`` is exactly one whole encoded frame (``protocol.encode*``), so
    a message-based transport (a WebSocket message per frame) sends it as it is,
    without parsing frame headers again; a stream transport just writes it."""

    def write(self, data: bytes) -> None:
        """Queue one encoded frame for the peer; never blocks."""

    def buffered(self) -> int:
        """Bytes queued and not yet sent."""

    def drained(self) -> Awaitable[None]:
        """Resolves once the queue is below the transport's low-water mark."""

    def close(self) -> None: ...


def write_frames(wire: Wire, frames: list[bytes]) -> None:
    """Queue ``frames`` for the peer: in one write where the wire takes several
    frames at once (``wire.write_frames``, a stream transport: one system call,
    one wake-up of the peer), else one ``write`` each (a message transport:
    one message per frame)."""
    many = getattr(wire, "write_frames", None)
    if many is not None:
        many(frames)
    else:
        for frame in frames:
            wire.write(frame)


class TerminalWire(Wire, Protocol):
    """A client's own terminal, written by the daemon (see the module's docstring):
    unlike a connection's wire, ``write`` takes the terminal's bytes, not frames."""

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once what was written has reached the terminal."""

    def size(self) -> tuple[int, int] | None:
        """The terminal's (rows, cols) now."""


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
    #: The client's own terminal, while the daemon writes its output there.
    terminal: TerminalWire | None = None
    #: How many times the client handed its output over (the ``terminal`` event
    #: names the latest, so a client can tell a stale one).
    handovers: int = 0
    #: Times the daemon gave the output back because the terminal was busy.
    floods: int = 0
    #: Frames held back while the terminal drains (see ``release_terminal``);
    #: ``None`` when no hand-back is under way.
    _held: list[bytes] | None = None
    _held_bytes: int = 0
    #: Resolved when the hand-back under way is done.
    _handed_back: asyncio.Future[None] | None = None
    #: When the grant behind ``role`` ends (ns since the epoch), if it does: from
    #: then on the role must be asked for again before a keystroke goes through.
    role_until: int | None = None
    #: Asks the daemon for the client's live role (it demotes or ends the client);
    #: called by :meth:`may_write` once ``role_until`` has passed.
    on_role_lapsed: Callable[[AttachedClient], None] | None = None
    #: Set by :meth:`end`: the client is no longer attached.
    ended: bool = False

    @property
    def writable(self) -> bool:
        return not self.read_only

    def may_write(self) -> bool:
        """Whether this client's keystrokes may reach the program now.

        False for a read-only client or one that has ended. Once the grant behind
        its role has ended (expiry happens between the daemon's ticks), the live
        role is asked for first, which demotes or ends the client at once: costs a
        clock read per keystroke, and a grant lookup only after that moment."""
        if self.read_only or self.ended:
            return False
        if self.role_until is not None and now_ns() >= self.role_until:
            if self.on_role_lapsed is None:
                return False
            self.on_role_lapsed(self)
        return not (self.read_only or self.ended)

    def send_output(self, window: int, seq: int, data: bytes) -> None:
        """Forward one chunk of the active window's output, or drop it if lagging."""
        if self._lagging:
            self.dropped_bytes += len(data)
            return
        terminal = self.terminal
        if terminal is not None:
            terminal.write(data)
            if terminal.buffered():
                # The terminal did not take it all: a flood. Its client writes
                # that faster (blocking, on the other core) than the daemon can
                # between reads, so it gets the output back until things calm down.
                self.floods += 1
                self.release_terminal(reason="busy")
            return
        if self.wire.buffered() + self._held_bytes + len(data) > self.limit:
            self.dropped_bytes += len(data)
            self._start_resync()
            return
        for start in range(0, len(data), protocol.MAX_OUTPUT_CHUNK):
            chunk = data[start : start + protocol.MAX_OUTPUT_CHUNK]
            self._send(protocol.encode_output(window, seq + start, chunk))

    def send_screen(
        self, window: int, seq: int, ansi: str, size: tuple[int, int] | None = None
    ) -> None:
        """Replace what the client shows with a snapshot (attach, switch, resync);
        ``size`` is the window's (rows, cols)."""
        event: dict[str, Any] = {"event": "screen", "window": window, "seq": seq, "data": ansi}
        if size is not None:
            event["rows"], event["cols"] = size
        if self.terminal is not None:
            # The terminal's own size, not the one the client last sent: an
            # observer never sends one, and a resize may be on its way.
            if size is not None and size == self.terminal.size():
                # Drawn where the output goes, in order with it; the client only
                # learns what it shows.
                self.terminal.write(b"\x1b[r" + ansi.encode())
                event["data"], event["drawn"] = "", True
            else:
                # The client draws what lies outside a smaller window itself.
                self.release_terminal(reason="size")
        self.send_event(event)

    def send_event(self, event: dict[str, Any]) -> None:
        self._send(protocol.encode_control(event))

    def _send(self, frame: bytes) -> None:
        if self._held is not None:
            self._held.append(frame)
            self._held_bytes += len(frame)
        else:
            self.wire.write(frame)

    # -- the client's terminal -------------------------------------------------------
    def take_terminal(self, terminal: TerminalWire) -> None:
        """Write output to ``terminal`` from now on, starting with the screen (the
        client stopped drawing when it asked, so what it missed is redrawn).
        The caller waits for :meth:`handed_back` first."""
        assert self._held is None, "a hand-back is still under way"
        self.terminal = terminal
        self._lagging = False
        self.send_screen(*self.snapshot())

    def hand_back_now(self) -> None:
        """The client asked for its terminal: release it, or say at once that the
        daemon is not writing there."""
        if self.terminal is None and self._held is None:
            self.send_event({"event": "terminal", "output": False, "handover": self.handovers})
        else:
            self.release_terminal()

    async def handed_back(self) -> None:
        """Return once no hand-back is under way."""
        if self._handed_back is not None:
            await self._handed_back

    def release_terminal(self, *, reason: str = "asked") -> None:
        """Stop writing to the client's terminal and hand it back: once what was
        written has reached it, the ``terminal`` event (``output: false``, with
        ``reason``) and the frames held meanwhile go out."""
        terminal = self.terminal
        if terminal is None:
            return
        self.terminal = None
        self._held, self._held_bytes = [], 0
        done = self._handed_back = asyncio.get_running_loop().create_future()

        def hand_back() -> None:
            held = self._held or []
            self._held, self._held_bytes = None, 0
            marker = {
                "event": "terminal",
                "output": False,
                "handover": self.handovers,
                "reason": reason,
            }
            self.wire.write(protocol.encode_control(marker))
            for frame in held:
                self.wire.write(frame)
            self._handed_back = None
            done.set_result(None)

        terminal.when_drained(hand_back)

    def _start_resync(self) -> None:
        self._lagging = True
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        # Started from the framed path only: a busy terminal is handed back instead.
        await self.wire.drained()
        self._lagging = False
        self.resyncs += 1
        self.send_screen(*self.snapshot())

    def end(self, reason: str, message: str) -> None:
        """Tell the client why it is being detached, then let its connection go on
        (``on_end`` lets the connection forget the attachment)."""
        self.ended = True
        self.release_terminal()
        self.send_event({"event": "detached", "reason": reason, "message": message})
        if self._resync_task:
            self._resync_task.cancel()
        if self.on_end:
            self.on_end(reason)
