"""The NATS transport: tachi's protocol frames over NATS subjects, so that a
host that only dials out to NATS can be reached by ``tachi --host nats://…``.

Routing (``PREFIX`` = ``[fleet] prefix``, ``HOST`` = ``[fleet] host``)::

    client ── request PREFIX.connect.HOST ──────────▶ daemon   (reply: id, window, heartbeat)
    client ── PREFIX.conn.HOST.ID.up   (frames in) ─▶ daemon
    client ◀─ PREFIX.conn.HOST.ID.down (frames out) ─ daemon

``ID`` is 144 random bits chosen by the daemon: a NATS user that may publish
on ``PREFIX.conn.HOST.*.up`` but not read the connect replies cannot guess a
live connection. The host is in every subject so that NATS subject
permissions can limit a user to some hosts.

Every NATS message of a virtual connection is an envelope: ``kind`` (DATA,
ACK, PING, CLOSE), ``offset`` (the DATA bytes its sender sent before it: the
sequence number, counted in bytes as TCP does) and ``ack`` (the DATA bytes of
the other direction this side has taken). NATS core does not redeliver: a
DATA message lost (a server restart, a slow consumer) shows as a gap in the
offsets, and the virtual connection is then ended cleanly (the CLI sees the
end after whole frames) rather than go on with a hole in the stream; ``tachi
attach`` reconnects and resumes by output offset as over WebSocket. A lost
PING or ACK costs nothing (acknowledgements are cumulative and ride on every
message), so a NATS restart while nothing is in flight goes unnoticed.

Credits: a side sends at most ``window`` DATA bytes ahead of the other's
``ack``. The client acknowledges output once it has handed it to the CLI, so a
slow client holds its own output back in its ``Wire``, where the core's
``client_buffer`` resynchronises it as on any transport; the PTY and the other
clients never wait for it. The daemon acknowledges input only while the
connection reads (``FrameInbox`` not paused), so a client that pipelines
requests and never reads is stopped after ``window`` bytes, and a client that
sends past its credit is disconnected.

Heartbeats: each side sends a PING when it has sent nothing for ``heartbeat``
seconds, and ends the connection when it has heard nothing for three times
that.

Identity is never taken from NATS: the daemon authenticates the peer at the
protocol's hello (a share or daemon token) exactly as on WebSocket, or by the
SPIFFE SVID the client proved first by signing this connection's handshake
(``tachi_nats.identity``; kind PROOF, before any DATA). The
``Peer``'s address is the relay's (the NATS server's IP as this daemon reaches
it): the daemon-wide ``allow_ip``/``deny_ip`` rules, a grant's ``allowIps`` and
the refusal throttle (issue 26 F5) see every NATS client as that one address,
since the client's own address is not known to the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tachi.errors import InvalidRequest, PermissionDenied

if TYPE_CHECKING:
    from tachi.core.peer import Peer
    from tachi.daemon.server import Daemon
    from tachi_nats.settings import FleetSettings

log = logging.getLogger("tachi.nats")

#: kind, seq, offset, ack: the header of every message of a virtual connection
#: (authenticated with the body; ``seq`` only grows, so a replay is refused).
ENVELOPE = struct.Struct(">BIQQ")
#: What the key derivation binds (with both public keys and the connection id).
KDF_LABEL = b"tachi-nats-e2e-v1"
DATA, ACK, PING, CLOSE = 1, 2, 3, 4
#: An SVID proof (client: its proof, before any DATA; daemon: the verdict).
PROOF = 5
#: The nonce that seals the daemon's SVID proof in the connect reply (messages
#: of the connection count from 1, so it is never used twice with a key).
REPLY_NONCE = 0
REPLY_AAD = b"tachi-nats-svid-reply"
#: Wire version of the virtual connection (the connect request and reply say it).
VERSION = 1
#: DATA bytes a side may send ahead of the other's acknowledgement, by default.
WINDOW = 256 * 1024
#: The most DATA bytes in one NATS message (well under NATS' default 1 MiB).
MAX_MESSAGE = 64 * 1024
#: Seconds of silence before a PING; three times that without a word ends it.
HEARTBEAT = 5.0
#: Virtual connections one daemon serves at once through NATS.
MAX_CONNECTIONS = 1024
#: Seconds a new connection has to send its hello (at most; five heartbeats if
#: that is less): a connection that only PINGs must not hold a slot.
HELLO_SECONDS = 10.0


class Broken(Exception):
    """The virtual connection cannot go on (a gap, a credit overrun, a bad envelope)."""


def subjects(prefix: str, host: str, conn_id: str = "*") -> tuple[str, str, str]:
    """(connect subject, up subject, down subject) for ``host`` and ``conn_id``."""
    base = f"{prefix}.conn.{host}.{conn_id}"
    return f"{prefix}.connect.{host}", f"{base}.up", f"{base}.down"


def options_of(settings: FleetSettings) -> tuple[bool, int, float]:
    """(serve, window, heartbeat) from ``[fleet]``: ``serve = false`` turns the
    transport off; ``window`` in bytes; ``heartbeat`` in seconds. Raises
    ``InvalidRequest`` naming the key."""
    raw = settings.raw
    serve = raw.get("serve", True)
    if not isinstance(serve, bool):
        raise InvalidRequest("[fleet] serve: true or false")
    window = raw.get("window", WINDOW)
    if not isinstance(window, int) or not 16 * 1024 <= window <= 16 << 20:
        raise InvalidRequest("[fleet] window: bytes between 16384 and 16777216")
    heartbeat = raw.get("heartbeat", HEARTBEAT)
    if not isinstance(heartbeat, int | float) or not 0.2 <= heartbeat <= 300:
        raise InvalidRequest("[fleet] heartbeat: seconds between 0.2 and 300")
    return serve, window, float(heartbeat)


class Channel:
    """Offsets, credits and heartbeat clocks of one virtual connection, the same
    on both sides. ``publish`` sends one NATS message; it is awaited right after
    the offset is taken (nats-py queues it before its first suspension), so
    messages leave in order whichever task sends them."""

    def __init__(
        self,
        publish: Callable[[bytes], Awaitable[None]],
        window: int,
        keys: SessionKeys | None = None,
    ) -> None:
        self._publish = publish
        self.window = window
        self.keys = keys
        #: Messages sent and received (for the record: order is checked by offset).
        self.out_seq = 0
        self.in_seq = 0
        #: DATA bytes sent, and of those the other side acknowledged.
        self.sent = 0
        self.peer_acked = 0
        #: DATA bytes received, of those handed on (what may be acknowledged),
        #: and the acknowledgement last sent.
        self.received = 0
        self.consumed = 0
        self.acked = 0
        self.last_heard = time.monotonic()
        self.last_sent = time.monotonic()
        #: Set whenever the other side acknowledges something (credits free up).
        self.progress = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return self.sent - self.peer_acked

    def receive(self, message: bytes) -> tuple[int, bytes]:
        """(kind, body) of ``message``. Raises ``Broken`` for a gap, a bad
        acknowledgement or DATA past the credit given."""
        if len(message) < ENVELOPE.size:
            raise Broken("a message shorter than its envelope")
        kind, seq, offset, ack = ENVELOPE.unpack_from(message)
        if seq <= self.in_seq:
            raise Broken(f"message {seq} came again or out of order (after {self.in_seq})")
        body = message[ENVELOPE.size :]
        if self.keys is not None:
            body = self.keys.open(seq, body, message[: ENVELOPE.size])
        if offset != self.received:
            raise Broken(
                f"{offset - self.received} bytes were lost on the way (NATS does not"
                " redeliver): this connection cannot go on"
            )
        self.in_seq = seq
        if not self.peer_acked <= ack <= self.sent:
            raise Broken(f"acknowledged {ack} bytes of {self.sent} sent")
        if ack != self.peer_acked:
            self.peer_acked = ack
            self.progress.set()
        self.last_heard = time.monotonic()
        if kind == DATA:
            self.received += len(body)
            if self.received - self.acked > self.window:
                raise Broken(
                    f"sent {self.received - self.acked} bytes past a {self.window}-byte credit"
                )
        elif kind not in (ACK, PING, CLOSE, PROOF):
            raise Broken(f"unknown message kind {kind}")
        return kind, body

    def should_ack(self) -> bool:
        """Whether enough was taken since the last acknowledgement to send one
        now (a quarter of the window: the sender never stalls on it)."""
        return self.consumed - self.acked >= self.window // 4

    def seal(self, kind: int, body: bytes = b"") -> bytes:
        """The next message, counted as sent: the caller must send it before it
        seals another (offsets and ``seq`` only grow)."""
        self.out_seq += 1
        self.acked = self.consumed
        offset = self.sent
        if kind == DATA:
            self.sent += len(body)
        self.last_sent = time.monotonic()
        header = ENVELOPE.pack(kind, self.out_seq, offset, self.consumed)
        if self.keys is not None:
            body = self.keys.seal(self.out_seq, body, header)
        return header + body

    async def send(self, kind: int, body: bytes = b"") -> None:
        await self._publish(self.seal(kind, body))


class SessionKeys:
    """ChaCha20-Poly1305 keys of one virtual connection, one per direction, from
    the handshake (:func:`daemon_handshake`, :func:`client_keys`). Every body is
    sealed with its header as associated data, the message's ``seq`` as nonce."""

    def __init__(self, send_key: bytes, receive_key: bytes, binding: bytes = b"") -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self._send = ChaCha20Poly1305(send_key)
        self._receive = ChaCha20Poly1305(receive_key)
        #: What an SVID proof signs (``tachi_nats.identity``): the transcript's
        #: hash and a value derived from the key exchange, the same on both ends
        #: of this connection and on no other.
        self.binding = binding

    def seal(self, seq: int, body: bytes, header: bytes) -> bytes:
        return self._send.encrypt(seq.to_bytes(12, "big"), body, header)

    def open(self, seq: int, body: bytes, header: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._receive.decrypt(seq.to_bytes(12, "big"), body, header)
        except InvalidTag:
            raise Broken("a message failed authentication (altered on the way?)") from None


def _x25519_public(raw: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return X25519PublicKey.from_public_bytes(raw)


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(public: bytes) -> str:
    """``SHA256:…`` of a daemon's transport public key, as ``--fingerprint`` takes it."""
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(public).digest()).decode().rstrip("=")


def _derive(dh1: bytes, dh2: bytes, transcript: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(client-to-daemon key, daemon-to-client key, key confirmation, binding).
    HKDF's first 96 bytes do not depend on the length asked for, so the keys and
    confirmation are what they were before the binding was added."""
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(algorithm=hashes.SHA256(), length=128, salt=None, info=transcript).derive(dh1 + dh2)
    binding = hashlib.sha256(transcript).digest() + okm[96:]
    return okm[:32], okm[32:64], okm[64:96], binding


def daemon_handshake(
    static: Any, client_public: bytes, conn_id: str
) -> tuple[SessionKeys, dict[str, str]]:
    """The daemon's half: keys from its long-term X25519 key ``static``, a fresh
    ephemeral one and the client's ephemeral ``client_public``; and what the
    reply carries. Only the holder of ``static`` can compute the confirmation,
    which is how the daemon proves its key. ``ValueError`` for a bad key."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if len(client_public) != 32:
        raise ValueError("the client's key is not an X25519 public key")
    peer = _x25519_public(client_public)
    ephemeral = X25519PrivateKey.generate()
    static_pub, eph_pub = _raw_public(static), _raw_public(ephemeral)
    transcript = KDF_LABEL + client_public + static_pub + eph_pub + conn_id.encode()
    up, down, confirm, binding = _derive(
        static.exchange(peer), ephemeral.exchange(peer), transcript
    )
    b64 = base64.b64encode
    reply = {
        "key": b64(static_pub).decode(),
        "eph": b64(eph_pub).decode(),
        "confirm": b64(confirm).decode(),
    }
    return SessionKeys(down, up, binding), reply


def client_handshake(want_id: bool = False) -> tuple[Any, dict[str, Any]]:
    """A fresh ephemeral key and the connect request that carries it; with
    ``want_id``, the request asks the daemon to prove its SPIFFE SVID."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    ephemeral = X25519PrivateKey.generate()
    request: dict[str, Any] = {
        "version": VERSION,
        "key": base64.b64encode(_raw_public(ephemeral)).decode(),
    }
    if want_id:
        request["svid"] = True
    return ephemeral, request


def open_reply_proof(keys: SessionKeys, reply: dict[str, Any]) -> bytes | None:
    """The daemon's SVID proof sealed in the connect ``reply`` (``None``: there is
    none). Raises ``PermissionDenied`` if it does not open with this
    connection's key (not made by the daemon we exchanged keys with)."""
    import base64

    sealed = reply.get("svid")
    if sealed is None:
        return None
    try:
        return keys.open(REPLY_NONCE, base64.b64decode(str(sealed), validate=True), REPLY_AAD)
    except (Broken, ValueError):
        raise PermissionDenied(
            "the daemon's SVID proof does not open with this connection's key"
        ) from None


def client_keys(
    ephemeral: Any, reply: dict[str, Any], pinned: str | None
) -> tuple[SessionKeys, str]:
    """The client's half: (keys, the daemon's key fingerprint). Raises
    ``PermissionDenied`` when the daemon did not prove the key it named, or
    named another key than ``pinned``."""
    import base64
    import hmac

    try:
        static_pub = base64.b64decode(reply["key"], validate=True)
        eph_pub = base64.b64decode(reply["eph"], validate=True)
        confirm = base64.b64decode(reply["confirm"], validate=True)
        client_pub = _raw_public(ephemeral)
        transcript = KDF_LABEL + client_pub + static_pub + eph_pub + str(reply["id"]).encode()
        up, down, expected, binding = _derive(
            ephemeral.exchange(_x25519_public(static_pub)),
            ephemeral.exchange(_x25519_public(eph_pub)),
            transcript,
        )
    except (KeyError, ValueError, TypeError):
        raise PermissionDenied("the daemon's answer carries no usable key") from None
    fingerprint = key_fingerprint(static_pub)
    if not hmac.compare_digest(confirm, expected):
        raise PermissionDenied(
            f"the answer did not prove the key {fingerprint} it names (a relay in the middle?)"
        )
    if pinned:
        import hashlib

        want = pinned.removeprefix("SHA256:")
        have = base64.b64encode(hashlib.sha256(static_pub).digest()).decode().rstrip("=")
        if not hmac.compare_digest(want.rstrip("="), have):
            raise PermissionDenied(
                f"the daemon presented transport key {fingerprint}, not the pinned {pinned}"
            )
    return SessionKeys(up, down, binding), fingerprint


def load_key(path: Any) -> Any:
    """The daemon's long-term X25519 key at ``path`` (made, 0600, on first use)."""
    import os

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    try:
        return X25519PrivateKey.from_private_bytes(path.read_bytes())
    except FileNotFoundError:
        pass
    key = X25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return key


class NatsWire:
    """``tachi.core.clients.Wire`` of one virtual connection (daemon side): what
    the daemon writes is queued and sent by one task within the client's credit.
    ``buffered()`` counts what the client has not acknowledged, so the core's
    limits see a slow client exactly as they see a full socket."""

    def __init__(self, conn: VirtualConnection) -> None:
        self._conn = conn
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._pump())

    def write(self, data: bytes) -> None:
        if self._closed or self._conn.ended:
            return
        if not self._queue and self._send_now(data):
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        self._wake.set()

    def buffered(self) -> int:
        if self._conn.ended:
            return 0  # nothing more is sent: nothing waits
        return self._queued + self._conn.channel.in_flight

    async def drained(self) -> None:
        channel = self._conn.channel
        channel.progress.clear()
        if self._conn.ended or self.buffered() == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.progress.wait(), 1.0)

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _send_now(self, data: bytes) -> bool:
        """Seal and write ``data`` at once when it fits one message and the
        client's credit and NATS takes it now: an echo then leaves within the
        PTY's callback, not one loop iteration later from the pump's task."""
        channel = self._conn.channel
        if len(data) > MAX_MESSAGE or channel.window - channel.in_flight < len(data):
            return False
        nc = self._conn.transport.nc
        if nc is None or not nc.can_write_now():
            return False
        return bool(nc.write_now(self._conn.down, channel.seal(DATA, bytes(data))))

    def _take(self, limit: int) -> bytes:
        """Up to ``limit`` queued bytes, in order."""
        parts: list[bytes] = []
        size = 0
        while self._queue and size < limit:
            head = self._queue[0]
            room = limit - size
            if len(head) <= room:
                parts.append(self._queue.popleft())
                size += len(head)
            else:
                parts.append(head[:room])
                self._queue[0] = head[room:]
                size = limit
        self._queued -= size
        return b"".join(parts)

    async def _pump(self) -> None:
        conn, channel = self._conn, self._conn.channel
        try:
            while not conn.ended:
                await self._wake.wait()
                self._wake.clear()
                while self._queue and not conn.ended:
                    room = channel.window - channel.in_flight
                    if room <= 0:
                        channel.progress.clear()
                        await channel.progress.wait()
                        continue
                    await channel.send(DATA, self._take(min(room, MAX_MESSAGE)))
                if self._closed and not self._queue:
                    await conn.end(None)
                    return
        except Exception as exc:  # NATS closed under us, a full reconnect buffer
            await conn.end(f"cannot send through NATS: {exc or type(exc).__name__}")


