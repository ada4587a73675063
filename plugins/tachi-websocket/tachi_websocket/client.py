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

``tachi attach`` skips the bridge too: it asks for ``options["inline"]`` and
gets a :class:`WebSocketStream`, the same protocol spoken on its own thread
over the TLS socket its loop selects on.
"""

from __future__ import annotations

import contextlib

# A host name is encoded with the idna codec to be resolved: imported here, the
# warm CLI has it loaded (3-5 ms a command otherwise, with stringprep and unicodedata).
import encodings.idna  # noqa: F401
import functools
import hmac
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
from tachi.client.message_stream import MessageStream
from tachi.errors import DaemonUnavailable, PermissionDenied, ProtocolError
from tachi_websocket import keeper
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
        return pinned_context()
    return verifying_context(options.get("ca_file"))


@functools.cache
def pinned_context() -> ssl.SSLContext:
    """The context for a pinned daemon: no chain check (the pin is the check).
    One per process: the first ``SSLContext`` of a process costs ~1.4 ms
    (OpenSSL's set-up), and the warm CLI makes it before it forks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@functools.cache
def verifying_context(ca_file: str | None) -> ssl.SSLContext:
    """The context that checks the daemon's chain against ``ca_file``, or the
    system's CA store: built once per process, because reading the store costs
    ~20 ms, every remote command's. The warm CLI builds the system one before
    it forks, so its commands share it (a CA store changed since the warm CLI
    started is read by the next one: ``tachi daemon restart``)."""
    return ssl.create_default_context(cafile=ca_file)


def warm() -> None:
    """For the warm CLI, before it forks: the contexts every remote command
    would otherwise build again."""
    pinned_context()
    verifying_context(None)


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
#: The most plaintext one TLS record carries (one ``SSLSocket.recv`` returns at most one).
TLS_RECORD = 16384


def _handshake_error(url: str, exc: BaseException | None) -> Exception:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return PermissionDenied(f"the daemon at {url} refused the connection (HTTP {status})")
    return DaemonUnavailable(f"cannot reach {url}: {exc or 'the WebSocket handshake failed'}")


def open_connection(url: str, options: dict[str, Any]) -> socket.socket | WebSocketStream:
    """A local socket carrying frames to and from the daemon at ``url``: from
    the connection keeper when ``keeper.enabled(options)`` (one-shot CLI
    commands by default; see ``tachi_websocket.keeper``), else connected here.
    With ``options["inline"]`` (a caller that reads promptly, on one thread:
    ``tachi attach``, a CLI command the keeper cannot serve), a
    :class:`WebSocketStream`: the socket calls of a frame stream, spoken as
    WebSocket on the caller's thread, no socketpair, no bridge; otherwise a
    socketpair bridged by a thread.

    Raises ``DaemonUnavailable`` (can't reach) or ``PermissionDenied`` (TLS,
    fingerprint or the daemon refused us), each with one line.
    """
    if keeper.enabled(options):
        kept = keeper.connect(url, options)
        if kept is not None:
            return kept
    if options.get("inline"):
        return WebSocketStream(*connect_websocket(url, options))
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


class WebSocketStream(MessageStream):
    """The daemon's WebSocket as a frame stream with the socket calls
    ``tachi.client.wire.WireConnection`` makes (``sendall``, ``recv``,
    ``recv_into``, ``settimeout``, ``fileno``, ``close``), spoken on the
    caller's thread: a keystroke is one ``send_binary`` and one TLS write, an
    echo one TLS read, with no socketpair, bridge thread or extra hand-off.

    ``fileno()`` is the TLS socket's own descriptor, so a caller may
    ``select()`` on it; that is sound because every read takes all that the
    TLS layer holds (``SSLSocket.pending()``) and hands out every whole
    message before it returns less than asked. Pings from the daemon are
    answered as they are read, so the caller must read promptly whenever the
    descriptor is readable (``tachi attach`` does; an idle ``Client`` would
    not, which is why this is opt-in). A watchdog thread, off the data path,
    pings a daemon silent for ``PING_INTERVAL`` and shuts the socket down
    after ``PING_TIMEOUT`` of silence, so the caller sees the end and
    reconnects, as it did with the bridge.
    """

    def __init__(self, sock: socket.socket, ws: ClientProtocol) -> None:
        super().__init__()
        self._sock = sock
        self._ws = ws
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._fragments: list[bytes] = []
        self._heard = time.monotonic()
        self._closed = threading.Event()
        #: What one read takes from the socket, kept: ``recv(CHUNK)`` made
        #: (and shrank) a 256 KiB bytes object for every echo.
        self._buffer = memoryview(bytearray(CHUNK))
        sock.setblocking(False)
        # What came with the handshake's answer (the hello's reply, say).
        self._take_events()
        threading.Thread(target=self._watch, name="tachi-ws-watchdog", daemon=True).start()

    # -- the socket calls ----------------------------------------------------
    def fileno(self) -> int:
        return self._sock.fileno()

    def pending(self) -> int:
        """Bytes received and decoded but not handed out yet (``select()`` on
        ``fileno()`` does not see them): as ``SSLSocket.pending()``."""
        inbox = self._inbox
        if not inbox:  # attach asks before every select(): mostly so
            return 0
        return sum(len(m) for m in inbox) - self._offset

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``, whole tachi frames, one binary message each.
        Raises ``OSError`` once the connection is gone."""
        data = bytes(data)
        with self._lock:
            if self._ws.state is not State.OPEN:
                raise BrokenPipeError("the WebSocket connection is closed")
            _channel, length = protocol.HEADER.unpack_from(data)
            if len(data) == protocol.HEADER.size + length:
                self._ws.send_binary(data)  # the usual case: exactly one frame
            else:
                decoder = protocol.FrameDecoder(max_payload=protocol.MAX_PAYLOAD * 4)
                for frame in decoder.feed(data):
                    self._ws.send_binary(protocol.encode(frame.channel, frame.payload))
                if decoder.pending:
                    raise ProtocolError("sendall takes whole frames")
            self._flush()

    def close(self) -> None:
        """Say goodbye (a close frame, if the socket takes it now) and close."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            with contextlib.suppress(OSError, ssl.SSLError):
                if self._ws.state is State.OPEN:
                    self._ws.send_close()
                    self._flush(wait=False)
            with contextlib.suppress(OSError):
                self._sock.close()

    # -- inside ------------------------------------------------------------------
    def _read(self) -> None:
        """Everything the socket and the TLS layer hold now, through the protocol
        (without blocking; the lock held)."""
        sock, ws, buffer = self._sock, self._ws, self._buffer
        got = 0
        while True:
            try:
                n = sock.recv_into(buffer, CHUNK)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                break
            except ssl.SSLWantWriteError:  # pragma: no cover - renegotiation only
                break
            except (OSError, ssl.SSLError):
                n = 0
            if not n:
                got = got or 1
                ws.receive_eof()
                break
            got += n
            ws.receive_data(buffer[:n])  # copied into the protocol's own buffer
            # Never leave bytes the TLS layer decrypted behind: the kernel no
            # longer shows them to select(). Read on after a full TLS record (a
            # flood) up to CHUNK; after a short one (an echo) the next read
            # would only fail, an exception and a system call for nothing.
            if self._tls and sock.pending():  # type: ignore[attr-defined]
                continue
            if got >= CHUNK or n < (TLS_RECORD if self._tls else CHUNK):
                break
        if got:
            self._heard = time.monotonic()
            self._take_events()

    def _take_events(self) -> None:
        """Queue the daemon's messages, answer its pings; mark the end once it closed."""
        ws = self._ws
        for event in ws.events_received():
            if not isinstance(event, Frame):  # pragma: no cover - the handshake's Response
                continue
            if event.opcode in (Opcode.BINARY, Opcode.CONT):
                if event.fin and not self._fragments:
                    self._inbox.append(event.data)
                else:
                    self._fragments.append(event.data)
                    if event.fin:
                        self._inbox.append(b"".join(self._fragments))
                        self._fragments.clear()
            elif event.opcode is Opcode.TEXT:
                self._fragments.clear()  # not a frame of ours: skipped
        # Not contextlib.suppress: this runs for every message an attached
        # client receives, and that is an object and two Python calls more.
        try:  # noqa: SIM105
            self._flush()  # pongs, the closing handshake
        except (OSError, ssl.SSLError):
            pass
        if ws.state is not State.OPEN and not self._eof:
            self._eof = True
            close = ws.close_rcvd
            if close is not None and close.code == 1008:
                error = {"code": "permission_denied", "message": close.reason}
                self._inbox.append(protocol.encode_control({"event": "error", "error": error}))
            # Closed now, as the bridge did: a daemon on its way out waits for
            # the end of the TCP connection (asyncio's TLS shutdown waits up to
            # 30 s), and a reconnecting caller does not read this one again.
            self._closed.set()
            with contextlib.suppress(OSError):
                self._sock.close()

    def _flush(self, wait: bool = True) -> None:
        """Write what the protocol has to send (the lock held), waiting while
        the socket is full unless not ``wait``."""
        for data in self._ws.data_to_send():
            if not data:  # the protocol's "half-close now"
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._sock, socket.SHUT_WR)
                continue
            view = memoryview(data)
            while view:
                try:
                    sent = self._sock.send(view)
                except (ssl.SSLWantWriteError, BlockingIOError):
                    if not wait or not select.select([], [self._sock], [], PING_TIMEOUT)[1]:
                        raise TimeoutError("the daemon does not take what is sent") from None
                    continue
                except ssl.SSLWantReadError:  # pragma: no cover - renegotiation only
                    select.select([self._sock], [], [], PING_TIMEOUT)
                    continue
                view = view[sent:]

    def _watch(self) -> None:
        """Ping a silent daemon; after ``PING_TIMEOUT`` of silence, shut the
        socket down so that the reader sees the end (and reconnects)."""
        pinged = False
        while not self._closed.wait(PING_INTERVAL / 4):
            silent = time.monotonic() - self._heard
            try:
                speaking = silent >= PING_INTERVAL and select.select([self._sock], [], [], 0)[0]
            except (OSError, ValueError):  # closed meanwhile
                return
            if speaking:
                # The daemon speaks; the reader is only busy (a terminal that
                # does not take output): not a dead connection.
                self._heard = time.monotonic()
                continue
            if silent < PING_INTERVAL:
                pinged = False
                continue
            with self._lock:
                if self._closed.is_set() or self._eof:
                    return
                try:
                    if silent > PING_TIMEOUT:
                        # The base class's: SSLSocket.shutdown would drop the
                        # TLS object under the reader's feet.
                        socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                        return
                    if not pinged:
                        self._ws.send_ping(b"")
                        self._flush(wait=False)
                        pinged = True
                except (OSError, ssl.SSLError):
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
                    return
