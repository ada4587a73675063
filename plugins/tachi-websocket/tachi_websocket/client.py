"""The client side: ``tachi --host wss://…`` and ``Client(url=…)``.

The core's clients speak frames over a stream socket. This module connects
with the ``websockets`` client, verifies the daemon's certificate (CA file,
pinned fingerprint, or an identity plugin's ``tachi_client_tls`` /
``tachi_verify_server``), and bridges the WebSocket to one end of a
``socketpair``: one frame per binary message.

The bridge is one thread running the sans-I/O ``websockets`` protocol on a
non-blocking socket: a keystroke is one wake-up of that thread each way. (It
was ``websockets.sync`` with two bridge threads: the library's reader thread
handed each message to a bridge thread, which wrote it to the socketpair, so
every message the daemon sent woke two threads; and a command paid for
starting three.)
"""

from __future__ import annotations

import contextlib

# A host name is encoded with the idna codec to be resolved: imported here, the
# warm CLI has it loaded (3-5 ms a command otherwise, with stringprep and unicodedata).
import encodings.idna  # noqa: F401
import hmac
import os
import select
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from tachi import protocol
from tachi.errors import DaemonUnavailable, PermissionDenied, ProtocolError
from tachi_websocket.tls import fingerprint, normalise_fingerprint

SCHEMES = ("ws", "wss")
#: The path of the WebSocket endpoint when the URL names none.
WS_PATH = "/ws"


def client_context(url: str, options: dict[str, Any]) -> ssl.SSLContext:
    """TLS settings for ``url``: an identity plugin's, else a pinned fingerprint
    (chain not checked: the pin is the check), else the CA file, else the system's."""
    hooks = options.get("hooks")
    if hooks is not None:
        ctx = hooks.tachi_client_tls(url=url, options=options)
        if ctx is not None:
            return ctx
    if options.get("fingerprint"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=options.get("ca_file"))
    return ctx


def verify_server(url: str, options: dict[str, Any], der: bytes) -> None:
    """Check the daemon's certificate against ``--fingerprint`` and the identity
    plugins. Raises ``PermissionDenied`` on a mismatch."""
    pinned = options.get("fingerprint")
    if pinned:
        want = normalise_fingerprint(pinned)
        import hashlib

        if not hmac.compare_digest(hashlib.sha256(der).digest(), want):
            raise PermissionDenied(
                f"the daemon at {url} presented certificate {fingerprint(der)},"
                f" not the pinned {pinned}"
            )
    hooks = options.get("hooks")
    if hooks is not None:
        hooks.tachi_verify_server(url=url, options=options, certificate=der)


#: Seconds without a message from the daemon before the bridge pings it, and
#: before it gives the connection up as dead (as ``ping_interval`` /
#: ``ping_timeout`` did).
PING_INTERVAL = 20.0
PING_TIMEOUT = 40.0
#: How much is read from either side at once.
CHUNK = 256 * 1024


def _handshake_error(url: str, exc: BaseException | None) -> Exception:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return PermissionDenied(f"the daemon at {url} refused the connection (HTTP {status})")
    return DaemonUnavailable(f"cannot reach {url}: {exc or 'the WebSocket handshake failed'}")


def open_connection(url: str, options: dict[str, Any]) -> socket.socket:
    """A local socket carrying frames to and from the daemon at ``url``: from
    the connection keeper when it is enabled (``tachi_websocket.keeper``),
    else connected here and bridged by a thread.

    Raises ``DaemonUnavailable`` (can't reach) or ``PermissionDenied`` (TLS,
    fingerprint or the daemon refused us), each with one line.
    """
    if os.environ.get("TACHI_WS_KEEPER", "0") not in ("", "0", "off", "no"):
        from tachi_websocket import keeper

        if keeper.enabled(options):
            kept = keeper.connect(url, options)
            if kept is not None:
                return kept
    sock, ws = connect_websocket(url, options)
    ours, theirs = socket.socketpair()
    bridge = _Bridge(sock, ws, theirs)
    threading.Thread(target=bridge.run, name="tachi-ws-bridge", daemon=True).start()
    return ours


def connect_websocket(url: str, options: dict[str, Any]) -> tuple[socket.socket, ClientProtocol]:
    """A connected, verified, upgraded WebSocket: its socket (blocking) and its
    protocol state. Raises as ``open_connection`` does."""
    parts = urlsplit(url)
    target = url if parts.path not in ("", "/") else url.rstrip("/") + WS_PATH
    tls = parts.scheme == "wss"
    timeout = float(options.get("timeout", 30))
    deadline = time.monotonic() + timeout
    try:
        uri = parse_uri(target)
    except ValueError as exc:
        raise DaemonUnavailable(f"cannot reach {url}: {exc}") from None
    try:
        raw = socket.create_connection((uri.host, uri.port), timeout=timeout)
    except OSError as exc:
        raise DaemonUnavailable(f"cannot reach {url}: {exc.strerror or exc}") from None
    sock: socket.socket = raw
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = client_context(url, options)
            try:
                sock = ctx.wrap_socket(raw, server_hostname=uri.host)
            except ssl.SSLCertVerificationError as exc:
                raise PermissionDenied(
                    f"cannot verify the daemon at {url}: {exc.verify_message};"
                    " pin it with --fingerprint SHA256:… or give --ca-file"
                ) from None
            except (OSError, ssl.SSLError) as exc:
                raise DaemonUnavailable(f"cannot reach {url}: {exc}") from None
            assert isinstance(sock, ssl.SSLSocket)
            verify_server(url, options, sock.getpeercert(binary_form=True) or b"")
        ws = _handshake(sock, uri, options, url, deadline)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock, ws