class VirtualConnection:
    """One client's connection through NATS, served by ``daemon.serve_connection``."""

    def __init__(
        self, transport: NatsTransport, conn_id: str, keys: SessionKeys, peer: Peer
    ) -> None:
        self.transport = transport
        self.id = conn_id
        #: Who the daemon is told the client is: the relay's address; with a
        #: proved SVID, its verified chain too (``Peer.tls_chain``).
        self.peer = peer
        #: ``serve_connection`` runs from the first DATA or an accepted PROOF on:
        #: a proof must come first, so the hello is judged with it.
        self.started = False
        _, self.up, self.down = subjects(transport.prefix, transport.host, conn_id)
        self.channel = Channel(self._publish, transport.window, keys)
        self.ended = False
        self.reason: str | None = None
        self._paused = False
        # Here, not at the top: the client side imports this module too.
        from tachi.daemon.inbox import FrameInbox
        from tachi.daemon.limits import ConnectionLimits

        limits = ConnectionLimits.of(transport.daemon.config)
        self.inbox = FrameInbox(self._pause, self._resume, limits=limits)
        self.wire = NatsWire(self)
        self.task: asyncio.Task[None] | None = None
        self.created = time.monotonic()

    async def _publish(self, data: bytes) -> None:
        nc = self.transport.nc
        if not nc.write_now(self.down, data):
            await nc.publish(self.down, data)

    # -- flow control of the client's input ------------------------------------------
    def _pause(self) -> None:
        self._paused = True

    def _resume(self) -> None:
        self._paused = False
        self.channel.consumed = self.channel.received
        if self.channel.should_ack() and not self.ended:
            self.transport.spawn(self._ack())

    async def _ack(self) -> None:
        with contextlib.suppress(Exception):
            if not self.ended:
                await self.channel.send(ACK)

    def start(self, peer: Peer) -> None:
        """Hand the connection to the daemon as ``peer``."""
        daemon = self.transport.daemon
        assert daemon is not None
        self.started = True
        self.peer = peer
        self.task = asyncio.get_running_loop().create_task(
            daemon.serve_connection(self.wire, self.inbox, peer=peer)
        )
        self.task.add_done_callback(lambda _t: self.transport._served(self))

    def _proof(self, body: bytes) -> None:
        """The client's SVID proof: accepted, the connection is served with its
        verified chain (tachi-spiffe's ``tachi_authenticate`` makes the principal
        at the hello); refused, audited and ended with the reason."""
        from dataclasses import replace

        transport = self.transport
        assert transport.daemon is not None and self.channel.keys is not None
        try:
            spiffe_id, chain = transport.identity.verify(body, self.channel.keys.binding)
        except PermissionDenied as exc:
            transport.daemon.audit_refusal(self.peer, "auth", f"SVID through NATS: {exc.message}")
            verdict = {"error": exc.to_json()}
            transport.spawn(self._refuse(json.dumps(verdict).encode(), exc.message))
            return
        self.start(replace(self.peer, tls_chain=chain))
        transport.spawn(self._say(PROOF, json.dumps({"ok": True, "id": spiffe_id}).encode()))

    async def _say(self, kind: int, body: bytes) -> None:
        with contextlib.suppress(Exception):
            if not self.ended:
                await self.channel.send(kind, body)

    async def _refuse(self, verdict: bytes, reason: str) -> None:
        await self._say(PROOF, verdict)
        await self.end(reason)

    def receive(self, message: bytes) -> None:
        """A message from the client (on the daemon's loop, in order)."""
        if self.ended:
            return
        try:
            kind, body = self.channel.receive(message)
        except Broken as exc:
            self.transport.spawn(self.end(str(exc)))
            return
        if kind == PROOF:
            if self.started:
                self.transport.spawn(self.end("an SVID proof after the hello"))
                return
            self.started = True  # nothing more until the verdict: DATA waits in the inbox
            self._proof(body)
            return
        if kind == DATA and not self.started:
            self.start(self.peer)
        if kind == DATA:
            if not self._paused:
                self.channel.consumed = self.channel.received
            self.inbox.feed(body)
            if self.channel.should_ack() and not self._paused:
                self.transport.spawn(self._ack())
        elif kind == CLOSE:
            self.ended = True
            self.channel.progress.set()
            self.wire.close()
            self.inbox.feed_eof()
            self.transport.forget(self)

    async def end(self, reason: str | None) -> None:
        """End the connection: tell the client (best effort) and the daemon's
        side (its inbox ends); ``reason`` is logged when it is not a clean close."""
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        # Whatever waits for credit or for output to send gives up now.
        self.channel.progress.set()
        self.wire.close()
        if reason:
            log.info("nats connection %s… ended: %s", self.id[:6], reason)
        self.inbox.feed_eof()
        self.transport.forget(self)
        with contextlib.suppress(Exception):
            await self.channel.send(CLOSE, (reason or "").encode()[:200])


