"""The fleet mirror: the daemon serves ``tachi fleet ls|hosts`` from memory.

Reading 10,000 registry entries from NATS in a fresh CLI process costs more
than a listing may (importing nats-py, connecting, one round of 10,000
messages, decoding them). A daemon with ``[fleet]`` is connected already, so
when it is asked for the fleet (operation ``fleet.snapshot``) it keeps a copy
of the registry current, as a local agent cache does (Consul's): on the first
request the fleet agent's loop (its thread, its NATS connection) opens one push
consumer per bucket (the hosts and the sessions KV), which delivers the last
value of every key once and then every change as it is written (events, not
polling). Requests are answered from that copy.

Answers are kept, with the compressed frames made of them, until what they
show changes (a session, or which hosts are up; for ``fleet hosts`` any
change), so asking again costs the daemon only the send.

Nobody asking, nothing kept: after ``[fleet] mirror_idle`` seconds (default
600) without a request the consumers are deleted and the copy dropped, so a
daemon whose user never lists the fleet pays nothing; the next request fills
it again.

Correctness of the copy: each delivery carries the consumer's sequence, and
the server's idle heartbeats carry the last one it sent, so a lost message (a
reconnect, a slow moment) is seen as a gap and the copy is read again; a
consumer that vanished (no heartbeat for three periods) is made again. A
heartbeat key expires on the server without a message (per-message TTL), so a
host counts as up only while its last heartbeat is younger than
``HEARTBEAT_TTL``, dated by the server's timestamp of it.

Who may ask: ``fleet.snapshot`` declares the daemon-level action
``fleet.read``, registered by this plugin (``tachi_register_actions``). The
built-in policy allows daemon-level actions to the daemon's own user (the
local owner, and daemon tokens) and refuses everyone else (a share token, another
user), audited as every denial; a policy plugin may allow more.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from typing import Any

from tachi.core.actions import Action
from tachi.daemon.ops import RequestContext, arg_str, operation
from tachi.errors import DaemonUnavailable, InvalidRequest
from tachi_nats import nats_io, view
from tachi_nats.settings import HEARTBEAT_TTL, FleetSettings

log = logging.getLogger("tachi.fleet")

#: The operation's name and the action it asks (a daemon-level one).
OPERATION = "fleet.snapshot"
ACTION = Action("fleet.read", "list the fleet's hosts and sessions", on_session=False)
#: Seconds without a request after which the mirror stops (``[fleet] mirror_idle``).
IDLE_DEFAULT = 600.0
#: The server's idle heartbeat on the mirror's consumers; three missed: made again.
CONSUMER_HEARTBEAT = 5.0
#: How long a request waits for the first fill (or a refill) before giving up.
FILL_TIMEOUT = 10.0
#: Raw (compressed) bytes per ``fleet.chunk`` event: base64 of it stays well
#: inside the protocol's 1 MiB frame.
CHUNK = 512 * 1024
#: Seconds past ``HEARTBEAT_TTL`` before a silent host counts as gone: the
#: server's own expiry runs about once a second.
EXPIRY_GRACE = 1.0


def idle_after(settings: FleetSettings) -> float:
    """``[fleet] mirror_idle`` in seconds (default 600). Raises ``InvalidRequest``
    for a value that is not a number from 0.5 to 86400."""
    value = settings.raw.get("mirror_idle", IDLE_DEFAULT)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 <= value <= 86400:
        raise InvalidRequest("[fleet] mirror_idle: give seconds, 0.5 to 86400 (default 600)")
    return float(value)


def _ack_fields(reply: str) -> tuple[int, int, int]:
    """(consumer sequence, stored time in ns, pending) from a JetStream delivery's
    reply subject, in either of its two forms."""
    tokens = reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or the
    # form with <domain>.<account hash> after ACK and a random token at the end.
    base = 6 if len(tokens) == 9 else 8
    return int(tokens[base]), int(tokens[base + 1]), int(tokens[base + 2])


class _Gap(Exception):
    """The copy missed something: read everything again."""


class _BucketWatch:
    """One push consumer on a KV bucket: every key's last value, then every
    change, handed to ``apply(key, value or None, stored_ns)``."""

    def __init__(self, js: Any, bucket: str, apply: Any, trouble: Any) -> None:
        self.js = js
        self.stream = f"KV_{bucket}"
        self.pre = f"$KV.{bucket}."
        self.apply = apply
        self.trouble = trouble
        self.filled = asyncio.Event()
        self.cseq = 0
        self.last_seen = time.monotonic()
        self.consumer: str | None = None
        self.sub: Any = None

    async def start(self) -> None:

        nc = self.js._nc
        inbox = nc.new_inbox()
        self.sub = await nc.subscribe(
            inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        info = await nats_io.latest_per_key(
            self.js,
            self.stream,
            self.pre,
            inbox,
            idle_heartbeat=CONSUMER_HEARTBEAT,
            # Removed by the server if this daemon goes without deleting it.
            inactive_threshold=3 * CONSUMER_HEARTBEAT,
        )
        self.consumer = info.name
        if not info.num_pending:  # an empty bucket: nothing will come
            self.filled.set()

    async def _on_msg(self, msg: Any) -> None:
        self.last_seen = time.monotonic()
        headers = msg.headers or {}
        if not msg.reply:  # the server's idle heartbeat says what it sent last
            last = headers.get("Nats-Last-Consumer")
            if last is not None and int(last) != self.cseq:
                self.trouble(f"{self.stream}: heartbeat says {last}, seen {self.cseq}")
            return
        cseq, stored_ns, pending = _ack_fields(msg.reply)
        if cseq != self.cseq + 1:
            self.trouble(f"{self.stream}: delivery {cseq} after {self.cseq}")
        self.cseq = cseq
        key = msg.subject[len(self.pre) :]
        deleted = headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data
        self.apply(key, None if deleted else msg.data, stored_ns)
        if pending == 0:
            self.filled.set()

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.js._jsm.delete_consumer(self.stream, self.consumer), 2)


#: Answers kept per state of the copy (a view and its filters each): a few
#: people and scripts ask the same few things; other filters are built afresh.
CACHED = 16


class Payload:
    """One answer's bytes, shared by every request that asks the same of the same
    copy, and (``encoded``: the base64 of its zlib-compressed slices) what the
    operation made of them the first time, so a repeated ask costs only the send."""

    __slots__ = ("data", "encoded")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.encoded: list[str] | None = None


class FleetMirror:
    """The registry kept in memory on the fleet agent's loop, while asked for.

    Every method but ``reset`` runs on the agent's loop (``answer`` is handed
    there by the operation), so the copy is never read half-updated."""

    def __init__(self, agent: Any, idle: float) -> None:
        self.agent = agent
        self.idle = idle
        self.sessions: dict[str, view.SessionEntry] = {}
        self.info: dict[str, dict[str, Any]] = {}
        #: host -> (heartbeat, monotonic time it was stored on the server).
        self.alive: dict[str, tuple[dict[str, Any], float]] = {}
        self.fills = 0
        #: Changes applied: any (the ``etag``), the sessions' alone (what
        #: ``fleet ls`` shows besides which hosts are up).
        self.version = 0
        self.sessions_version = 0
        #: Answers for the copy as it is (see ``_cached``), and how many were reused.
        self._cache: dict[tuple[Any, ...], Payload] = {}
        self._cache_state: tuple[Any, ...] | None = None
        self.cache_hits = 0
        self.filled_at: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._trouble: asyncio.Event | None = None
        self._last_asked = 0.0
        agent.on_reconnect.append(self.reset)

    # -- answering -------------------------------------------------------------------
    async def answer(
        self, kind: str, filters: dict[str, str | None], unless: str | None
    ) -> tuple[dict[str, Any], Payload | None]:
        """(reply, payload) for a request: ``kind`` ``json`` (the sessions as
        ``fleet ls --json`` prints them), ``rows`` (the table's rows, as JSON) or
        ``hosts``; no payload when ``unless`` is the current ``etag``."""
        self._last_asked = time.monotonic()
        if not self.agent.connected:  # the command says so better, reading NATS itself
            raise DaemonUnavailable("the daemon is not connected to NATS")
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._trouble = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        assert self._ready is not None
        try:
            await asyncio.wait_for(self._ready.wait(), FILL_TIMEOUT)
        except TimeoutError:
            raise DaemonUnavailable(
                f"the daemon could not read the fleet's registry from NATS within {FILL_TIMEOUT:g}s"
            ) from None
        now = time.monotonic()
        up = {h for h, (_, at) in self.alive.items() if now - at <= HEARTBEAT_TTL + EXPIRY_GRACE}
        etag = f"{self.fills}.{self.version}.{','.join(sorted(up))}"
        reply: dict[str, Any] = {
            "etag": etag,
            "mirror": {"fills": self.fills, "filledAt": self.filled_at, "idle": self.idle},
        }
        if unless is not None and unless == etag:
            return {**reply, "unchanged": True}, None
        hits = self.cache_hits
        payload = self._cached(kind, filters, up)
        # Says whether the answer was built for this request or kept from an earlier one.
        reply["cached"] = self.cache_hits != hits
        return reply, payload

    def _cached(self, kind: str, filters: dict[str, str | None], up: set[str]) -> Payload:
        """The answer for the copy as it is now, built once per change of what it
        shows: the hosts view on any change (heartbeats included); the sessions
        views only when a session changed or a host came or went (a heartbeat
        that changes nothing else, every 2 s per host, keeps them)."""
        state = (self.fills, self.sessions_version, frozenset(up))
        if state != self._cache_state:
            self._cache, self._cache_state = {}, state
        key = (kind, self.version if kind == "hosts" else None, *sorted(filters.items()))
        payload = self._cache.get(key)
        if payload is not None:
            self.cache_hits += 1
            return payload
        if kind == "hosts":
            alive = {h: self.alive[h][0] for h in up}
            data = view.dumps(view.hosts(self.info, alive, self.sessions.values()))
        else:
            selected = view.select(self.sessions.values(), up, filters)
            data = view.json_lines(selected) if kind == "json" else view.dumps(view.rows(selected))
        if len(self._cache) >= CACHED:
            self._cache.pop(next(iter(self._cache)))
        payload = self._cache[key] = Payload(data)
        return payload

    def reset(self) -> None:
        """After a reconnect: what the server pushed meanwhile is lost; read again."""
        if self._trouble is not None:
            self._trouble.set()

    # -- keeping the copy --------------------------------------------------------------
    async def _run(self) -> None:
        assert self._ready is not None and self._trouble is not None
        try:
            while True:
                js = self.agent.js
                if js is None:  # not connected (yet): a request times out meanwhile
                    await asyncio.sleep(0.5)
                    if self._idle():
                        return
                    continue
                watches = await self._fill(js)
                if watches is None:
                    await asyncio.sleep(1)
                    if self._idle():
                        return
                    continue
                try:
                    if not await self._follow(watches):
                        return  # idle
                finally:
                    for w in watches:
                        await w.stop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("fleet: the mirror stopped")
        finally:
            self._drop()

    async def _fill(self, js: Any) -> list[_BucketWatch] | None:
        """Fresh consumers into an empty copy, ready once both buckets are read
        whole (requests wait for that); ``None`` (logged) if that failed."""
        assert self._ready is not None and self._trouble is not None
        self._trouble.clear()
        self.sessions, self.info, self.alive = {}, {}, {}
        self._ready.clear()
        s = self.agent.settings

        def trouble(why: str) -> None:
            log.info("fleet: mirror out of step (%s); reading the registry again", why)
            assert self._trouble is not None
            self._trouble.set()

        watches = [
            _BucketWatch(js, s.hosts_bucket, self._apply_host, trouble),
            _BucketWatch(js, s.sessions_bucket, self._apply_session, trouble),
        ]
        try:
            for w in watches:
                await w.start()
            await asyncio.wait_for(
                asyncio.gather(*(w.filled.wait() for w in watches)), FILL_TIMEOUT
            )
        except Exception as e:
            log.warning("fleet: cannot read the registry for the mirror: %s", e or type(e).__name__)
            for w in watches:
                await w.stop()
            return None
        self.fills += 1
        self.filled_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.info("fleet: mirror filled (%d hosts, %d sessions)", len(self.info), len(self.sessions))
        self._ready.set()
        return watches

    async def _follow(self, watches: list[_BucketWatch]) -> bool:
        """Until trouble (``True``: fill again) or idleness (``False``: stop)."""
        assert self._trouble is not None
        tick = min(1.0, self.idle / 4)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trouble.wait(), tick)
            if self._trouble.is_set():
                return True
            if self._idle():
                log.info("fleet: mirror stopped, not asked for %g s", self.idle)
                return False
            silent = time.monotonic() - min(w.last_seen for w in watches)
            if silent > 3 * CONSUMER_HEARTBEAT + 1:
                log.info("fleet: mirror's consumer silent for %.0f s; making it again", silent)
                return True

    def _idle(self) -> bool:
        return time.monotonic() - self._last_asked > self.idle

    def _drop(self) -> None:
        self.sessions, self.info, self.alive = {}, {}, {}
        self._cache, self._cache_state = {}, None
        if self._ready is not None:
            self._ready.clear()

    def _apply_session(self, key: str, value: bytes | None, stored_ns: int) -> None:
        self.version += 1
        self.sessions_version += 1
        entry = None if value is None else view.session_entry(key, value)
        if entry is None:
            self.sessions.pop(key, None)
        else:
            self.sessions[key] = entry

    def _apply_host(self, key: str, value: bytes | None, stored_ns: int) -> None:
        self.version += 1
        kind, _, name = key.partition(".")
        store: Any = self.alive if kind == "alive" else self.info if kind == "info" else None
        if store is None:
            return
        doc = None if value is None else view.host_doc(value)
        if doc is None:
            store.pop(name, None)
        elif kind == "info":
            self.info[name] = doc
        else:
            # Dated by the server's clock, bounded: a heartbeat read at the first
            # fill may be up to HEARTBEAT_TTL old already.
            age = min(max(0.0, time.time() - stored_ns / 1e9), float(HEARTBEAT_TTL))
            self.alive[name] = (doc, time.monotonic() - age)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


# -- the operation -------------------------------------------------------------------

#: The running daemon's mirror (``None``: no ``[fleet]``, or stopped).
_mirror: FleetMirror | None = None


@operation(OPERATION, action=ACTION.name)
async def fleet_snapshot(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """The fleet from this daemon's mirror: ``view`` ``json``, ``rows`` or
    ``hosts``; the filters ``host``, ``state``, ``agent``, ``user``; ``unless``
    an ``etag`` (unchanged: no payload). The payload comes as ``fleet.chunk``
    events (``stream``, ``data``: base64 of a slice of the zlib-compressed
    bytes) before the reply, which says how many."""
    kind = arg_str(args, "view", required=False) or "json"
    if kind not in ("json", "rows", "hosts"):
        raise InvalidRequest("argument 'view' must be json, rows or hosts")
    filters = {k: arg_str(args, k, required=False) for k in view.FILTERS}
    unless = arg_str(args, "unless", required=False)
    tag = arg_str(args, "stream", required=False) or ""
    mirror = _mirror
    loop = None if mirror is None else mirror.agent._loop
    if mirror is None or loop is None:
        raise DaemonUnavailable("this daemon has no fleet agent running ([fleet])")
    future = asyncio.run_coroutine_threadsafe(mirror.answer(kind, filters, unless), loop)
    try:
        reply, payload = await asyncio.wait_for(asyncio.wrap_future(future), FILL_TIMEOUT + 5)
    except TimeoutError:
        raise DaemonUnavailable("the fleet agent did not answer") from None
    if payload is None:
        return reply
    from tachi.daemon.limits import below

    pieces = payload.encoded
    if pieces is None:
        # Off the daemon's loop (zlib lets go of the GIL): 6 MB take 30-40 ms.
        # Kept with the payload: the next request for the same answer sends these.
        # zlib even on the local socket: 10,000 sessions' JSON is 6 MB, several
        # times smaller compressed, and base64, framing and decoding 6 MB cost
        # more than compressing and inflating it (measured: docs/benchmarks.md).
        pieces = await asyncio.get_running_loop().run_in_executor(None, _encode, payload.data)
        payload.encoded = pieces
    for piece in pieces:
        ctx.connection.send({"event": "fleet.chunk", "stream": tag, "data": piece})
        await below(ctx.connection.wire, 2 * CHUNK)  # a slow reader holds the rest here
    return {
        **reply,
        "stream": tag,
        "encoding": "zlib",
        "bytes": len(payload.data),
        "chunks": len(pieces),
    }


def _encode(data: bytes) -> list[str]:
    """``data`` compressed, in base64 slices of ``CHUNK`` compressed bytes."""
    import zlib

    packed = zlib.compress(data, 1)
    return [base64.b64encode(packed[i : i + CHUNK]).decode() for i in range(0, len(packed), CHUNK)]


def install(daemon: Any, mirror: FleetMirror) -> None:
    """Serve ``fleet.snapshot`` (registered at start through
    ``tachi_register_operations``) from ``mirror``."""
    global _mirror
    _mirror = mirror


async def uninstall(daemon: Any, mirror: FleetMirror) -> None:
    """Stop serving ``fleet.snapshot`` from ``mirror`` (its fleet service stops)
    and drop the mirror's copy."""
    global _mirror
    if _mirror is mirror:  # not a newer service's
        _mirror = None
    loop = mirror.agent._loop
    if loop is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.wrap_future(asyncio.run_coroutine_threadsafe(mirror.stop(), loop)), 3
            )
