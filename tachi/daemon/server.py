"""tachid: the daemon's lifecycle and the policy decisions every transport shares.

One daemon per user per host. It loads plugins, opens the state (SQLite, audit
log), starts the transports, and serves until ``daemon.stop``, SIGTERM or
SIGINT, when every session is closed with reason ``daemon-stopped``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tachi import __version__
from tachi import config as config_mod
from tachi.core.access import SessionAccess
from tachi.core.manager import SessionManager
from tachi.core.principal import Principal
from tachi.core.store import SessionStore, connect
from tachi.errors import PermissionDenied, TachiError
from tachi.gotime import now_ns
from tachi.models import CloseReason
from tachi.plugins import make_plugin_manager

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import pluggy

    from tachi import protocol
    from tachi.core.clients import AttachedClient, Wire
    from tachi.core.session import SessionRuntime
    from tachi.models import SessionRequest

log = logging.getLogger("tachi.daemon")


class Daemon:
    """The daemon's state and the decisions (authorisation, admission, audit)
    that every transport and operation goes through."""

    version = __version__

    def __init__(self, config: config_mod.Config, pm: pluggy.PluginManager) -> None:
        from tachi.audit import AuditLog  # the audit module pulls in cryptography
        from tachi.grants import GrantStore

        self.config = config
        self.pm = pm
        self.hooks = pm.hook
        self.started_at = now_ns()
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state, 0o700)
        self.db = connect(state / "tachi.db")
        self.grants = GrantStore(self.db)
        self.audit_log = AuditLog(
            state / "audit",
            fail_open=config.audit_fail_open,
            on_event=self._ship_audit_event,
        )
        multiplexer = self.hooks.tachi_multiplexer()
        self.manager = SessionManager(
            config=config,
            store=SessionStore(self.db),
            hooks=self.hooks,
            audit=self.audit,
            multiplexer=multiplexer,
        )
        from tachi.core.recording import RecordingManager

        recorders: dict[str, Any] = {}
        self.hooks.tachi_recorders(register=lambda r: recorders.setdefault(r.format, r))
        self.recordings = RecordingManager(
            self.db,
            directory=config.recordings_dir,
            recorder=recorders.get(config.recording_format),
            record_input=config.recording_input,
            audit=self.audit,
        )
        self.manager.session_listeners.append(self.recordings.session_event)
        from tachi.daemon.sharing import SharingService

        self.sharing = SharingService(self)
        self.system_principal = Principal(user="tachid", uid=None, source="daemon")
        self.transports: list[Any] = []
        self.extensions: dict[str, Any] = {}
        self._stop = asyncio.Event()

    # -- running --------------------------------------------------------------
    async def run(self) -> None:
        # Importing the operation modules registers their operations.
        import tachi.daemon.daemon_ops
        import tachi.daemon.record_ops
        import tachi.daemon.session_ops
        import tachi.daemon.share_ops  # noqa: F401

        repaired = self.recordings.repair()
        if repaired:
            log.info("repaired %d recordings left open by a previous daemon", repaired)
        self.manager.start()
        self.sharing.start()
        self.hooks.tachi_register_transports(register=self.transports.append, config=self.config)
        started = []
        try:
            for transport in self.transports:
                await transport.start(self)
                started.append(transport)
                log.info("transport %s started", transport.name)
            self.audit(
                action="daemon.start",
                result="info",
                principal="tachid",
                source="daemon",
                details={"pid": os.getpid(), "version": self.version},
            )
            await self._stop.wait()
        finally:
            for transport in reversed(started):
                await transport.stop()
            await self.sharing.stop()
            await self.manager.shutdown()
            self.audit(action="daemon.stop", result="info", principal="tachid", source="daemon")
            self.audit_log.close()
            self.db.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def serve_connection(
        self,
        principal: Principal,
        wire: Wire,
        next_frame: Callable[[], Awaitable[protocol.Frame | None]],
    ) -> None:
        """Serve one authenticated-at-transport-level connection to its end."""
        from tachi.daemon.connection import Connection

        await Connection(self, principal, wire).run(next_frame)

    # -- sessions -----------------------------------------------------------
    def create_session(self, principal: Principal, req: SessionRequest) -> SessionRuntime:
        session = self.manager.create(principal, req)
        session.access = SessionAccess(session.id, principal.uid, principal.user, self.grants)
        try:
            self.audit_by(
                principal,
                "session.create",
                session.id,
                details={"command": session.info.command, "name": session.info.name},
            )
        except TachiError:
            # Fail closed: a session nobody can account for does not get to run.
            session.finish(CloseReason.CLOSED)
            raise
        if req.record or self.config.recording_auto:
            self.recordings.start(session, principal.user)
        return session

    # -- authorisation --------------------------------------------------------
    def allowed(self, principal: Principal, action: str, session: Any) -> bool:
        """Ask every ``tachi_authorize`` hook: any deny wins, else one allow allows."""
        answers = self.hooks.tachi_authorize(principal=principal, action=action, session=session)
        return False not in answers and True in answers

    def authorize(self, principal: Principal, action: str, session: Any) -> None:
        """Raise ``PermissionDenied`` (and audit it) unless ``allowed``."""
        if self.allowed(principal, action, session):
            return
        session_id = getattr(session, "id", None)
        self.audit_by(principal, action, session_id, result="denied", reason="policy")
        target = f" on session {session_id}" if session_id else ""
        raise PermissionDenied(f"{principal.user} may not {action}{target}")

    def role_of(self, principal: Principal, session: SessionRuntime) -> str | None:
        return session.access.role_of(principal)

    def admit(self, principal: Principal) -> None:
        """Refuse, at connect, a local user who holds nothing here (audited)."""
        if principal.grant_id is not None or principal.uid == os.getuid():
            return
        if principal.user in self.grants.users_with_grants():
            return
        if any(s.access.owner_uid == principal.uid for s in self.manager.sessions.values()):
            return  # handed a session
        self.audit_by(principal, "connect", result="denied", reason="no grant for this user")
        raise PermissionDenied(f"{principal.user} holds no grant on this tachi daemon")

    def authenticate_token(self, token: str, principal: Principal) -> Principal:
        try:
            grant = self.grants.authenticate(token, peer_ip=principal.peer_ip)
        except TachiError as exc:
            self.audit_by(principal, "auth.token", result="denied", reason=exc.message)
            raise
        if grant.user and principal.uid is not None and principal.user != grant.user:
            # A grant for a named user is that user's: nobody else may borrow its token.
            reason = f"token of grant {grant.id} belongs to {grant.user}"
            self.audit_by(principal, "auth.token", result="denied", reason=reason)
            raise PermissionDenied(reason)
        return Principal(
            user=grant.user or f"token:{grant.id}",
            uid=principal.uid if grant.user else None,
            source=principal.source,
            grant_id=grant.id,
            grant_session=grant.sessionId,
            grant_role=grant.role,
            peer_ip=principal.peer_ip,
        )

    # -- events worth auditing ---------------------------------------------------------
    def client_attached(
        self, principal: Principal, session: SessionRuntime, client: AttachedClient
    ) -> None:
        self.audit_by(
            principal,
            "session.attach",
            session.id,
            details={"role": client.role, "readOnly": client.read_only},
        )

    def client_detached(self, principal: Principal, session: SessionRuntime, reason: str) -> None:
        if not session.closed:
            self.audit_by(principal, "session.detach", session.id, result="info", reason=reason)

    def window_event(
        self, principal: Principal, session: SessionRuntime, action: str, window: int
    ) -> None:
        self.audit_by(principal, action, session.id, details={"window": window})

    def note_input(self, principal: Principal, session: SessionRuntime, data: bytes) -> None:
        """Input reached a session: attribute the burst, record it if asked to."""
        self.sharing.input_burst(principal, session, len(data))
        self.recordings.input(session, data)

    # -- sharing ------------------------------------------------------------------
    def grant_socket_access(self, uid: int) -> None:
        """Let local user ``uid`` reach this daemon's socket (tmux's server-access)."""
        if uid == os.getuid():
            return
        for transport in self.transports:
            grant = getattr(transport, "grant_local_access", None)
            if grant is not None:
                grant(uid)

    def end_clients_without_access(self, session_id: str, message: str) -> int:
        return self.sharing.end_clients_without_access(session_id, message)

    def rotate_tokens(
        self, session: SessionRuntime, grant_id: str | None, grace_ns: int, principal: Principal
    ) -> list[dict[str, Any]]:
        return self.sharing.rotate(session, grant_id, grace_ns, principal)

    def handoff(
        self, session: SessionRuntime, user: str, uid: int, keep: str, by: Principal
    ) -> None:
        self.sharing.handoff(session, user, uid, keep, by)

    def audit_by(
        self,
        principal: Principal,
        action: str,
        session: str | None = None,
        *,
        result: str = "allowed",
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Audit an action a principal took (or was refused)."""
        return self.audit(
            action=action,
            result=result,
            principal=principal.user,
            source=principal.source,
            session=session,
            reason=reason,
            details=details,
        )

    def audit(self, **record: Any) -> dict[str, Any]:
        """Append an audit record. Raises ``AuditWriteError`` when the log cannot be
        written and the daemon is configured to fail closed."""
        return self.audit_log.append(**record)

    def _ship_audit_event(self, event: dict[str, Any]) -> None:
        self.hooks.tachi_audit_event(event=event)

    def status(self) -> dict[str, Any]:
        from tachi.gotime import format_rfc3339

        return {
            "pid": os.getpid(),
            "version": self.version,
            "socket": str(self.config.socket),
            "stateDir": str(self.config.state_dir),
            "auditLog": str(self.audit_log.path),
            "startedAt": format_rfc3339(self.started_at),
            "uptime": now_ns() - self.started_at,
            "sessions": len(self.manager.sessions),
            "transports": [t.name for t in self.transports],
        }


async def serve(config: config_mod.Config) -> None:
    """Run a daemon until it is stopped (used by ``tachid`` and ``tachi daemon start``)."""
    daemon = Daemon(config, make_plugin_manager())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    await daemon.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tachid", description="The tachi session daemon.")
    parser.add_argument("--socket", help="Unix socket path")
    parser.add_argument("--config", help="config.toml path")
    parser.add_argument("--log-level", default=os.environ.get("TACHI_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_mod.load(Path(args.config) if args.config else None)
    except TachiError as exc:
        print(f"tachid: {exc}", file=sys.stderr)
        return 1
    if args.socket:
        config.socket = Path(args.socket)
    try:
        asyncio.run(serve(config))
    except RuntimeError as exc:
        print(f"tachid: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
