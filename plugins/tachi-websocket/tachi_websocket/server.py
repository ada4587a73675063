"""The WebSocket listener: one tachi frame per binary message, both ways.

Everything about who the peer is and what it may do is the core's: this
module only turns a WebSocket connection into a ``Peer``, a ``Wire`` and a
``next_frame`` for ``daemon.serve_connection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, State

from tachi import protocol
from tachi.core.peer import Peer
from tachi.daemon.inbox import FrameInbox
from tachi.daemon.limits import ConnectionLimits
from tachi.daemon.refusals import THROTTLED
from tachi.errors import PermissionDenied, ProtocolError
from tachi_websocket import tls
from tachi_websocket.links import is_loopback, reachable_host
from tachi_websocket.settings import Settings

if TYPE_CHECKING:
    from tachi.daemon.server import Daemon

log = logging.getLogger("tachi.websocket")
#: The close code for a policy refusal (RFC 6455), with the reason in one line.
POLICY_VIOLATION = 1008


class MessageWire:
    """``tachi.core.clients.Wire`` over a WebSocket: each frame the daemon writes
    (one per ``write``: the wire is frame-level) becomes one binary message as it
    is, queued and sent by one task so that a slow peer never blocks the daemon.
    ``buffered()`` is what the peer has not taken yet, which the core uses to
    resynchronise a lagging client instead of buffering without bound."""

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._pump())

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        ws = self._ws
        if (
            not self._queue
            and not ws.paused
            and ws.send_in_progress is None
            and ws.protocol.state is State.OPEN
        ):
            # Nothing waits and the peer keeps up: written now, as the pump
            # would, without waking it (a keystroke's echo is one message: the
            # task switch was a good part of its cost in the daemon).
            ws.protocol.send_binary(data)
            ws.send_data()
            return
        self._queue.append(data)
        self._queued += len(data)
        self._empty.clear()
        self._wake.set()

    def buffered(self) -> int:
        if self._closed:
            return 0  # nothing more is sent: nothing waits (limits.below must not)
        transport = self._ws.transport
        return self._queued + (transport.get_write_buffer_size() if transport else 0)

    async def drained(self) -> None:
        await self._empty.wait()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def finish(self, timeout: float = 5.0) -> None:
        """Close, after sending what is queued (a refusal's reason, the last output),
        waiting at most ``timeout`` seconds for a peer that does not read."""
        self.close()
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        self._task.cancel()

    async def _pump(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    message = self._queue.popleft()
                    await self._ws.send(message)
                    self._queued -= len(message)
                self._empty.set()
                if self._closed:
                    await self._ws.close()
                    return
        except ConnectionClosed:
            self._closed = True
            self._queue.clear()
            self._queued = 0
            self._empty.set()


class FrameConnection(ServerConnection):
    """A WebSocket connection whose binary messages go to a ``FrameInbox``
    (``inbox``) as websockets parses them, in the protocol's own
    ``data_received``: a keystroke for an attached session reaches its PTY
    there (the inbox's ``stdin_now``), as on the Unix socket. Through
    ``recv()`` each message waited in websockets' queue for the connection's
    task, a wake-up and a turn of the event loop per keystroke, then a frame
    decoder per message. The handshake, pings, the closing handshake and the
    timeouts stay websockets'. Each message is exactly one tachi frame: a text
    message, or one that is not one whole frame, ends the connection (in
    order, after what came before it) with a ``ProtocolError``."""

    def __init__(
        self, *args: Any, limits: ConnectionLimits, max_payload: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._max_payload = max_payload
        self._fragments: list[bytes] = []
        #: Each message is one whole frame, so this holds nothing between them.
        self._decoder = protocol.FrameDecoder(max_payload=max_payload)
        self.inbox: FrameInbox

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Read ahead as far as on every transport ([limits] requests), then
        # the socket is not read until the connection has caught up.
        self.inbox = FrameInbox(
            self.transport.pause_reading,
            self.transport.resume_reading,
            max_payload=self._max_payload,
            limits=self._limits,
        )

    def process_event(self, event: Event) -> None:
        if (
            self.request is None
            or not isinstance(event, Frame)
            or event.opcode not in (Opcode.BINARY, Opcode.CONT, Opcode.TEXT)
        ):
            super().process_event(event)  # the handshake's request, pings, pongs
            return
        if event.opcode is Opcode.TEXT:
            self.inbox.fail(ProtocolError(TEXT_REFUSED))
            return
        if event.fin and not self._fragments:
            self._message(event.data)
            return
        self._fragments.append(event.data)  # websockets bounds the whole (max_size)
        if event.fin:
            data = b"".join(self._fragments)
            self._fragments.clear()
            self._message(data)

    def _message(self, data: bytes) -> None:
        size = len(data)
        if size < protocol.HEADER.size:
            self.inbox.fail(ProtocolError(f"a {size}-byte message is shorter than a frame header"))
            return
        if protocol.HEADER.size + protocol.HEADER.unpack_from(data)[1] != size:
            self.inbox.fail(ProtocolError(ONE_FRAME))
            return
        try:
            (frame,) = self._decoder.feed(data)  # checks the channel and the length
        except ProtocolError as exc:
            # Not the inbox's own decoding, which would stop reading: the
            # closing handshake that follows must still be read.
            self.inbox.fail(exc)
            return
        self.inbox.push(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.inbox.feed_eof()


TEXT_REFUSED = "text messages are not tachi frames; send binary messages"
ONE_FRAME = "each WebSocket message must carry exactly one tachi frame"


class WebSocketTransport:
    """``[transports.websocket]``: a WebSocket listener, with TLS unless on loopback."""

    name = "websocket"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fingerprint: str | None = None
        self._server: Any = None
        self._daemon: Daemon | None = None
        self._connections: set[FrameConnection] = set()

    # -- lifecycle ------------------------------------------------------------
    async def start(self, daemon: Daemon) -> None:
        """Listen. Raises ``InvalidRequest`` for bad TLS settings and ``OSError``
        when the address cannot be bound."""
        self._daemon = daemon
        s = self.settings
        ssl_context = daemon.hooks.tachi_server_tls(transport=self.name, config=daemon.config)
        if ssl_context is None and s.tls != "off":
            if s.tls == "self-signed":
                cert, key = tls.self_signed(s.state_dir, s.host)
            else:
                assert s.tls_cert is not None and s.tls_key is not None
                cert, key = s.tls_cert, s.tls_key
            ssl_context = tls.server_context(cert, key)
            self.fingerprint = tls.fingerprint(tls.certificate_der(cert))
        self._tls = ssl_context is not None
        if ssl_context is not None:
            ssl_context.sslobject_class = _audited_tls(daemon, self.name)
            # No TLS 1.3 session tickets (whoever made the context: a plugin's
            # SPIFFE context too). OpenSSL sends them after the handshake, and
            # with asyncio's TLS layer a connection then stalled now and then:
            # 9 of 72 runs of the fuzz test under load had a client wait 30 s for
            # the HTTP answer, none of 48 without tickets. No tachi client resumes
            # sessions, so nothing is lost.
            ssl_context.num_tickets = 0
        self._server = await serve(
            self._serve,
            s.host,
            s.port,
            ssl=ssl_context,
            process_request=self._http,
            compression="deflate" if s.compression else None,
            # A peer that misses two heartbeats in a row is dropped.
            ping_interval=s.heartbeat or None,
            ping_timeout=2 * s.heartbeat if s.heartbeat else None,
            # A dead peer never answers the closing handshake either.
            close_timeout=min(10.0, max(1.0, 2 * s.heartbeat)),
            max_size=s.max_frame + protocol.HEADER.size,
            # A busy host can take seconds to finish a TLS and HTTP handshake.
            open_timeout=30,
            # Binary messages go to each connection's FrameInbox, which reads
            # ahead the daemon's one setting for every transport ([limits]
            # requests); websockets' own queue holds none of them.
            max_queue=ConnectionLimits.of(daemon.config).read_ahead,
            create_connection=cast(
                Any,
                functools.partial(
                    FrameConnection,
                    limits=ConnectionLimits.of(daemon.config),
                    max_payload=s.max_frame,
                ),
            ),
        )
        if s.port == 0:
            self.settings = _with_port(s, self._server.sockets[0].getsockname()[1])
        log.info(
            "websocket listening on %s%s",
            self.url,
            f" (certificate {self.fingerprint})" if self.fingerprint else "",
        )

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._server.wait_closed()), 2)
        # A peer the network dropped never answers the closing handshake, and
        # each would hold the daemon's exit for close_timeout (up to 10 s):
        # after 2 s, the connections still open are cut.
        for connection in list(self._server.connections):
            with contextlib.suppress(Exception):
                connection.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 3)

    @property
    def url(self) -> str:
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        return f"{'wss' if self._tls else 'ws'}://{host}:{s.port}"

    def share_link(self, session_id: str, token: str | None) -> dict[str, str] | None:
        """The browser page for a share: ``https://host:port/s/ID#token=…``. The token
        is in the fragment, which browsers never send to a server."""
        if token is None:
            return None
        s = self.settings
        base = s.public_url or self.url.replace("wss://", "https://").replace("ws://", "http://")
        warning = None
        if not s.public_url and s.host in ("0.0.0.0", "::"):
            host, warning = reachable_host()
            base = f"{'https' if self._tls else 'http'}://{host}:{s.port}"
        elif not s.public_url and is_loopback(s.host):
            warning = (
                f"this link only works on this host (the listener is on {s.host}):"
                " listen on an address others reach, or set [transports.websocket] public_url"
            )
        link = {"label": "browser", "url": f"{base.rstrip('/')}/s/{session_id}#token={token}"}
        if warning:
            link["warning"] = warning
        return link

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url, "connections": len(self._connections)}
        if self.fingerprint:
            out["fingerprint"] = self.fingerprint
        return out

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """Whether a request's ``Origin`` may open a connection: none (a program,
        not a browser page), a configured origin, or the listener's own origin, so
        that no other web page can drive a session from a user's browser."""
        if origin is None:
            return True
        s = self.settings
        if s.origins:
            return origin in s.origins
        scheme = "https" if self._tls else "http"
        port = s.port
        if s.host in ("0.0.0.0", "::"):
            # Listening everywhere: the page must come from the host the browser
            # asked for.
            return host_header is not None and origin == f"{scheme}://{host_header}"
        hosts = {f"[{s.host}]" if ":" in s.host else s.host}
        if s.loopback:
            hosts |= {"localhost", "127.0.0.1", "[::1]"}
        return origin in {f"{scheme}://{h}:{port}" for h in hosts}

    # -- HTTP ---------------------------------------------------------------------
    async def _http(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse foreign origins; plain GET requests get the browser pages, and
        upgrades go on to ``_serve``."""
        if not self.origin_allowed(request.headers.get("Origin"), request.headers.get("Host")):
            return ws.respond(403, "Origin not allowed\n")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        from tachi_websocket import web

        assert self._daemon is not None
        response = await web.respond(self._daemon, self, request)
        return response or ws.respond(404, "Not found\n")

    # -- WebSocket ------------------------------------------------------------
    def peer_of(self, ws: ServerConnection) -> Peer:
        address = ws.remote_address or (None, None)
        chain: tuple[bytes, ...] = ()
        ssl_object = ws.transport.get_extra_info("ssl_object") if ws.transport else None
        if ssl_object is not None:
            leaf = ssl_object.getpeercert(binary_form=True)
            chain = (leaf, *_verified_intermediates(ssl_object)) if leaf else ()
        host = address[0]
        if host and host.startswith("::ffff:"):
            host = host[7:]  # an IPv4 peer on a dual-stack socket
        return Peer(transport=self.name, address=host, port=address[1], tls_chain=chain)

    async def _serve(self, ws: FrameConnection) -> None:
        assert self._daemon is not None
        daemon = self._daemon
        peer = self.peer_of(ws)
        try:
            daemon.check_address(peer)
        except PermissionDenied as exc:
            await _refuse(ws, exc)
            return
        # After wrong tokens from this address, a new connection waits for its
        # turn to present one, or is refused unchecked: guessing tokens here is
        # as slow as guessing SSH passwords (tachi.daemon.refusals).
        if not await daemon.refusals.before_secret(peer.address):
            daemon.audit_refusal(peer, "auth.token", THROTTLED)
            await _refuse(ws, PermissionDenied(THROTTLED))
            return
        self._connections.add(ws)
        wire = MessageWire(ws)
        try:
            await daemon.serve_connection(wire, ws.inbox, peer=peer)
        finally:
            self._connections.discard(ws)
            await wire.finish()
            sent = ws.protocol.close_sent
            if sent is not None and sent.code == 1011 and "keepalive" in sent.reason:
                daemon.audit_refusal(peer, "connection.heartbeat", "missed two heartbeats")


def _audited_tls(daemon: Daemon, transport: str) -> type[ssl.SSLObject]:
    """A TLS object that audits a client certificate the handshake refused (an
    unknown CA, an expired certificate): no principal exists yet to refuse
    later, and asyncio only logs such failures at debug level."""

    class AuditedTLS(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except ssl.SSLCertVerificationError as exc:
                reason = f"TLS client certificate refused: {exc.verify_message}"
                daemon.audit_refusal(Peer(transport=transport), "tls", reason)
                raise
            except ssl.SSLError as exc:
                if "CERTIFICATE" in str(exc).upper():
                    daemon.audit_refusal(
                        Peer(transport=transport), "tls", f"TLS client certificate refused: {exc}"
                    )
                raise

    return AuditedTLS


async def _refuse(ws: ServerConnection, exc: PermissionDenied) -> None:
    """Tell a refused peer why, in the protocol (for tachi clients) and in the close
    frame (for anything else), then close."""
    with contextlib.suppress(ConnectionClosed):
        await ws.send(protocol.encode_control({"event": "error", "error": exc.to_json()}))
        await ws.close(POLICY_VIOLATION, exc.message[:120])


def _with_port(s: Settings, port: int) -> Settings:
    from dataclasses import replace

    return replace(s, port=port)


def _verified_intermediates(ssl_object: Any) -> tuple[bytes, ...]:
    """The rest of the chain the handshake verified (DER, after the leaf), so an
    identity plugin can tell which CA it ends at (SPIFFE: the peer's own trust
    domain's). Public in Python 3.13; the same method of ``_sslobj`` before."""
    verified = getattr(ssl_object, "get_verified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_verified_chain", None
    )
    if verified is None:
        return ()
    try:
        certs = verified() or []
        return tuple(
            c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
            for c in certs[1:]
        )
    except (ssl.SSLError, ValueError, AttributeError):
        return ()
