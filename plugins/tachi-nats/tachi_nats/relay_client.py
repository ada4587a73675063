"""The client side of the NATS transport: ``tachi --host nats://SERVER/HOST …``.

``open_connection`` asks the host's daemon for a virtual connection (a request
on ``PREFIX.connect.HOST``) and bridges it to one end of a ``socketpair``: the
core's clients then speak frames over a stream socket as with any transport.
The bridge is one thread with its own asyncio loop (nats-py is asyncio only).
``tachi attach`` (``options["inline"]`` and ``["interactive"]``) gets a
:class:`NatsStream` instead, spoken on its own thread (see there why part of
the NATS protocol is spoken here).

The URL: ``nats://[USER:PASSWORD@ | TOKEN@]SERVER[:PORT]/HOST[?prefix=P]``.
Without credentials in the URL, those of the ``[fleet]`` table of this user's
config.toml are used (``creds``, ``nkey_seed``, ``token``, TLS), as for
``tachi fleet …``. NATS credentials only reach the relay: the daemon still
wants a token in the hello (``TACHI_TOKEN``), as over WebSocket, or a SPIFFE
SVID (``--svid-cert``/``--svid-key``) proved by signing the connection's
handshake; ``--server-id`` with ``--trust-bundle`` checks the daemon's SVID the
same way before anything is sent (``tachi_nats.identity``).

Frames are encrypted end to end (``tachi_nats.transport``: X25519 handshake,
ChaCha20-Poly1305); ``--fingerprint SHA256:…`` (``TACHI_FINGERPRINT``) pins
the daemon's transport key, which ``tachi daemon status`` shows. Without a
pin, the key a host presented first is remembered (``STATE/fleet/known_hosts``)
and a different one later is refused, as SSH does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import threading
import time
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tachi import protocol
from tachi.client.endpoint import IDENTITY_OPTIONS
from tachi.client.message_stream import MessageStream
from tachi.errors import DaemonUnavailable, InvalidRequest, TachiError, error_from_json
from tachi_nats.settings import NAME, FleetSettings
from tachi_nats.transport import (
    ACK,
    CLOSE,
    DATA,
    MAX_MESSAGE,
    PING,
    PROOF,
    VERSION,
    Broken,
    Channel,
    client_handshake,
    client_keys,
    open_reply_proof,
    subjects,
)

SCHEMES = ("nats",)
#: How much is read from the CLI's side at once.
CHUNK = 64 * 1024
#: How long closing the socket waits for the goodbye to reach NATS.
GOODBYE_SECONDS = 0.5


def target(url: str) -> tuple[FleetSettings, str]:
    """(settings to connect with, host) for a ``nats://`` URL. Raises
    ``InvalidRequest`` for a URL without a host name."""
    parts = urlsplit(url)
    host = unquote(parts.path.strip("/"))
    if not NAME.match(host or ""):
        raise InvalidRequest(
            f"{url}: name the fleet host after the server: nats://SERVER:4222/HOST"
        )
    query = parse_qs(parts.query)
    base: FleetSettings | None = None
    with contextlib.suppress(TachiError, OSError, ValueError):
        from tachi_nats import settings as settings_mod

        base = settings_mod.load()
    server = f"nats://{parts.hostname}:{parts.port or 4222}"
    if parts.hostname and ":" in parts.hostname:
        server = f"nats://[{parts.hostname}]:{parts.port or 4222}"
    prefix = (query.get("prefix") or [base.prefix if base else "tachi"])[0]
    if not NAME.match(prefix):
        raise InvalidRequest(f"{url}: prefix {prefix!r} is not a subject token")
    if parts.username is not None or base is None:
        user, password = parts.username, parts.password
        settings = FleetSettings(
            servers=[server],
            host="client",
            prefix=prefix,
            user=unquote(user) if user is not None and password is not None else None,
            password=unquote(password) if password is not None else None,
            token=unquote(user) if user is not None and password is None else None,
            tls_ca=base.tls_ca if base else None,
            tls_cert=base.tls_cert if base else None,
            tls_key=base.tls_key if base else None,
        )
    else:
        # The same server in [fleet] url may carry its credentials (USER:PASS@).
        same = [u for u in base.servers if urlsplit(u).netloc.rpartition("@")[2] == parts.netloc]
        settings = replace(base, servers=same[:1] or [server], prefix=prefix, host="client")
    return settings, host


def open_connection(url: str, options: dict[str, Any]) -> socket.socket:
    """A local socket carrying frames to and from the daemon of the fleet host
    that ``url`` names. Raises ``DaemonUnavailable`` (NATS or the host's daemon
    unreachable), ``PermissionDenied`` (refused) or ``InvalidRequest`` (bad URL)."""
    settings, host = target(url)
    timeout = min(float(options.get("timeout", 30)), 10.0)
    identity = _identity_options(options)
    pinned = options.get("fingerprint")
    if options.get("inline") and options.get("interactive") and _inline_possible(settings):
        # ``tachi attach`` reads its connection promptly, on one thread: it
        # speaks the virtual connection there (``NatsStream``), no bridge.
        stream = open_inline(settings, host, url, timeout, pinned, identity)
        if stream is not None:
            return stream  # type: ignore[return-value]
    ours, theirs = socket.socketpair()
    bridge = _Bridge(settings, host, url, theirs, timeout, pinned, identity)
    threading.Thread(target=bridge.run, name="tachi-nats-bridge", daemon=True).start()
    if not bridge.ready.wait(timeout + 2) or bridge.error is not None:
        ours.close()
        bridge.abandon()
        raise bridge.error or DaemonUnavailable(f"cannot reach {url}: timed out")
    sock = _BridgedSocket(ours, bridge)
    return sock


def _identity_options(options: dict[str, Any]) -> dict[str, str]:
    """The SPIFFE options (``--svid-cert``/``--svid-key``: prove our SVID;
    ``--server-id`` with ``--trust-bundle``: check the daemon's), checked for
    what goes together. Raises ``InvalidRequest``."""
    out = {k: str(options[k]) for k in IDENTITY_OPTIONS if options.get(k)}
    if ("svid_cert" in out) != ("svid_key" in out):
        raise InvalidRequest("--svid-cert and --svid-key go together")
    if "server_id" in out and "trust_bundle" not in out:
        raise InvalidRequest(
            "--server-id needs --trust-bundle (the CAs that the daemon's SVID must chain to)"
        )
    return out


class _BridgedSocket(socket.socket):
    """The CLI's end: closing it waits (briefly) for the goodbye to reach the
    daemon, so a command that exits right after does not leave its virtual
    connection to the heartbeat timeout."""

    def __init__(self, sock: socket.socket, bridge: _Bridge) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._bridge = bridge

    def close(self) -> None:
        open_before = self.fileno() >= 0
        super().close()
        if open_before:
            self._bridge.goodbye.wait(GOODBYE_SECONDS)


class _Bridge:
    """One virtual connection, between NATS and the local socketpair."""

    def __init__(
        self,
        settings: FleetSettings,
        host: str,
        url: str,
        local: socket.socket | None,
        timeout: float,
        pinned: str | None = None,
        identity: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.pinned = pinned
        #: ``svid_cert``/``svid_key``/``trust_bundle``/``server_id``, when given.
        self.identity = identity or {}
        self.keys: Any = None
        self.fingerprint: str | None = None
        self.host = host
        self.url = url
        self.local = local
        self.timeout = timeout
        self.ready = threading.Event()
        self.done = threading.Event()
        #: Set once the daemon was told the connection ends (or knows it).
        self.goodbye = threading.Event()
        self.error: TachiError | None = None
        self.reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended: asyncio.Event | None = None
        self._pending = bytearray()
        self._closed_by_daemon = False

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:  # never a traceback from a bridge thread
            if not self.ready.is_set():
                self.error = DaemonUnavailable(f"cannot reach {self.url}: {exc}")
        finally:
            self.ready.set()
            self.goodbye.set()
            with contextlib.suppress(OSError, AttributeError):
                self.local.close()  # type: ignore[union-attr]
            loop.close()
            self.done.set()

    def abandon(self) -> None:
        loop, ended = self._loop, self._ended
        if loop is not None and ended is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ended.set)

    async def _main(self) -> None:
        self._ended = asyncio.Event()
        nc = await self._connect()
        if nc is None:
            return
        try:
            await self._serve(nc)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2)

    async def _connect(self) -> Any:
        """A connected nats-py client, or ``None`` (with ``self.error``)."""
        from tachi_nats import nats_io

        servers = ", ".join(self.settings.servers)
        try:
            nc = await asyncio.wait_for(
                nats_io.connect(
                    self.settings,
                    connect_timeout=min(3, self.timeout),
                    allow_reconnect=True,
                    # nats-py retries a first connect as often as a reconnect: two
                    # tries, so an unreachable NATS is said at once, not after 10 s.
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.25,
                    error_cb=_ignore,
                ),
                self.timeout,
            )
        except Exception as exc:
            self.error = DaemonUnavailable(
                f"cannot reach NATS at {servers}: {str(exc) or type(exc).__name__}"
            )
            return None
        # Through a NATS restart (read at each reconnect): the connection comes
        # back by itself, and the virtual connection goes on unless bytes were lost.
        nc.options["max_reconnect_attempts"] = 120
        return nc

    async def _open(self, nc: Any) -> dict[str, Any] | None:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        connect, _, _ = subjects(self.settings.prefix, self.host)
        server_id = self.identity.get("server_id")
        ephemeral, request = client_handshake(want_id=bool(server_id))
        try:
            msg = await nc.request(connect, json.dumps(request).encode(), timeout=self.timeout)
        except (NoRespondersError, NatsTimeout):
            self.error = DaemonUnavailable(
                f"no tachi daemon answers for host {self.host!r} through NATS at"
                f" {', '.join(self.settings.servers)} (is it running, with [fleet] host ="
                f' "{self.host}"?)'
            )
            return None
        try:
            reply = json.loads(msg.data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self.error = DaemonUnavailable(f"{self.url}: not a tachi daemon's answer")
            return None
        if "error" in reply:
            self.error = error_from_json(reply["error"])
            return None
        if reply.get("version") != VERSION or not isinstance(reply.get("id"), str):
            self.error = DaemonUnavailable(
                f"{self.url}: the daemon speaks another version of the NATS transport"
            )
            return None
        try:
            self.keys, self.fingerprint = client_keys(ephemeral, reply, self.pinned)
            if server_id:
                # Before anything is sent (a token in the hello) and before the
                # daemon's transport key is remembered as this host's.
                from tachi_nats.identity import check_daemon

                check_daemon(
                    open_reply_proof(self.keys, reply),
                    self.keys.binding,
                    server_id,
                    self.identity["trust_bundle"],
                )
            if not self.pinned:
                remember_key(
                    self.settings.servers[0], self.settings.prefix, self.host, self.fingerprint
                )
        except TachiError as exc:
            self.error = exc
            return None
        return reply

    async def _serve(self, nc: Any) -> None:
        assert self.local is not None
        reply = await self._open(nc)
        if reply is None:
            return
        conn_id = reply["id"]
        _, up, down = subjects(self.settings.prefix, self.host, conn_id)
        heartbeat = float(reply.get("heartbeat") or 5.0)

        async def publish(data: bytes) -> None:
            if not nc.write_now(up, data):
                await nc.publish(up, data)

        channel = Channel(publish, int(reply.get("window") or 0) or 256 * 1024, self.keys)
        loop = asyncio.get_running_loop()
        self.local.setblocking(False)
        assert self._ended is not None
        ended = self._ended

        async def on_down(msg: Any) -> None:
            if ended.is_set():
                return
            try:
                kind, body = channel.receive(msg.data)
            except Broken as exc:
                self.reason = str(exc)
                ended.set()
                return
            if kind == DATA:
                self._pending += body
                cut = _whole_frames(self._pending)
                if cut:
                    chunk = bytes(self._pending[:cut])
                    del self._pending[:cut]
                    try:
                        await loop.sock_sendall(self.local, chunk)
                    except OSError:
                        ended.set()
                        return
                # What waits here is at most one frame's tail: acknowledged too, or a
                # frame larger than the window could never complete.
                channel.consumed = channel.received
                if channel.should_ack():
                    await channel.send(ACK)
            elif kind == PROOF:
                if not verdict.done():
                    verdict.set_result(body)
            elif kind == CLOSE:
                self.reason = body.decode(errors="replace") or None
                self._closed_by_daemon = True
                ended.set()

        self._closed_by_daemon = False
        verdict: asyncio.Future[bytes] = loop.create_future()
        sub = await nc.subscribe(down, cb=on_down, pending_bytes_limit=64 << 20)
        await nc.flush(self.timeout)
        if self.identity.get("svid_cert") and not await self._prove(channel, verdict, ended):
            with contextlib.suppress(Exception):
                if not self._closed_by_daemon:  # it would wait for a hello until it gave up
                    await channel.send(CLOSE, b"no SVID proof")
                    await asyncio.wait_for(nc.flush(1), GOODBYE_SECONDS)
                await sub.unsubscribe()
            self.goodbye.set()
            return
        self.ready.set()

        async def upstream() -> None:
            while True:
                try:
                    data = await loop.sock_recv(self.local, CHUNK)
                except OSError:
                    data = b""
                if not data:
                    return
                view = memoryview(data)
                while view:
                    room = channel.window - channel.in_flight
                    if room <= 0:
                        channel.progress.clear()
                        await channel.progress.wait()
                        continue
                    n = min(room, MAX_MESSAGE, len(view))
                    await channel.send(DATA, bytes(view[:n]))
                    view = view[n:]

        async def ticker() -> None:
            step = min(1.0, heartbeat / 2)
            while True:
                await asyncio.sleep(step)
                now = time.monotonic()
                if now - channel.last_heard > 3 * heartbeat:
                    self.reason = f"no word from the daemon for {3 * heartbeat:g} s"
                    return
                if now - channel.last_sent > heartbeat:
                    await channel.send(PING)

        tasks = [loop.create_task(upstream()), loop.create_task(ticker())]
        waiter = loop.create_task(ended.wait())
        try:
            await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, waiter):
                task.cancel()
            await asyncio.gather(*tasks, waiter, return_exceptions=True)
            # The CLI sees the end after whole frames only (the half frame a lost
            # message left is dropped): an error or EOF, never a corrupt frame.
            with contextlib.suppress(OSError):
                self.local.shutdown(socket.SHUT_WR)
            if not self._closed_by_daemon:
                with contextlib.suppress(Exception):
                    await channel.send(CLOSE, (self.reason or "").encode()[:200])
                    await asyncio.wait_for(nc.flush(1), GOODBYE_SECONDS)
            self.goodbye.set()  # the CLI's close() may return now
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _prove(
        self, channel: Channel, verdict: asyncio.Future[bytes], ended: asyncio.Event
    ) -> bool:
        """Prove our SVID as the connection's first message and wait for the
        daemon's verdict; ``False`` (with ``self.error``) when it refused it."""
        from tachi_nats.identity import CLIENT, prove

        assert self.keys is not None
        try:
            body = prove(
                self.identity["svid_cert"], self.identity["svid_key"], CLIENT, self.keys.binding
            )
        except TachiError as exc:
            self.error = exc
            return False
        await channel.send(PROOF, body)
        ender = asyncio.ensure_future(ended.wait())
        try:
            await asyncio.wait(
                [verdict, ender], timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ender.cancel()
        if not verdict.done():
            self.error = DaemonUnavailable(
                f"{self.url}: no answer to our SVID proof"
                + (f" ({self.reason})" if self.reason else "")
            )
            return False
        try:
            answer = json.loads(verdict.result())
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            error = answer.get("error") if isinstance(answer, dict) else None
            self.error = (
                error_from_json(error)
                if isinstance(error, dict)
                else DaemonUnavailable(f"{self.url}: not a tachi daemon's answer to our proof")
            )
            self._closed_by_daemon = True  # it ends the connection itself
            return False
        return True


def _inline_possible(settings: FleetSettings) -> bool:
    """Whether the connection can be spoken on the caller's thread: plain TCP
    to NATS (a TLS session lives in asyncio's memory BIO, which cannot be handed
    over; those connections keep the bridge)."""
    return settings.tls_context() is None


def open_inline(
    settings: FleetSettings,
    host: str,
    url: str,
    timeout: float,
    pinned: str | None,
    identity: dict[str, str],
) -> NatsStream | None:
    """A :class:`NatsStream` to ``host``'s daemon: nats-py connects,
    authenticates and opens the virtual connection (on a loop run here), then
    hands its socket over. ``None`` when it cannot be handed over (NATS asked
    for TLS): the caller bridges instead. Raises as ``open_connection`` does."""
    setup = _Bridge(settings, host, url, None, timeout, pinned, identity)
    loop = asyncio.new_event_loop()
    try:
        stream = loop.run_until_complete(NatsStream._open(setup, loop))
    except BaseException:
        _discard(loop, None)
        raise
    if stream is None:
        _discard(loop, None)
        if setup.error is not None:
            raise setup.error
    return stream


def _discard(loop: asyncio.AbstractEventLoop, transport: Any) -> None:
    """Cancel what nats-py left on ``loop`` (its reader, flusher, pinger), drop
    its transport without a word on the wire, and close the loop."""
    with contextlib.suppress(Exception):
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if transport is not None:
            transport.abort()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    with contextlib.suppress(Exception):
        loop.close()


#: The largest NATS message an inline stream takes: a sealed ``MAX_MESSAGE``
#: with room to spare for its envelope (see ``_parse``).
_MSG_LIMIT = MAX_MESSAGE + 4096


class NatsStream(MessageStream):
    """One virtual connection spoken on the caller's thread (``tachi attach``
    asks for it with ``options["inline"]`` and ``["interactive"]``), with the
    socket calls ``tachi.client.wire.WireConnection`` makes (``sendall``,
    ``recv``, ``recv_into``, ``settimeout``, ``fileno``, ``pending``,
    ``close``): a keystroke is one seal and one ``PUB`` written to the NATS
    socket, an echo one read of it, with no socketpair, bridge thread or
    asyncio loop iteration in between.

    Why part of the NATS protocol is spoken here rather than by nats-py:
    nats-py is asyncio only, and its loop would have to run on a thread of its
    own (the bridge: two thread hand-offs and a socketpair per keystroke and
    per echo, most of the NATS path's cost over WebSocket) or be driven from
    the caller's ``select()``, which asyncio does not support. So nats-py does
    everything but the data path: it connects, authenticates (user, token,
    creds, nkey), opens the virtual connection and proves an SVID; then its
    socket is taken over and only the protocol of one subscriber and
    publisher is spoken: ``PUB`` out, ``MSG`` (``HMSG`` skipped), ``PING``
    (answered), ``PONG``/``+OK``/``INFO``/``-ERR`` in. No reconnect here: a
    NATS restart ends the stream, and attach reconnects and resumes by output
    offset, as after any drop. TLS to NATS is not handed over (asyncio's TLS
    state cannot be): such connections keep the bridge.

    The caller must read promptly whenever ``fileno()`` is readable (NATS'
    PINGs are answered as they are read); ``pending()`` says what was read but
    not handed out. A watchdog thread, off the data path, sends the virtual
    connection's heartbeat and shuts the socket down when the daemon has been
    silent for three heartbeats, so the caller sees the end.
    """

    def __init__(
        self, setup: _Bridge, channel: Channel, up: str, heartbeat: float, sid: int
    ) -> None:
        # ``_lock`` (MessageStream) also guards every socket write and all
        # channel state: the watchdog pings meanwhile.
        super().__init__()
        self._setup = setup
        self._channel = channel
        self._pub = b"PUB %s " % up.encode()
        self._heartbeat = heartbeat
        self._sid = sid
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: Any = None
        #: NATS protocol bytes read, not parsed yet; the MSG whose payload waits.
        self._rbuf = bytearray()
        self._need: tuple[int, int, int] | None = None
        #: Bytes of whole frames in ``_inbox`` not handed out, and the tail of
        #: a frame still coming.
        self._held = 0
        self._partial = bytearray()
        self._closed_by_daemon = False
        self._closed = threading.Event()
        #: During the set-up (nats-py's loop): the daemon's SVID verdict, and its end.
        self._verdict: asyncio.Future[bytes] | None = None
        self._ended: asyncio.Event | None = None

    # -- set-up, on nats-py's loop ------------------------------------------------------
    @staticmethod
    async def _open(setup: _Bridge, loop: asyncio.AbstractEventLoop) -> NatsStream | None:
        nc = await setup._connect()
        if nc is None:
            return None
        handed = False
        try:
            stream = await NatsStream._handshake(setup, nc, loop)
            if stream is not None:
                handed = stream._take_over(nc, loop)
                if not handed:
                    stream = None  # TLS after all: the caller bridges
            return stream
        finally:
            if not handed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 2)

    @staticmethod
    async def _handshake(
        setup: _Bridge, nc: Any, loop: asyncio.AbstractEventLoop
    ) -> NatsStream | None:
        reply = await setup._open(nc)
        if reply is None:
            return None
        _, up, down = subjects(setup.settings.prefix, setup.host, reply["id"])

        async def publish(data: bytes) -> None:
            if not nc.write_now(up, data):
                await nc.publish(up, data)

        channel = Channel(publish, int(reply.get("window") or 0) or 256 * 1024, setup.keys)
        sub = await nc.subscribe(down, cb=_unused, pending_bytes_limit=64 << 20)
        stream = NatsStream(setup, channel, up, float(reply.get("heartbeat") or 5.0), sub._id)
        nc.direct(sub, lambda _subject, data: stream._message(data))
        stream._verdict = loop.create_future()
        stream._ended = asyncio.Event()
        await nc.flush(setup.timeout)
        if setup.identity.get("svid_cert") and not await setup._prove(
            channel, stream._verdict, stream._ended
        ):
            with contextlib.suppress(Exception):
                if not stream._closed_by_daemon and not setup._closed_by_daemon:
                    await channel.send(CLOSE, b"no SVID proof")
                    await asyncio.wait_for(nc.flush(1), GOODBYE_SECONDS)
            return None
        return stream

    def _take_over(self, nc: Any, loop: asyncio.AbstractEventLoop) -> bool:
        """nats-py's socket, and whatever it read but did not parse, become
        ours; its loop is not run again until ``close``. ``False`` (nothing
        taken) for a TLS connection."""
        from nats.protocol.parser import AWAITING_MSG_PAYLOAD

        writer = nc._transport._io_writer
        transport = writer.transport
        if writer.get_extra_info("ssl_object") is not None or nc._pending:
            return False
        if transport.get_write_buffer_size():
            return False
        transport.pause_reading()
        parser = nc._ps
        if parser.state == AWAITING_MSG_PAYLOAD:
            # A MSG whose line nats-py parsed and whose payload it waits for.
            arg = parser.msg_arg
            self._need = (parser.needed, arg["sid"], parser.header_needed)
        self._rbuf += parser.buf
        reader = nc._transport._io_reader
        self._rbuf += reader._buffer
        reader._buffer.clear()
        parser.buf.clear()
        sock = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
        sock.setblocking(False)
        self._sock, self._loop, self._transport = sock, loop, transport
        self._verdict = self._ended = None
        with self._lock:
            self._parse()
        threading.Thread(target=self._watch, name="tachi-nats-watchdog", daemon=True).start()
        return True

    # -- the socket calls -----------------------------------------------------------
    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def pending(self) -> int:
        """Bytes received and decoded but not handed out yet (``select()`` on
        ``fileno()`` does not see them)."""
        return self._held

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (frames; any split) within the daemon's credit,
        waiting for its acknowledgements when the credit is used up. Raises
        ``OSError`` once the connection is gone."""
        view = memoryview(bytes(data))
        channel = self._channel
        while view:
            with self._lock:
                if self._eof:
                    raise BrokenPipeError("the connection through NATS has ended")
                room = channel.window - channel.in_flight
                if room > 0:
                    n = min(room, MAX_MESSAGE, len(view))
                    self._send(DATA, bytes(view[:n]))
                    view = view[n:]
                    continue
                self._read()  # acknowledgements (what else came waits in the inbox)
                if channel.window - channel.in_flight > 0:
                    continue
            select.select([self._sock], [], [], 1.0)

    def close(self) -> None:
        """Say goodbye (CLOSE, unless the daemon ended it) and close."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            if not self._eof and not self._closed_by_daemon:
                with contextlib.suppress(OSError):
                    self._send(CLOSE, (self._setup.reason or "").encode()[:200], wait=False)
            self._eof = True
            if self._sock is not None:
                # Unread bytes at close() would reset the connection, and the
                # goodbye with it: read them first.
                with contextlib.suppress(OSError):
                    while self._sock.recv(CHUNK):
                        pass
                with contextlib.suppress(OSError):
                    self._sock.close()
        if self._loop is not None:
            _discard(self._loop, self._transport)
            self._loop = None

    # -- inside ---------------------------------------------------------------------
    def _take(self, view: memoryview, nbytes: int) -> int:
        """Copy received frames into ``view`` (up to ``nbytes``) and acknowledge
        them; the lock held."""
        n = super()._take(view, nbytes)
        self._held -= n
        channel = self._channel
        # What waits for the rest of its frame is acknowledged too: a frame
        # larger than the window could never complete otherwise.
        channel.consumed = channel.received - self._held
        if channel.should_ack() and not self._eof:
            with contextlib.suppress(OSError):
                self._send(ACK)
        return n

    def _send(self, kind: int, body: bytes = b"", wait: bool = True) -> None:
        message = self._channel.seal(kind, body)
        self._write(b"%s%d\r\n%s\r\n" % (self._pub, len(message), message), wait)

    def _write(self, data: bytes, wait: bool = True) -> None:
        """All of ``data`` to NATS (the lock held), waiting while the socket is
        full (at most a heartbeat's worth of silence at a time)."""
        assert self._sock is not None
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view) :]
            except BlockingIOError:
                if not wait or not select.select([], [self._sock], [], 3 * self._heartbeat)[1]:
                    raise TimeoutError("NATS takes nothing more") from None

    def _read(self) -> None:
        """Everything the socket holds now, parsed (the lock held)."""
        sock = self._sock
        assert sock is not None
        while not self._eof:
            try:
                data = sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self._parse()
                self._end(self._setup.reason or "NATS closed the connection")
                break
            self._rbuf += data
            if len(data) < CHUNK:
                break
        self._parse()

    def _parse(self) -> None:
        """Take the NATS protocol in ``_rbuf`` (the lock held)."""
        buf = self._rbuf
        while not self._eof:
            if self._need is not None:
                total, sid, headers = self._need
                if len(buf) < total + 2:
                    return
                payload = bytes(buf[headers:total])
                del buf[: total + 2]
                self._need = None
                if sid == self._sid and not headers:
                    self._message(payload)
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 64 * 1024:
                    self._end("NATS sent a line too long for its protocol")
                return
            line = bytes(buf[:end])
            del buf[: end + 2]
            op = line.split(b" ", 1)[0].upper()
            try:
                if op in (b"MSG", b"HMSG"):
                    parts = line.split()
                    size = int(parts[-1])
                    if not 0 <= size <= _MSG_LIMIT:
                        # Never held whole: the relay, not the daemon, says how
                        # much is coming, and the daemon sends no message this big.
                        self._end(f"NATS announced a message of {size} bytes")
                        return
                    headers = int(parts[-2]) if op == b"HMSG" else 0
                    self._need = (size, int(parts[2]), headers)
                elif op == b"PING":
                    self._write(b"PONG\r\n")
                elif op == b"-ERR":
                    # The server closes the connection after a fatal one (EOF
                    # follows); a permissions violation only refuses that message.
                    self._setup.reason = "NATS: " + line[5:].decode(errors="replace").strip("' ")
                elif op not in (b"PONG", b"+OK", b"INFO"):
                    self._end(f"NATS sent {line[:40]!r}, not its protocol")
            except (ValueError, IndexError):
                self._end(f"NATS sent a malformed {op.decode(errors='replace')} line")

    def _message(self, data: bytes) -> None:
        """One message of the virtual connection (the lock held, or nats-py's
        loop during the set-up)."""
        if self._eof:
            return
        try:
            kind, body = self._channel.receive(data)
        except Broken as exc:
            self._end(str(exc))
            return
        if kind == DATA:
            self._partial += body
            cut = _whole_frames(self._partial)
            if cut:
                self._inbox.append(bytes(self._partial[:cut]))
                del self._partial[:cut]
                self._held += cut
        elif kind == PROOF:
            if self._verdict is not None and not self._verdict.done():
                self._verdict.set_result(body)
        elif kind == CLOSE:
            self._setup.reason = body.decode(errors="replace") or None
            self._closed_by_daemon = True
            self._end(None)

    def _end(self, reason: str | None) -> None:
        """The connection cannot go on: the caller sees the end after the whole
        frames already received (a half frame is dropped, never handed on)."""
        if self._eof:
            return
        self._eof = True
        if reason and not self._setup.reason:
            self._setup.reason = reason
        if self._ended is not None:
            self._ended.set()
            return
        if not self._closed_by_daemon and self._sock is not None:
            with contextlib.suppress(OSError):
                self._send(CLOSE, (reason or "").encode()[:200], wait=False)

    def _watch(self) -> None:
        """Off the data path: the heartbeat when the caller sent nothing for a
        while, and the end when the daemon said nothing for three."""
        channel, heartbeat = self._channel, self._heartbeat
        step = min(1.0, heartbeat / 2)
        while not self._closed.wait(step):
            with self._lock:
                if self._eof:
                    return
                now = time.monotonic()
                if now - channel.last_heard > 3 * heartbeat:
                    self._end(f"no word from the daemon for {3 * heartbeat:g} s")
                    # Wakes the caller's select(): it reads the end.
                    with contextlib.suppress(OSError):
                        assert self._sock is not None
                        self._sock.shutdown(socket.SHUT_RDWR)
                    return
                if now - channel.last_sent > heartbeat:
                    with contextlib.suppress(OSError):
                        self._send(PING)


