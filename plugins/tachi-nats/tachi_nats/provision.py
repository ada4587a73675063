"""Who may do what on the fleet's NATS, and creating what the fleet stores in.

Three kinds of NATS user (docs/fleet.md, "Security"):

- **admin**: creates the buckets, the stream and the object store once
  (``tachi fleet init``; ``tachi fleet up`` does it), and forgets gone hosts;
- **host** ``H``: publishes only its own registry keys (``$KV.P-sessions.H.>``,
  ``$KV.P-hosts.*.H``), its audit and checkpoint subjects and its recordings'
  chunks, plus the JetStream API requests the daemon makes (stream info, the
  stream's last message, a consumer to list its own keys);
- **reader**: ``tachi fleet hosts|ls|audit|record`` — JetStream reads only;
- **client** of hosts ``H1, H2``: the NATS transport to those hosts' daemons only
  (``tachi --host nats://SERVER/H1``), nothing of the fleet's storage.

``permissions(...)`` and ``accounts_config(...)`` are what the docs show and what
the tests run a real nats-server with, so the documented layout is the tested one.

The object store's metadata subject (``$O.P-recordings.M.<base64 name>``) is one
token per object, so no permission can scope it to a host: a host may publish
metadata for another host's object. ``tachi fleet record export|play`` therefore
check every object against the SHA-256 in the host's ``record.stop`` audit
record, which only that host can publish; a replaced recording is refused.
"""

from __future__ import annotations

import json
from typing import Any

from tachi_nats.settings import FleetSettings

#: Replies to requests (JetStream API, PubAcks) and push consumers' deliveries.
_INBOX = "_INBOX.>"
#: Flow control replies of ordered consumers (every reader of a stream).
_FLOW = "$JS.FC.>"


def _streams(prefix: str) -> dict[str, str]:
    return {
        "sessions": f"KV_{prefix}-sessions",
        "hosts": f"KV_{prefix}-hosts",
        "audit": f"{prefix}-audit",
        "recordings": f"OBJ_{prefix}-recordings",
    }


def _read_api(streams: list[str]) -> list[str]:
    """JetStream API subjects to read ``streams``: info, single messages, and
    ephemeral (ordered) consumers, which nats-py creates on either subject form."""
    # STREAM.NAMES: nats-py finds the stream of a subject (object store reads).
    out = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    for s in streams:
        out += [
            f"$JS.API.STREAM.INFO.{s}",
            f"$JS.API.STREAM.MSG.GET.{s}",
            f"$JS.API.DIRECT.GET.{s}",
            f"$JS.API.DIRECT.GET.{s}.>",
            f"$JS.API.CONSUMER.CREATE.{s}",
            f"$JS.API.CONSUMER.CREATE.{s}.>",
            f"$JS.API.CONSUMER.INFO.{s}.*",
            f"$JS.API.CONSUMER.DELETE.{s}.*",
        ]
    return out


def host_permissions(prefix: str, host: str) -> dict[str, Any]:
    """NATS ``permissions`` of host ``host``'s user: its own keys and subjects only."""
    st = _streams(prefix)
    publish = [
        f"$KV.{prefix}-sessions.{host}.>",
        f"$KV.{prefix}-hosts.*.{host}",
        f"{prefix}.audit.{host}",
        f"{prefix}.checkpoint.{host}",
        f"$O.{prefix}-recordings.C.{host}.>",
        # One token per object name: not scopable (see the module docstring).
        f"$O.{prefix}-recordings.M.*",
        _FLOW,
        # Its own keys (after a reconnect), the audit stream's last record of its
        # subject (where shipping resumes), whether a recording is uploaded.
        *_read_api(list(st.values())),
        # The NATS transport: what it sends down its own connections.
        f"{prefix}.conn.{host}.*.down",
    ]
    subscribe = [
        _INBOX,
        # The NATS transport: connect requests and what comes up, for this host only.
        f"{prefix}.connect.{host}",
        f"{prefix}.conn.{host}.*.up",
    ]
    # Answers to the connect requests it received (their reply subjects), and
    # to nothing else: a host cannot publish into another client's inbox.
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": subscribe},
        "allow_responses": True,
    }


