"""The client side: ``tachi --host wss://…`` and ``Client(url=…)``.

The core's clients speak frames over a stream socket. This module connects
with the ``websockets`` client, verifies the daemon's certificate (CA file,
pinned fingerprint, or an identity plugin's ``tachi_client_tls`` /
``tachi_verify_server``), and bridges the WebSocket to one end of a
``socketpair`` with two threads: one frame per binary message.
"""

from __future__ import annotations

import contextlib
import hmac
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

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


def open_connection(url: str, options: dict[str, Any]) -> socket.socket:
    """A local socket carrying frames to and from the daemon at ``url``.

    Raises ``DaemonUnavailable`` (can't reach) or ``PermissionDenied`` (TLS,
    fingerprint or the daemon refused us), each with one line.
    """
    parts = urlsplit(url)
    target = url if parts.path not in ("", "/") else url.rstrip("/") + WS_PATH
    tls = parts.scheme == "wss"
    try:
        ws = connect(
            target,
            ssl=client_context(url, options) if tls else None,
            open_timeout=float(options.get("timeout", 30)),
            proxy=None,
            # Deflate costs more CPU than it saves on a LAN; opt in with
            # TACHI_WS_COMPRESSION=1 on slow links (browsers always offer it).
            compression="deflate" if options.get("compression") else None,
            max_size=protocol.MAX_PAYLOAD * 4 + protocol.HEADER.size,
            ping_interval=20,
            ping_timeout=40,
            # Held open by the bridge threads rather than a with-block.
            legacy=True,
        )
    except ssl.SSLCertVerificationError as exc:
        raise PermissionDenied(
            f"cannot verify the daemon at {url}: {exc.verify_message};"
            " pin it with --fingerprint SHA256:… or give --ca-file"
        ) from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise PermissionDenied(
            f"the daemon at {url} refused the connection (HTTP {status})"
        ) from None
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise DaemonUnavailable(f"cannot reach {url}: {exc}") from None
    if tls:
        sslsock = ws.socket
        assert isinstance(sslsock, ssl.SSLSocket)
        der = sslsock.getpeercert(binary_form=True) or b""
        try:
            verify_server(url, options, der)
        except BaseException:
            ws.close()
            raise
    ours, theirs = socket.socketpair()
    threading.Thread(target=_to_local, args=(ws, theirs), daemon=True).start()
    threading.Thread(target=_to_remote, args=(ws, theirs), daemon=True).start()
    return ours


def _to_local(ws: ClientConnection, local: socket.socket) -> None:
    """Daemon → client: each message is a frame, written as bytes."""
    try:
        for message in ws:
            if isinstance(message, bytes):
                local.sendall(message)
    except (ConnectionClosed, OSError):
        pass
    finally:
        reason = ws.close_reason if ws.close_code == 1008 else ""
        with contextlib.suppress(OSError):
            if reason:
                error = {"code": "permission_denied", "message": reason}
                local.sendall(protocol.encode_control({"event": "error", "error": error}))
            local.shutdown(socket.SHUT_WR)


def _to_remote(ws: ClientConnection, local: socket.socket) -> None:
    """Client → daemon: the byte stream cut into frames, one message each."""
    decoder = protocol.FrameDecoder(max_payload=protocol.MAX_PAYLOAD)
    try:
        while data := local.recv(256 * 1024):
            for frame in decoder.feed(data):
                ws.send(protocol.encode(frame.channel, frame.payload))
    except (ConnectionClosed, OSError, ProtocolError):
        pass
    finally:
        ws.close()
        with contextlib.suppress(OSError):
            local.close()