def _handshake(
    sock: socket.socket, uri: Any, options: dict[str, Any], url: str, deadline: float
) -> ClientProtocol:
    """The HTTP upgrade on ``sock`` (blocking, until ``deadline``); the protocol
    object, open, with whatever arrived after the answer already received."""
    extensions = None
    if options.get("compression"):
        # Deflate costs more CPU than it saves on a LAN; opt in with
        # TACHI_WS_COMPRESSION=1 on slow links (browsers always offer it).
        from websockets.extensions.permessage_deflate import enable_client_permessage_deflate

        extensions = enable_client_permessage_deflate(None)
    ws = ClientProtocol(
        uri,
        extensions=extensions,
        max_size=protocol.MAX_PAYLOAD * 4 + protocol.HEADER.size,
    )
    ws.send_request(ws.connect())
    try:
        sock.sendall(b"".join(ws.data_to_send()))
        while ws.state is State.CONNECTING:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out during the WebSocket handshake")
            sock.settimeout(left)
            data = sock.recv(CHUNK)
            if not data:
                ws.receive_eof()
                break
            ws.receive_data(data)
    except (OSError, TimeoutError) as exc:
        raise DaemonUnavailable(f"cannot reach {url}: {exc}") from None
    if ws.state is not State.OPEN:
        raise _handshake_error(url, ws.handshake_exc)
    return ws


class _Bridge:
    """Frames between the daemon's WebSocket and the local socketpair, in one thread."""

    def __init__(self, sock: socket.socket, ws: ClientProtocol, local: socket.socket) -> None:
        self.sock = sock
        self.ws = ws
        self.local = local
        self.decoder = protocol.FrameDecoder(max_payload=protocol.MAX_PAYLOAD)
        self.fragments: list[bytes] = []
        self.close_reason = ""

    def run(self) -> None:
        sock, local = self.sock, self.local
        sock.setblocking(False)
        try:
            # What came with the handshake's answer (the hello's reply, say).
            if not self._deliver():
                return
            last_heard = time.monotonic()
            pinged = False
            while True:
                # TLS may hold decrypted bytes the kernel no longer shows.
                pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
                ready = (
                    [sock] if pending else select.select([sock, local], [], [], PING_INTERVAL)[0]
                )
                now = time.monotonic()
                if not ready:
                    if now - last_heard > PING_TIMEOUT:
                        return  # the daemon is gone without a word
                    if not pinged:
                        self.ws.send_ping(b"")
                        pinged = True
                        self._flush()
                    continue
                if sock in ready:
                    try:
                        data = sock.recv(CHUNK)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        data = None
                    if data is not None:
                        last_heard, pinged = now, False
                        if data:
                            self.ws.receive_data(data)
                        else:
                            self.ws.receive_eof()
                        if not self._deliver():
                            return
                if local in ready:
                    data = local.recv(CHUNK)
                    if not data:
                        self.ws.send_close()
                        self._flush()
                        return
                    for frame in self.decoder.feed(data):
                        self.ws.send_binary(protocol.encode(frame.channel, frame.payload))
                    self._flush()
        except (OSError, ProtocolError):
            pass
        finally:
            self._finish()

    def _deliver(self) -> bool:
        """Pass the daemon's messages on; answer its pings. False once it closed."""
        for event in self.ws.events_received():
            if isinstance(event, Frame) and event.opcode in (Opcode.BINARY, Opcode.CONT):
                self.fragments.append(event.data)
                if event.fin:
                    message = b"".join(self.fragments)
                    self.fragments.clear()
                    self.local.sendall(message)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.fragments.clear()  # not a frame of ours: skipped, as before
            elif isinstance(event, Response):  # pragma: no cover - only during the handshake
                pass
        self._flush()
        if self.ws.close_rcvd is not None and self.ws.close_rcvd.code == 1008:
            self.close_reason = self.ws.close_rcvd.reason
        return self.ws.state is State.OPEN

    def _flush(self) -> None:
        """Write what the protocol has to send, waiting while the socket is full."""
        for data in self.ws.data_to_send():
            if not data:  # the protocol's "half-close now"
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)
                continue
            view = memoryview(data)
            while view:
                try:
                    sent = self.sock.send(view)
                except (ssl.SSLWantWriteError, BlockingIOError):
                    select.select([], [self.sock], [], PING_TIMEOUT)
                    continue
                except ssl.SSLWantReadError:
                    select.select([self.sock], [], [], PING_TIMEOUT)
                    continue
                view = view[sent:]

    def _finish(self) -> None:
        with contextlib.suppress(OSError):
            if self.close_reason:
                error = {"code": "permission_denied", "message": self.close_reason}
                self.local.setblocking(True)
                self.local.sendall(protocol.encode_control({"event": "error", "error": error}))
            self.local.shutdown(socket.SHUT_WR)
        for s in (self.local, self.sock):
            with contextlib.suppress(OSError):
                s.close()