async def _unused(msg: Any) -> None:
    """The down subscription's callback, never called (its messages are taken
    directly, ``FastClient.direct``)."""


async def _ignore(exc: Exception) -> None:
    return None


def _whole_frames(buffer: bytearray) -> int:
    """How many leading bytes of ``buffer`` are whole frames."""
    offset = 0
    size = protocol.HEADER.size
    while len(buffer) - offset >= size:
        _, length = protocol.HEADER.unpack_from(buffer, offset)
        end = offset + size + length
        if end > len(buffer):
            break
        offset = end
    return offset


def fleet_url(settings: FleetSettings, host: str) -> str:
    """``nats://SERVER/HOST`` for ``host`` through the first server of ``[fleet]``
    (its credentials are picked up again from ``[fleet]`` when the URL is opened)."""
    server = settings.servers[0].split("://", 1)[1].split("/", 1)[0]
    url = f"nats://{server.rpartition('@')[2]}/{host}"
    if settings.prefix != "tachi":
        url += f"?prefix={settings.prefix}"
    return url


def known_hosts_path() -> Any:
    """Where the transport keys of the daemons reached so far are kept (trust on
    first use, as SSH's known_hosts): ``STATE/fleet/known_hosts``."""
    from tachi.paths import state_dir

    return state_dir() / "fleet" / "known_hosts"


def remember_key(server: str, prefix: str, host: str, fingerprint: str) -> None:
    """Trust on first use: record ``host``'s transport key the first time it is
    reached through ``server``; refuse (``PermissionDenied``) a different one
    later. ``--fingerprint`` pins a key instead (and skips this)."""
    import os

    from tachi.errors import PermissionDenied

    path = known_hosts_path()
    name = f"{server.split('://', 1)[-1].rstrip('/')} {prefix} {host}"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.rsplit(" ", 1)
        if len(parts) == 2 and parts[0] == name:
            if parts[1] == fingerprint:
                return
            raise PermissionDenied(
                f"the daemon of {host} (through {name.split()[0]}) presented transport key"
                f" {fingerprint}, but {parts[1]} was seen before: a relay in the middle, or"
                f" that host's state was reset (then remove its line from {path}, or pin the"
                " new key with --fingerprint)"
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{name} {fingerprint}\n")
    except OSError:
        pass  # a read-only home: the key is just not remembered