def client_permissions(prefix: str, hosts: list[str]) -> dict[str, Any]:
    """NATS ``permissions`` of a user who may reach the daemons of ``hosts``
    through the NATS transport (``tachi --host nats://SERVER/HOST``), and no
    other host: it connects to and speaks on those hosts' subjects only. What
    it may do there is the daemon's to decide (a token or an SVID in hello)."""
    publish, subscribe = [], [_INBOX]
    for host in hosts:
        publish += [f"{prefix}.connect.{host}", f"{prefix}.conn.{host}.*.up"]
        subscribe.append(f"{prefix}.conn.{host}.*.down")
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def reader_permissions(prefix: str) -> dict[str, Any]:
    """NATS ``permissions`` of a reader (``tachi fleet`` for a team lead): no writes."""
    st = _streams(prefix)
    return {
        "publish": {"allow": [_FLOW, *_read_api(list(st.values()))]},
        "subscribe": {"allow": [_INBOX]},
    }


def accounts_config(prefix: str, users: list[dict[str, Any]], account: str = "TACHI") -> str:
    """A nats-server ``accounts`` block: one account with JetStream, and ``users``
    (each a dict of ``user``/``password`` or ``nkey``, plus ``host`` = a host name,
    ``reader`` = True, ``reaches`` = the hosts a transport client may reach, or
    none of these for an admin, who gets no restrictions)."""
    entries = []
    for u in users:
        entry = {k: v for k, v in u.items() if k in ("user", "password", "nkey")}
        if u.get("host"):
            entry["permissions"] = host_permissions(prefix, u["host"])
        elif u.get("reader"):
            entry["permissions"] = reader_permissions(prefix)
        elif u.get("reaches"):
            entry["permissions"] = client_permissions(prefix, list(u["reaches"]))
        entries.append(entry)
    # nats-server's config format accepts JSON values.
    body = ",\n".join("      " + json.dumps(e) for e in entries)
    return (
        "accounts {\n"
        f"  {account}: {{\n"
        "    jetstream: enabled\n"
        "    users: [\n"
        f"{body}\n"
        "    ]\n"
        "  }\n"
        "}\n"
    )


async def provision(js: Any, settings: FleetSettings) -> list[str]:
    """Create what is missing of the fleet's sessions and hosts buckets, audit
    stream and recordings object store, each with ``settings.replicas``; returns
    the names created (empty when all were there). Needs admin rights."""
    from nats.js import api
    from nats.js.errors import BucketNotFoundError, NotFoundError

    created = []
    for bucket in (settings.sessions_bucket, settings.hosts_bucket):
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            # history 1: the registry is the present, the audit stream is the past.
            await js.create_key_value(bucket=bucket, history=1, replicas=settings.replicas)
            created.append(bucket)
    try:
        await js.stream_info(settings.audit_stream)
    except NotFoundError:
        await js.add_stream(audit_stream_config(settings))
        created.append(settings.audit_stream)
    try:
        await js.object_store(settings.recordings_bucket)
    except BucketNotFoundError:
        await js.create_object_store(
            bucket=settings.recordings_bucket,
            config=api.ObjectStoreConfig(
                description="tachi recordings: HOST/RECORDING_ID",
                storage=api.StorageType.FILE,
                replicas=settings.replicas,
            ),
        )
        created.append(settings.recordings_bucket)
    return created


def audit_stream_config(settings: FleetSettings) -> Any:
    """The audit stream: every host's records and checkpoints, de-duplicated by
    ``Nats-Msg-Id`` (the record's hash) within two minutes."""
    from nats.js import api

    return api.StreamConfig(
        name=settings.audit_stream,
        subjects=[f"{settings.prefix}.audit.*", f"{settings.prefix}.checkpoint.*"],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        # Re-sends after a reconnect come within seconds; older ones are
        # caught by the shipper comparing with the stream's last record.
        duplicate_window=120,
        allow_direct=True,
        num_replicas=settings.replicas,
    )
