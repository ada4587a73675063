"""Connecting to NATS with the ``[fleet]`` settings, and the buckets and stream the
fleet uses (created on first use, by whoever comes first with the rights to)."""

from __future__ import annotations

import json
from typing import Any

from tachi_nats.settings import FleetSettings


async def connect(settings: FleetSettings, **policy: Any) -> Any:
    """A connected ``nats.aio.client.Client``; ``policy`` adds reconnect options.

    Raises what ``nats.connect`` raises (no server reachable, authorization)."""
    from nats.aio.client import Client

    opts = settings.connect_options()
    public = opts.pop("_public_nkey", None)
    if settings.tls_svid and "tls" in opts:
        policy["disconnected_cb"] = _reloading(settings, opts["tls"], policy.get("disconnected_cb"))
    nc = Client()
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
