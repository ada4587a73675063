"""tachi-nats: a fleet of tachi daemons on NATS JetStream.

Every daemon with a ``[fleet]`` table in config.toml publishes its sessions to a
KV bucket, keeps a heartbeat there, and ships its audit log to a stream; the
``tachi fleet`` commands read them from anywhere with the same settings. Without
``[fleet]`` the plugin is idle: no thread, no connection, and its hooks return
at once. See docs/fleet.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import tachi

log = logging.getLogger("tachi.fleet")
#: What the warm CLI imports ahead of remote commands (``tachi --host nats://…``).
WARM_PRELOAD = (
    "tachi_nats.relay_client",
    "nats.aio.client",
    "nats.errors",
    "cryptography.hazmat.primitives.asymmetric.x25519",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.kdf.hkdf",
)

#: The running daemon's agent, while the fleet service runs (else ``None``: idle).
_agent: Any = None
#: Seconds between the daemon-side check that the registry matches the live sessions
#: (what no event says: sessions adopted from the keeper, attached client counts).
RECONCILE_EVERY = 10.0


def _document(session: Any, host: str) -> tuple[bytes, str]:
    """(the session's JSON as ``tachi get --json`` shows it, plus ``host``; the same
    without ``lastActivity``, to tell a change worth publishing from mere output)."""
    doc = session.to_model().to_json()
    doc["host"] = host
    data = json.dumps(doc, separators=(",", ":")).encode()
    doc.pop("lastActivity", None)
    return data, json.dumps(doc, sort_keys=True)


class FleetService:
    """Registered as a transport only for its start/stop: it listens on nothing."""

    name = "fleet"

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._seen: dict[str, str] = {}
        self._daemon: Any = None
        self._mirror: Any = None

    async def start(self, daemon: Any) -> None:
        global _agent
        from tachi_nats.agent import FleetAgent

        agent = FleetAgent(
            self.settings,
            state_dir=daemon.config.state_dir,
            audit_dir=daemon.audit_log.directory,
            public_key=_public_key(daemon.audit_log),
            version=str(getattr(daemon, "version", "")),
            recordings_dir=daemon.config.recordings_dir,
        )
        agent.start()
        _agent = agent
        self._task = asyncio.get_running_loop().create_task(self._reconcile(daemon, agent))
        from tachi_nats import mirror

        # Idle until someone lists the fleet through this daemon (fleet.snapshot).
        self._mirror = mirror.FleetMirror(agent, mirror.idle_after(self.settings))
        mirror.install(daemon, self._mirror)
        self._daemon = daemon

    def publish(self, agent: Any, session: Any) -> None:
        """Hand ``session``'s current state to the agent (on the daemon's loop)."""
        if session.closed:
            self._seen.pop(session.id, None)
            agent.session_changed(session.id, None)
            return
        data, identity = _document(session, agent.host)
        self._seen[session.id] = identity
        agent.session_changed(session.id, data)

    async def _reconcile(self, daemon: Any, agent: Any) -> None:
        while True:
            live = dict(daemon.manager.sessions)
            for n, (session_id, session) in enumerate(live.items()):
                if session.closed:
                    continue
                data, identity = _document(session, agent.host)
                if self._seen.get(session_id) != identity:
                    self._seen[session_id] = identity
                    agent.session_changed(session_id, data)
                if n % 100 == 99:
                    await asyncio.sleep(0)  # never hold the loop for a whole listing
            for session_id in set(agent.known()) - {sid for sid, s in live.items() if not s.closed}:
                self._seen.pop(session_id, None)
                agent.session_changed(session_id, None)
            await asyncio.sleep(RECONCILE_EVERY)

    async def stop(self) -> None:
        global _agent
        if self._daemon is not None:
            from tachi_nats import mirror

            await mirror.uninstall(self._daemon, self._mirror)
            self._daemon = None
        agent, _agent = _agent, None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if agent is not None:
            await asyncio.get_running_loop().run_in_executor(None, agent.stop, 3.0)


def _public_key(audit_log: Any) -> str:
    """Base64 of the raw Ed25519 public key the daemon signs checkpoints with."""
    import base64

    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(audit_log.key_path.read_bytes(), password=None)
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.warning("fleet: cannot read the audit checkpoint key: %s", e)
        return ""


_service: FleetService | None = None


@tachi.hookimpl
def tachi_register_transports(register: Any, config: Any) -> None:
    """Start the fleet service when config.toml has a ``[fleet]`` table."""
    global _service
    from tachi_nats.settings import parse

    settings = parse(config.raw.get("fleet"), config.raw)
    if settings is None:
        _service = None
        return
    settings.connect_options()  # a bad key file stops the daemon at start, clearly
    from tachi_nats.mirror import idle_after

    idle_after(settings)  # likewise a bad [fleet] mirror_idle
    _service = FleetService(settings)
    register(_service)
    from tachi_nats.transport import NatsTransport, options_of

    if options_of(settings)[0]:  # [fleet] serve = false: reachable through NATS no more
        register(NatsTransport(settings))


@tachi.hookimpl
def tachi_register_actions(register: Any) -> None:
    """``fleet.read``: list the fleet through this daemon (``fleet.snapshot``)."""
    from tachi_nats.mirror import ACTION

    register(ACTION)


@tachi.hookimpl
def tachi_register_operations(register: Any) -> None:
    """``fleet.snapshot``: the fleet from this daemon's mirror of the registry
    (an error while no fleet agent runs: the CLI then reads NATS itself)."""
    from tachi_nats.mirror import fleet_snapshot

    register(fleet_snapshot)


@tachi.hookimpl
def tachi_session_event(session: Any, event: str, details: dict[str, Any]) -> None:
    """Publish the session's new state (idle: returns at once)."""
    agent, service = _agent, _service
    if agent is None or service is None:
        return
    service.publish(agent, session)


@tachi.hookimpl
def tachi_connect(url: str, options: dict[str, Any]) -> Any:
    """Open ``nats://SERVER/HOST`` URLs (in the client process): a virtual
    connection to that fleet host's daemon through NATS."""
    if url.split("://", 1)[0].lower() != "nats":
        return None
    from tachi_nats.relay_client import open_connection

    return open_connection(url, options)


@tachi.hookimpl
def tachi_register_commands(cli: Any) -> None:
    from tachi_nats.cli import register
    from tachi_nats.gateway import register as register_gateway

    register(cli)
    register_gateway(cli)