class NatsTransport:
    """``[fleet]``: serve tachi connections through NATS (``serve = false`` turns
    it off). Its own NATS connection, on the daemon's loop: frames have to end up
    there anyway, and a hop through the fleet agent's thread would cost every
    keystroke two thread switches."""

    name = "nats"

    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        _, self.window, self.heartbeat = options_of(settings)
        self.prefix = settings.prefix
        self.host = settings.host
        self.nc: Any = None
        self.daemon: Daemon | None = None  # type: ignore[assignment]
        self.relay: str | None = None
        self.key: Any = None
        self.fingerprint: str | None = None
        #: What this daemon can do with SPIFFE SVIDs (set at start).
        self.identity: Any = None
        self.connections: dict[str, VirtualConnection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``nats://SERVER/HOST`` for clients, without any credentials the
        configured URL may carry (this is shown in ``tachi daemon status``)."""
        server = self.settings.servers[0].split("://", 1)[1].split("/", 1)[0]
        return f"nats://{server.rpartition('@')[2]}/{self.host}"

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "connections": len(self.connections),
            "connected": bool(self.nc is not None and self.nc.is_connected),
            "fingerprint": self.fingerprint,
        }

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, conn: VirtualConnection) -> None:
        self.connections.pop(conn.id, None)

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, daemon: Daemon) -> None:
        """Connect in the background (a NATS that is down never delays the daemon)."""
        self.daemon = daemon
        self.key = load_key(daemon.config.state_dir / "fleet" / "transport.key")
        self.fingerprint = key_fingerprint(_raw_public(self.key))
        from tachi_nats.identity import DaemonIdentity

        self.identity = DaemonIdentity.of(daemon)
        if self.identity.unavailable:
            log.debug("nats transport: %s", self.identity.unavailable)
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        from tachi_nats import nats_io

        while True:
            try:
                self.nc = await nats_io.connect(
                    self.settings,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=self._error,
                    reconnected_cb=self._reconnected,
                    # Published while NATS is away: bounded, then the sender sees an
                    # error and ends that connection (every client is bounded by its
                    # window; this is the sum).
                    pending_size=8 << 20,
                )
                break
            except Exception as exc:
                log.debug("nats transport: cannot connect yet: %s", exc)
                await asyncio.sleep(1.0)
        self.relay = _relay_address(self.nc)
        connect_subject, up, _ = subjects(self.prefix, self.host)
        await self.nc.subscribe(connect_subject, cb=self._on_connect)
        # One subscription for every connection's input: no SUB/UNSUB per client.
        sub = await self.nc.subscribe(
            up, cb=self._on_up, pending_msgs_limit=1 << 20, pending_bytes_limit=256 << 20
        )
        # Handed over as nats-py parses them (``receive`` never blocks): no
        # queue and task switch per keystroke.
        self.nc.direct(sub, self._up_now)
        await self.nc.flush(5)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        log.info("nats transport serving %s on %s", self.host, ", ".join(self.settings.servers))

    async def _error(self, exc: Exception) -> None:
        log.debug("nats transport: %s", exc)

    async def _reconnected(self) -> None:
        self.relay = _relay_address(self.nc) or self.relay

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        if self._ticker is not None:
            self._ticker.cancel()
        for conn in list(self.connections.values()):
            await conn.end("the daemon is stopping")
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.flush(1), 1.5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 2)

    # -- NATS callbacks ----------------------------------------------------------------
    async def _on_connect(self, msg: Any) -> None:
        """A client asks for a virtual connection: answer with its id, or why not."""
        assert self.daemon is not None
        if not msg.reply:
            return
        try:
            request = json.loads(msg.data or b"{}")
            if not isinstance(request, dict) or request.get("version") != VERSION:
                raise InvalidRequest(f"this daemon speaks version {VERSION} of the NATS transport")
            if len(self.connections) >= MAX_CONNECTIONS:
                raise PermissionDenied(f"too many connections through NATS ({MAX_CONNECTIONS})")
            if self.relay is None:
                raise PermissionDenied("the daemon cannot tell the NATS server's address")
            peer = self.peer()
            self.daemon.check_address(peer)  # the relay's address, if allow_ip says so
        except (ValueError, InvalidRequest, PermissionDenied) as exc:
            error = (
                exc.to_json()
                if hasattr(exc, "to_json")
                else {"code": "invalid", "message": str(exc)}
            )
            await self.nc.publish(msg.reply, json.dumps({"error": error}).encode())
            return
        conn_id = secrets.token_urlsafe(18)
        try:
            import base64

            client_key = base64.b64decode(str(request.get("key")), validate=True)
            keys, proof = daemon_handshake(self.key, client_key, conn_id)
        except ValueError:
            error = {"code": "invalid", "message": "the connect request carries no usable key"}
            await self.nc.publish(msg.reply, json.dumps({"error": error}).encode())
            return
        reply = {
            "version": VERSION,
            "id": conn_id,
            "window": self.window,
            "heartbeat": self.heartbeat,
            **proof,
        }
        if request.get("svid") is True:
            # The client checks our SVID (--server-id) before it sends a word.
            # Without one the reply says nothing, and such a client refuses us.
            svid = self._svid_proof(keys)
            if svid is not None:
                reply["svid"] = base64.b64encode(keys.seal(REPLY_NONCE, svid, REPLY_AAD)).decode()
        conn = VirtualConnection(self, conn_id, keys, peer)
        self.connections[conn.id] = conn
        await self.nc.publish(msg.reply, json.dumps(reply).encode())

    def _svid_proof(self, keys: SessionKeys) -> bytes | None:
        """Our SVID proof for the connection with ``keys`` (``None``: no SVID, or
        it cannot be read, which is logged)."""
        try:
            return self.identity.prove(keys.binding)
        except InvalidRequest as exc:
            log.warning("nats transport: cannot prove our SVID: %s", exc.message)
            return None

    def _served(self, conn: VirtualConnection) -> None:
        """The daemon is done with ``conn``: flush and close it (its wire's pump
        sends what is queued, then CLOSE)."""
        conn.wire.close()
        if conn.task is not None and not conn.task.cancelled() and conn.task.exception():
            log.error("nats connection failed", exc_info=conn.task.exception())

    async def _on_up(self, msg: Any) -> None:
        conn_id = msg.subject.rsplit(".", 2)[-2]
        conn = self.connections.get(conn_id)
        if conn is not None:
            conn.receive(msg.data)

    def _up_now(self, subject: bytes, data: bytes) -> None:
        conn = self.connections.get(subject.rsplit(b".", 2)[-2].decode(errors="replace"))
        if conn is not None:
            conn.receive(data)

    def peer(self) -> Peer:
        """The peer every NATS client is, to the daemon: transport ``nats`` at the
        relay's address (never a subject or a NATS user name: not an identity)."""
        from tachi.core.peer import Peer

        return Peer(transport=self.name, address=self.relay, extra={"relay": self.url})

    async def _tick(self) -> None:
        """Heartbeats: a PING after ``heartbeat`` s of silence; a client not heard
        for three heartbeats is dropped (and audited, as on WebSocket)."""
        assert self.daemon is not None
        step = min(1.0, self.heartbeat / 2)
        hello_within = min(HELLO_SECONDS, 5 * self.heartbeat)
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            for conn in list(self.connections.values()):
                channel = conn.channel
                if channel.received == 0 and now - conn.created > hello_within:
                    self.daemon.audit_refusal(
                        self.peer(), "connect", f"no hello within {hello_within:g} s (NATS)"
                    )
                    self.spawn(conn.end(f"no hello within {hello_within:g} s"))
                elif now - channel.last_heard > 3 * self.heartbeat:
                    self.daemon.audit_refusal(
                        self.peer(), "connection.heartbeat", "missed three heartbeats (NATS)"
                    )
                    self.spawn(conn.end("missed three heartbeats"))
                elif now - channel.last_sent > self.heartbeat:
                    self.spawn(_ping(conn))


async def _ping(conn: VirtualConnection) -> None:
    with contextlib.suppress(Exception):
        if not conn.ended:
            await conn.channel.send(PING)


def _relay_address(nc: Any) -> str | None:
    """The NATS server's IP address as this process reaches it."""
    try:
        writer = nc._transport._io_writer
        peer = writer.get_extra_info("peername")
        if peer:
            host = str(peer[0])
            return host[7:] if host.startswith("::ffff:") else host
    except AttributeError:
        pass
    try:
        url = nc.connected_url
        return socket.getaddrinfo(url.hostname, url.port or 4222)[0][4][0]
    except (OSError, AttributeError, IndexError, TypeError):
        return None
