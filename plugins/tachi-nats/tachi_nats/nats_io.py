"""Connecting to NATS with the ``[fleet]`` settings, and the buckets and stream the
fleet uses (created on first use, by whoever comes first with the rights to)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from tachi_nats.settings import FleetSettings

log = logging.getLogger("tachi.nats")


def _client_class() -> Any:
    """nats-py's ``Client`` with two shortcuts for the NATS transport's hot path
    (defined on first use: importing nats-py costs every process that never
    connects). Everything else is nats-py's own."""
    global _FastClient
    if _FastClient is not None:
        return _FastClient
    from nats.aio.client import Client

    class FastClient(Client):  # type: ignore[misc]
        """``direct(sub, handler)``: the subscription's messages are handed to
        ``handler(subject, data)`` as nats-py's reader parses them, instead of
        through the subscription's queue and task (one loop iteration and a
        task switch per message, ~40 us of every keystroke's round trip).
        ``write_now(subject, payload)``: a PUB written to the transport at
        once when nothing is queued before it, instead of waking nats-py's
        flusher task (another loop iteration per message)."""

        def __init__(self) -> None:
            super().__init__()
            self._direct: dict[int, Callable[[bytes, bytes], None]] = {}

        async def _process_connect_init(self) -> None:
            await super()._process_connect_init()
            # After each (re)connect: a new transport, a new reader.
            reader = getattr(self._transport, "_io_reader", None)
            if reader is not None and self._direct:
                _take_direct_messages(self, reader)

        def direct(self, sub: Any, handler: Callable[[bytes, bytes], None]) -> None:
            if not self._direct:
                reader = getattr(self._transport, "_io_reader", None)
                if reader is not None:
                    _take_direct_messages(self, reader)
            self._direct[sub._id] = handler

        async def _process_msg(
            self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            handler = self._direct.get(sid)
            if handler is None or headers:
                await super()._process_msg(sid, subject, reply, data, headers)
                return
            try:
                handler(subject, data)
            except Exception:  # nats-py's reader would stop for good
                log.exception("nats: a message handler failed")

        def can_write_now(self) -> bool:
            """Whether ``write_now`` would write: connected (while nats-py
            reconnects, ``publish`` buffers) and nothing queued for the flusher
            (which would go out after, out of order)."""
            return not self._pending and self.is_connected and self._transport is not None

        def write_now(self, subject: str, payload: bytes) -> bool:
            """Write one PUB now; ``False`` (nothing written) when it must go
            through ``publish`` instead (see ``can_write_now``)."""
            if not self.can_write_now():
                return False
            self._transport.write(
                b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
            )
            self.stats["out_msgs"] += 1
            self.stats["out_bytes"] += len(payload)
            return True

    _FastClient = FastClient
    return FastClient


_FastClient: Any = None


def _take_direct_messages(nc: Any, reader: Any) -> None:
    """Hand the direct subscriptions' messages over as the socket delivers them
    (asyncio's ``data_received``), not after a turn of the loop that wakes
    nats-py's reader task: what arrives when nats-py has nothing buffered and
    starts with whole ``MSG``s of a direct subscription is taken here, in
    order; anything else (and whatever follows it) is nats-py's, as before."""
    from nats.protocol.parser import AWAITING_CONTROL_LINE

    feed = reader.feed_data
    parser = nc._ps
    direct = nc._direct

    def feed_data(data: bytes) -> None:
        if not reader._buffer and not parser.buf and parser.state == AWAITING_CONTROL_LINE:
            data = _direct_prefix(data, direct)
        if data:
            feed(data)

    reader.feed_data = feed_data


def _direct_prefix(data: bytes, direct: dict[int, Callable[[bytes, bytes], None]]) -> bytes:
    """``data`` after its leading whole ``MSG SUBJECT SID SIZE`` messages of
    ``direct`` subscriptions, each handed to its handler."""
    start = 0
    size = len(data)
    while data.startswith(b"MSG ", start):
        end = data.find(b"\r\n", start)
        if end < 0:
            break
        parts = data[start + 4 : end].split()
        if len(parts) != 3 or not parts[2].isdigit() or not parts[1].isdigit():
            break  # with a reply subject, or malformed: nats-py's to judge
        handler = direct.get(int(parts[1]))
        length = int(parts[2])
        stop = end + 2 + length
        if handler is None or size < stop + 2 or data[stop : stop + 2] != b"\r\n":
            break
        try:
            handler(parts[0], data[end + 2 : stop])
        except Exception:  # as in FastClient._process_msg
            log.exception("nats: a message handler failed")
        start = stop + 2
    return data[start:] if start else data


async def connect(settings: FleetSettings, **policy: Any) -> Any:
    """A connected ``nats.aio.client.Client`` (with the shortcuts of
    ``_client_class``); ``policy`` adds reconnect options.

    Raises what ``nats.connect`` raises (no server reachable, authorization)."""
    opts = settings.connect_options()
    public = opts.pop("_public_nkey", None)
    if settings.tls_svid and "tls" in opts:
        policy["disconnected_cb"] = _reloading(settings, opts["tls"], policy.get("disconnected_cb"))
    nc = _client_class()()
    if public:
        # nats-py sets the public nkey only on its own path, which needs the `nkeys`
        # package; we sign with `cryptography` and hand it the key ourselves.
        nc._public_nkey = public
    await nc.connect(**opts, **policy)
    return nc


def _reloading(settings: FleetSettings, context: Any, then: Any) -> Any:
    """A ``disconnected_cb`` that loads the SVID files again into ``context`` when
    they changed, before nats-py reconnects with it: SVIDs are short-lived (a SPIRE
    agent rewrites them every few minutes), and NATS checks the client certificate
    only at the handshake, so an established connection outlives its SVID and only
    a reconnect needs the current one. A half-written pair keeps the previous one."""
    import ssl

    def stamp() -> tuple[int, ...]:
        paths = (settings.tls_cert, settings.tls_key)
        return tuple(p.stat().st_mtime_ns if p and p.exists() else 0 for p in paths)

    loaded = [stamp()]

    async def disconnected() -> None:
        now = stamp()
        if now != loaded[0]:
            try:
                context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
                loaded[0] = now
            except (OSError, ssl.SSLError) as exc:
                import logging

                logging.getLogger("tachi.fleet").warning(
                    "fleet: keeping the previous SVID for NATS: %s", exc
                )
        if then is not None:
            await then()

    return disconnected


async def ensure_fleet(js: Any, settings: FleetSettings) -> tuple[Any, Any]:
    """The sessions and hosts KV buckets, after creating whatever of the fleet's
    buckets, stream and object store is missing (which needs admin rights: a host
    with only its own permissions needs ``tachi fleet init`` run once). Returns
    ``(sessions_kv, hosts_kv)``."""
    from tachi_nats.provision import provision

    await provision(js, settings)
    return await js.key_value(settings.sessions_bucket), await js.key_value(settings.hosts_bucket)


async def host_keys(kv: Any, host: str, timeout: float = 5.0) -> list[str]:
    """The keys of ``kv`` under ``HOST.`` (a sessions bucket), filtered by the
    server. (nats-py's ``kv.keys(filters=...)`` reads every key of the bucket and
    matches the filters as substrings, so ``"h.>"`` matched nothing.)"""
    watcher = await kv.watch(f"{host}.>", ignore_deletes=True, meta_only=True)
    keys: list[str] = []
    try:
        while True:
            entry = await watcher.updates(timeout=timeout)
            if entry is None:
                return keys
            keys.append(entry.key)
    finally:
        await watcher.stop()


async def read_subject(js: Any, stream: str, subject: str, timeout: float = 5.0) -> list[Any]:
    """Every message of ``subject`` in ``stream``, in order (an ordered consumer)."""
    from nats.js import api

    info = await js.stream_info(stream, subjects_filter=subject)
    total = (info.state.subjects or {}).get(subject, 0)
    if not total:
        return []
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
    )
    out: list[Any] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=timeout)
            out.append(msg)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def stream_subjects(js: Any, stream: str, pattern: str) -> dict[str, int]:
    """Subjects of ``stream`` matching ``pattern`` and their message counts."""
    info = await js.stream_info(stream, subjects_filter=pattern)
    return dict(info.state.subjects or {})


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


async def latest_per_key(js: Any, stream: str, prefix: str, inbox: str, **config: Any) -> Any:
    """An ephemeral push consumer of ``stream`` (a KV bucket's) that delivers the
    last message of every subject under ``prefix`` to ``inbox``, then every new
    one: a whole bucket in one round of messages, not a request per key. Unacked,
    in memory, one replica; ``config`` adds ``ConsumerConfig`` fields. Returns
    its ``ConsumerInfo`` (``num_pending`` 0: the bucket is empty)."""
    from nats.js import api

    return await js._jsm.add_consumer(
        stream,
        api.ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=f"{prefix}>",
            mem_storage=True,
            num_replicas=1,
            **config,
        ),
    )
