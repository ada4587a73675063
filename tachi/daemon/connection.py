"""One client connection, whatever the transport: frames in, frames out.

A transport authenticates the peer (peer credentials, a token, an SSH key),
then hands the connection's frames to :meth:`Connection.run`. Control requests
run as tasks owned by the connection, so a long ``wait`` never blocks the
keystrokes behind it; stdin frames are applied in arrival order. The
connection's limits (:mod:`tachi.daemon.limits`) bound what it costs: past
them it stops reading, and the peer's own sends wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from tachi import protocol
from tachi.core.clients import write_frames
from tachi.core.peer import Peer
from tachi.core.principal import Principal
from tachi.core.tasks import TaskSet
from tachi.daemon import limits
from tachi.daemon.direct_terminal import DirectTerminal
from tachi.daemon.inbox import FrameInbox
from tachi.errors import InvalidRequest, PermissionDenied, ProtocolError, TachiError

if TYPE_CHECKING:
    from tachi.config import Config
    from tachi.core.clients import AttachedClient, Wire
    from tachi.core.session import SessionRuntime
    from tachi.daemon.dispatch import Dispatcher
    from tachi.daemon.services import Services

log = logging.getLogger("tachi.connection")
#: How long the daemon reads for a terminal's descriptor after answering the offer.
DESCRIPTOR_TIMEOUT = 5.0
#: How long work a connection's requests started (an exec's supervisor, once
#: its command is killed) may take to finish after the connection ends.
BACKGROUND_GRACE = 2.0
NextFrame = Callable[[], Awaitable[protocol.Frame | None]]


class Host(Protocol):
    """What a connection uses of the daemon (``tachi.daemon.server.Daemon``)."""

    version: str
    config: Config
    filters_input: bool
    dispatcher: Dispatcher
    services: Services

    def authenticate(self, peer: Peer) -> Principal: ...
    def principal_for_token(
        self, token: str, identity: Principal | None, peer: Peer
    ) -> Principal: ...
    def admit_input(
        self, principal: Principal, session: SessionRuntime, size: int, data: bytes | None = None
    ) -> None: ...
    def note_input(self, principal: Principal, session: SessionRuntime, data: bytes) -> None: ...
    def audit_by(
        self, principal: Principal, action: str, session: str | None = None, **kw: Any
    ) -> Any: ...
    def client_detached(
        self, principal: Principal, session: SessionRuntime, reason: str
    ) -> None: ...


class Connection:
    """State of one connection: who it is, and what it is attached to."""

    def __init__(
        self,
        daemon: Host,
        wire: Wire,
        *,
        peer: Peer | None = None,
        principal: Principal | None = None,
    ) -> None:
        self.daemon = daemon
        self.peer = peer
        # Until the hello authenticates a bare peer, nobody: every op needs a hello first.
        self._principal = principal
        self.wire = wire
        #: Called when the connection ends (an exec's process, an event stream).
        self.closers: list[Callable[[], None]] = []
        #: The command ``exec.start`` runs for this connection, if any.
        self.exec_job: Any = None
        self.attached: AttachedClient | None = None
        self.session: SessionRuntime | None = None
        self._greeted = False
        #: Requests in flight that later keystrokes must not overtake.
        self._ordered: set[asyncio.Future[None]] = set()
        self._last_denied_audit = 0.0
        self._inbox: FrameInbox | None = None
        #: The client's own terminal, opened by ``client.terminal`` (local peers only).
        self.terminal: DirectTerminal | None = None
        #: The attached client that last had the terminal's output (it hands it back).
        self.terminal_client: AttachedClient | None = None
        #: The prefix key: reading the terminal stops at it (the client's commands).
        self._prefix = b""
        #: Reading the terminal waits for queued keystrokes to be worked off.
        self._terminal_paused = False
        self.limits = limits.ConnectionLimits.of(daemon.config)
        #: The requests running: cancelled when the connection ends.
        self._requests = TaskSet("requests")
        #: Work the requests leave running (an exec's supervisor): when the
        #: connection ends it gets :data:`BACKGROUND_GRACE` to finish, then is cancelled.
        self.tasks = TaskSet("connection")
        #: One per request running: a full set stops the reader (back-pressure).
        self._slots = asyncio.Semaphore(self.limits.requests)
        #: Frames held to go out with the next reply (:meth:`send_with_reply`).
        self._held: list[bytes] | None = None

    async def run(self, next_frame: NextFrame | FrameInbox) -> None:
        """Serve until the peer hangs up or breaks the protocol; always detaches.

        ``next_frame`` is an async callable returning the next frame (``None`` at
        the end), or a :class:`~tachi.daemon.inbox.FrameInbox` that a protocol
        feeds: keystrokes are then applied as they arrive (:meth:`stdin_now`).
        """
        if isinstance(next_frame, FrameInbox):
            next_frame.bind(self)
            self._inbox = next_frame
            next_frame = next_frame.next
        try:
            while (frame := await next_frame()) is not None:
                if frame.channel == protocol.STDIN and self._greeted:
                    if self._ordered:
                        await asyncio.wait(list(self._ordered))
                    # Awaited here, so a paste faster than the program reads stops
                    # this loop reading: the client is slowed down, nothing is lost.
                    await self._stdin(frame.payload)
                    self._resume_terminal_input()
                elif frame.channel == protocol.CONTROL and self._greeted:
                    await self._admit()
                    self._handle(frame)
                    # Let the request run its first step now: one that answers at
                    # once (capture) has its reply counted before the next is admitted.
                    await asyncio.sleep(0)
                else:
                    self._handle(frame)
        except ProtocolError as exc:
            self.send({"event": "error", "error": exc.to_json()})
            log.info("closing connection of %s: %s", self.source, exc)
        finally:
            # Requests in flight are abandoned with the connection, but awaited.
            await self._requests.close()
            for closer in self.closers:
                closer()
            self.detach("connection closed")
            if self.terminal is not None:
                self.terminal.close()
            # What the requests started (an exec its closer killed) ends on
            # record, and may still tell the peer: the wire closes after it.
            await self.tasks.close(grace=BACKGROUND_GRACE)
            self.wire.close()

    @property
    def principal(self) -> Principal:
        """Who this connection acts as (only valid after the hello)."""
        if self._principal is None:
            raise ProtocolError("the first frame must be a hello control frame")
        return self._principal

    @principal.setter
    def principal(self, value: Principal) -> None:
        self._principal = value

    @property
    def source(self) -> str:
        if self._principal is not None:
            return self._principal.source
        return self.peer.source if self.peer is not None else "unknown"

    def send(self, message: dict[str, Any]) -> None:
        try:
            frame = protocol.encode_control(message)
        except ProtocolError:
            log.exception("reply too large to send")
            return
        if self._held is not None:
            self._held.append(frame)
        else:
            self.wire.write(frame)

    def send_with_reply(self) -> None:
        """Hold what is sent from now on until the reply of the request running
        now, and send it all then, at once (``write_frames``): a request's last
        events and its reply reach a stream peer in one write, so the client
        wakes once, not twice (``session.run``'s ``run.started`` and reply).
        The caller must not await until it returns: anything else sent
        meanwhile would wait for that reply too."""
        if self._held is None:
            self._held = []

    def _send_held(self) -> None:
        held, self._held = self._held, None
        if held:
            write_frames(self.wire, held)

    # -- frames -----------------------------------------------------------------
    async def _admit(self) -> None:
        """Wait for a free request slot and for unsent bytes within budget. Until
        then nothing more is read from this peer: a client that pipelines
        requests and does not read slows itself down, not the daemon."""
        if not self._slots.locked() and self.wire.buffered() <= self.limits.unsent:
            await self._slots.acquire()  # free: returns without suspending
            return
        # Keystrokes that arrive while this request waits must not overtake it
        # (a window switch, a resize): ``stdin_now`` declines while this is held.
        hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ordered.add(hold)
        try:
            await self._slots.acquire()
            try:
                await limits.below(self.wire, self.limits.unsent)
            except BaseException:
                self._slots.release()
                raise
        finally:
            self._ordered.discard(hold)

    def _handle(self, frame: protocol.Frame) -> None:
        if frame.channel == protocol.CONTROL:
            message = protocol.decode_control(frame.payload)
            if not self._greeted:
                self._hello(message)
                return
            task = self._requests.spawn(self._request(message))
            task.add_done_callback(self._release_slot)
            if message.get("op") in self.daemon.dispatcher.ordered:
                # Keystrokes sent after a window switch or a resize must reach the
                # new window, after the resize: they wait until this is done.
                self._ordered.add(task)
                task.add_done_callback(self._ordered.discard)
        elif frame.channel == protocol.STDIN:
            raise ProtocolError("the first frame must be a hello control frame")
        else:
            raise ProtocolError("clients may not send stdout frames")

    def _release_slot(self, _task: asyncio.Task[None]) -> None:
        self._slots.release()

    def _hello(self, message: dict[str, Any]) -> None:
        args = message.get("args") or {}
        if message.get("op") != "hello" or not isinstance(args, dict):
            raise ProtocolError("the first frame must be {'op': 'hello', 'args': {'version': 1}}")
        version = args.get("version")
        if version != protocol.VERSION:
            raise ProtocolError(
                f"protocol version {version!r} is not supported"
                f" (this daemon speaks {protocol.VERSION})"
            )
        token = args.get("token")
        try:
            if token is not None and not isinstance(token, str):
                raise InvalidRequest("token must be a string")
            if self._principal is None:
                assert self.peer is not None
                self._principal = self.daemon.authenticate(self.peer.with_token(token))
            elif token is not None:
                # Authenticated by the transport already (SSH): the token narrows it.
                peer = self.peer or Peer(transport="internal")
                self._principal = self.daemon.principal_for_token(
                    token, self._principal, peer.with_token(token)
                )
            self.closers.append(self.daemon.admit_connection(self._principal))
        except TachiError as exc:
            self.send({"id": message.get("id"), "ok": False, "error": exc.to_json()})
            raise ProtocolError(f"refused: {exc}") from None
        self._greeted = True
        self.send(
            {
                "id": message.get("id"),
                "ok": True,
                "result": {
                    "version": protocol.VERSION,
                    "server": f"tachid {self.daemon.version}",
                    "principal": self.principal.to_json(),
                },
            }
        )

    async def _request(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        op_name = message.get("op")
        args = message.get("args") or {}
        try:
            try:
                daemon = self.daemon
                result = await daemon.dispatcher.dispatch(
                    daemon.services, self, self.principal, op_name, args
                )
                reply: dict[str, Any] = {"id": request_id, "ok": True, "result": result}
            except TachiError as exc:
                reply = {"id": request_id, "ok": False, "error": exc.to_json()}
            except Exception as exc:
                log.exception("operation %r failed", op_name)
                reply = {
                    "id": request_id,
                    "ok": False,
                    "error": {"code": "internal", "message": f"internal error: {exc}"},
                }
            self.send(reply)
        finally:
            self._send_held()  # with the reply; or alone, if the request was cancelled

    # -- attached streams -----------------------------------------------------------
    def stdin_now(self, frame: protocol.Frame) -> bool:
        """Apply a keystroke frame at once, if nothing calls for the slow path
        (:meth:`_stdin`: errors, read-only denials, a program behind on its
        input). Returns whether it did; if not, the frame goes through ``run``.

        Order is kept without more bookkeeping: the inbox offers a frame only
        when nothing is queued ahead of it, and while ``run`` waits in
        :meth:`_stdin` for the program to catch up, the input it wrote first
        keeps this window above the mark, so ``write_now`` declines."""
        if frame.channel != protocol.STDIN or not self._greeted or self._ordered:
            return False
        if self.daemon.filters_input:  # input policies see each chunk, on the slow path
            return False
        client, session = self.attached, self.session
        if client is None or session is None or not client.may_write():
            return False
        try:
            # Audited before it is typed; a burst already audited costs a dict lookup.
            self.daemon.admit_input(self.principal, session, len(frame.payload))
            if not session.write_now(frame.payload):
                return False
        except TachiError:
            return False  # ``run`` meets the same error and reports it
        self.daemon.note_input(self.principal, session, frame.payload)
        return True

    async def _stdin(self, data: bytes) -> None:
        client, session = self.attached, self.session
        if client is None or session is None:
            self.send({"event": "error", "error": {"code": "invalid", "message": "not attached"}})
            return
        # The live role: a grant that ended since the last tick demotes (or
        # ends) the client here, before its keys go anywhere.
        if not client.may_write():
            if client.ended:
                error = {"code": "invalid", "message": "not attached"}
                self.send({"event": "error", "error": error})
                return
            client.denied_inputs += 1
            self._audit_denied_input(session, client)
            return
        try:
            self.daemon.admit_input(self.principal, session, len(data), data)
            await session.write_paced(data)
        except TachiError as exc:
            self.send({"event": "error", "error": exc.to_json()})
            return
        self.daemon.note_input(self.principal, session, data)

    def _audit_denied_input(self, session: SessionRuntime, client: AttachedClient) -> None:
        # One record per burst: a held-down key must not flood the log.
        now = time.monotonic()
        if now - self._last_denied_audit < 1.0:
            return
        self._last_denied_audit = now
        with contextlib.suppress(TachiError):
            self.daemon.audit_by(
                self.principal,
                "session.write",
                session.id,
                result="denied",
                reason=f"{client.role} is read-only" if client.role == "observer" else "read-only",
                details={"attempts": client.denied_inputs},
            )

    # -- the client's own terminal (see tachi.daemon.direct_terminal) ---------------
    def open_terminal(self) -> DirectTerminal:
        """The terminal the client handed over (``adopt_terminal``). Raises
        ``InvalidRequest`` if there is none: the daemon never opens one itself."""
        if self.terminal is None or self.terminal.broken:
            self._descriptor_wire()
            raise InvalidRequest(
                "this client has not handed over its terminal (its stdin is not a"
                " terminal, or it sent no descriptor with client.terminal)"
            )
        return self.terminal

    def expect_terminal(self) -> None:
        """Ready this connection to receive the client's terminal descriptor
        (``client.terminal`` with ``descriptor: "offer"``)."""
        self._descriptor_wire().expect_descriptor(DESCRIPTOR_TIMEOUT)

    def adopt_terminal(self) -> DirectTerminal:
        """Take the descriptor that came with this request as the client's
        terminal, if it may be used (see ``DirectTerminal.adopt``). Raises
        ``PermissionDenied`` or ``InvalidRequest`` saying why not."""
        wire = self._descriptor_wire()
        fd = wire.take_descriptor()
        if fd is None:
            raise InvalidRequest(
                "no descriptor came with this request (send it with SCM_RIGHTS"
                " once the daemon has answered the offer)"
            )
        assert self.peer is not None and self.peer.uid is not None
        if self.terminal is not None and not self.terminal.broken:
            os.close(fd)
            raise InvalidRequest("this client's terminal is handed over already")
        terminal = DirectTerminal.adopt(fd, self.peer.uid, asyncio.get_running_loop())
        if self.terminal is not None:
            self.terminal.close()  # broken: its descriptor is of no more use
        self.terminal = terminal
        self.terminal.on_broken = self._terminal_broken
        return terminal

    def _descriptor_wire(self) -> Any:
        # Only a transport that knows the peer from the kernel (the Unix
        # socket's SO_PEERCRED) and can receive descriptors.
        wire = self.wire
        if (
            self.peer is None
            or self.peer.uid is None
            or self._inbox is None
            or not hasattr(wire, "expect_descriptor")
        ):
            raise InvalidRequest(
                "only a client on this host's Unix socket can hand over its terminal"
            )
        return wire

    def read_terminal(self, prefix: bytes) -> None:
        """Take keystrokes from the client's terminal until the prefix key, which
        goes back to the client (a ``terminal`` event with ``input: false``)."""
        terminal = self.open_terminal()
        self._prefix = prefix
        terminal.start_reading(self._terminal_keys)

    def _terminal_keys(self, data: bytes) -> None:
        at = data.find(self._prefix) if self._prefix else -1
        keys, rest = (data, b"") if at < 0 else (data[:at], data[at:])
        if rest:
            self.stop_terminal_input()
        if keys:
            frame = protocol.Frame(protocol.STDIN, keys)
            assert self._inbox is not None
            if not self._inbox.offer(frame):
                # Queued behind other frames (a program not keeping up): the
                # terminal is read again once the queue has been worked off.
                assert self.terminal is not None
                self.terminal.stop_reading()
                self._terminal_paused = True
        if rest:
            self.send({"event": "terminal", "input": False, "keys": rest.decode("latin-1")})

    def _resume_terminal_input(self) -> None:
        if self._terminal_paused and self._inbox is not None and not self._inbox.queued:
            self._terminal_paused = False
            if self.terminal is not None and self.attached is not None:
                self.terminal.start_reading(self._terminal_keys)

    def stop_terminal_input(self) -> None:
        self._terminal_paused = False
        if self.terminal is not None:
            self.terminal.stop_reading()

    def _terminal_broken(self) -> None:
        self.stop_terminal_input()
        if self.attached is not None:
            self.attached.release_terminal()

    def attach(self, session: SessionRuntime, client: AttachedClient) -> None:
        if self.attached is not None:
            raise InvalidRequest("this connection is already attached; detach first")
        self.attached, self.session = client, session
        client.on_end = lambda reason: self._forget_attachment()

    def _forget_attachment(self) -> None:
        self.stop_terminal_input()
        if self.attached is not None:
            self.attached.release_terminal()
        self.attached = self.session = None

    def detach(self, reason: str) -> None:
        client, session = self.attached, self.session
        self._forget_attachment()
        if client is not None and session is not None:
            session.detach(client)
            self.daemon.client_detached(self.principal, session, reason)

    def require_attached(self) -> tuple[SessionRuntime, AttachedClient]:
        if self.attached is None or self.session is None:
            raise InvalidRequest("this connection is not attached to a session")
        return self.session, self.attached

    def deny_if_read_only(self, what: str) -> None:
        if self.attached is not None and self.attached.read_only:
            raise PermissionDenied(f"{what} is not allowed for a read-only client")
