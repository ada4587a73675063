"""tachid: the daemon's lifecycle and the policy decisions every transport shares.

One daemon per user per host. It loads plugins, opens the state (SQLite, audit
log), starts the transports, and serves until ``daemon.stop``, SIGTERM or
SIGINT, when every session is closed with reason ``daemon-stopped``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tachi import __version__
from tachi import config as config_mod
from tachi.core.access import SessionAccess
from tachi.core.guarded_hooks import Verdict
from tachi.core.manager import SessionManager
from tachi.core.principal import Principal, user_name
from tachi.core.store import SessionStore, connect
from tachi.core.tasks import TaskSet
from tachi.errors import AuditWriteError, PermissionDenied, TachiError
from tachi.gotime import now_ns
from tachi.hooks import Hooks
from tachi.models import CloseReason
from tachi.plugins import make_plugin_manager

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import pluggy

    from tachi import protocol
    from tachi.core.clients import AttachedClient, Wire
    from tachi.core.peer import Peer
    from tachi.core.session import SessionRuntime
    from tachi.daemon.inbox import FrameInbox
    from tachi.models import SessionRequest

log = logging.getLogger("tachi.daemon")
#: The plugin name of the built-in share-token authenticator.
TOKEN_HANDLER = "tachi.builtins.token_auth"

#: What the daemon's own user on the Unix socket may always do, whatever a
#: plugin answers or however it fails: it could send SIGTERM anyway, and must
#: not need to, to get rid of a broken plugin.
OWNER_ALWAYS = frozenset({"daemon.status", "daemon.stop"})


def _plugin_token(peer: Peer) -> bool:
    """Whether ``peer`` presented a token that is not of tachi's grant form (a
    plugin's scheme: see ``tachi.builtins.token_auth``)."""
    from tachi.builtins.token_auth import is_grant_token

    return peer.token is not None and not is_grant_token(peer.token)


def _is_local_owner(principal: Principal) -> bool:
    """The daemon's own user, proven by the kernel on the Unix socket, with no token."""
    return principal.kind == "unix" and principal.grant_id is None and principal.uid == os.getuid()


class Daemon:
    """The daemon's state and the decisions (authorisation, admission, audit)
    that every transport and operation goes through."""

    version = __version__

    def __init__(self, config: config_mod.Config, pm: pluggy.PluginManager) -> None:
        from tachi.audit import AuditLog  # the audit module pulls in cryptography
        from tachi.builtins.token_auth import TokenAuthenticator
        from tachi.grants import GrantStore

        self.config = config
        self.pm = pm
        pm.register(TokenAuthenticator(self), TOKEN_HANDLER)
        # Typed calls (tachi.hooks): decisions one implementation at a time with
        # deadlines, audit shippers on their own thread, plugins' answers checked.
        self.hooks = Hooks(pm, on_failure=self._audit_plugin_failure)
        #: Some ``tachi_authorize`` takes ``data``: input goes through the slow path.
        self.filters_input = self.hooks.filters_input
        self.started_at = now_ns()
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state, 0o700)
        self.db = connect(state / "tachi.db")
        self.grants = GrantStore(self.db)
        self.audit_log = AuditLog(
            state / "audit",
            fail_open=config.audit_fail_open,
            # No listener when no plugin ships: the log copies each record for it.
            on_event=self._ship_audit_event if self.hooks.ships_audit_events() else None,
            background_checkpoints=True,
        )
        # Checked now, not when a session first needs them (refused ones are logged).
        multiplexer = self.hooks.multiplexer()
        self.hooks.check_screens()
        self.manager = SessionManager(
            config=config,
            store=SessionStore(self.db),
            hooks=self.hooks,
            audit=self.audit,
            multiplexer=multiplexer,
        )
        from tachi.core.recording import RecordingManager

        recorders = self.hooks.recorders()
        self.recordings = RecordingManager(
            self.db,
            directory=config.recordings_dir,
            recorder=recorders.get(config.recording_format),
            record_input=config.recording_input,
            audit=self.audit,
            recorders=recorders,
        )
        self.manager.session_listeners.append(self.recordings.session_event)
        from tachi.daemon.sharing import SharingService

        self.sharing = SharingService(self)
        self.system_principal = Principal(user="tachid", uid=None, source="daemon")
        from tachi.daemon.refusals import RefusalThrottle

        self.refusals = RefusalThrottle(self.audit)
        #: The transports running now (the listeners among them: ``self.listeners``).
        self.transports: list[Any] = []
        #: ``tachid --listen``: (transport, address) listeners added at start.
        self.listen_args: list[tuple[str, str]] = []
        #: ``tachid --config``: the file ``daemon reload`` reads (``None``: the default).
        self.config_path: Path | None = None
        self.extensions: dict[str, Any] = {}
        from tachi.daemon.dispatch import Dispatcher
        from tachi.daemon.operations import table
        from tachi.daemon.services import Services

        #: Every action policies decide (the built-ins and the plugins').
        self.actions = self.hooks.actions()
        #: The built-in operations, then the plugins' (``tachi_register_operations``).
        self.dispatcher = Dispatcher(self.hooks.operations(table(), self.actions), self.actions)
        # What operations get instead of the daemon: each part as narrow as it needs.
        self.services = Services(
            config=config,
            sessions=self.manager,
            grants=self.grants,
            audit=self,
            sharing=self.sharing,
            recordings=self.recordings,
            effects=self,
            lifecycle=self,
            policy=self,
        )
        self._stop = asyncio.Event()
        #: Every connection being served, whatever its transport: awaited at stop,
        #: so nothing they started outlives the audit log and the database.
        self.connections = TaskSet("connections")
        #: Greeted connections open, by principal (see admit_connection).
        self._open_connections: dict[tuple[str | None, str | None], int] = {}
        #: Connections refused past the limit, by principal: (when one was last
        #: audited, refused since). One record a second at most per principal.
        self._refused_connections: dict[tuple[str | None, str | None], tuple[float, int]] = {}
        #: Set by ``daemon.stop`` with ``keepSessions`` (``tachi daemon restart``).
        self.keep_sessions = False

    # -- running --------------------------------------------------------------
    async def run(self) -> None:
        repaired = self.recordings.repair()
        if repaired:
            log.info("repaired %d recordings left open by a previous daemon", repaired)
        from tachi.core.survival import Survival

        # Before the manager starts: it closes every stored session not adopted.
        self.survival = Survival(self)
        self.survival.start()
        self.manager.start()
        self.sharing.start()
        from tachi.daemon.listeners import Listeners

        self.listeners = Listeners(self, self.listen_args)
        try:
            try:
                await self.listeners.start()
            except BaseException:
                # A listener that cannot start (its port taken) stops this
                # daemon, not the sessions it adopted: the keeper holds them
                # for the next one, started once the cause is fixed.
                self.keep_sessions = self.survival.link is not None and bool(self.manager.sessions)
                raise
            self.audit(
                action="daemon.start",
                result="info",
                principal="tachid",
                source="daemon",
                details={"pid": os.getpid(), "version": self.version},
            )
            await self._stop.wait()
        finally:
            await self.listeners.stop(keep=self.keep_sessions)
            await self.sharing.stop()
            if self.keep_sessions:  # a restart: the keeper holds them for the next daemon
                self.survival.leave()
                await self.manager.shutdown(keep=True)
            else:
                await self.manager.shutdown()
                self.survival.close()
            # After the sessions told their clients why they closed; each
            # connection's own work (an exec's end) is audited as it goes.
            await self.connections.close()
            self.recordings.process.stop()
            self.refusals.close()
            self.audit(action="daemon.stop", result="info", principal="tachid", source="daemon")
            self.audit_log.close()
            self.hooks.close_audit_events(timeout=5.0)
            self.db.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def serve_connection(
        self,
        wire: Wire,
        next_frame: Callable[[], Awaitable[protocol.Frame | None]] | FrameInbox,
        *,
        peer: Peer | None = None,
        principal: Principal | None = None,
    ) -> None:
        """Serve one connection to its end.

        ``next_frame`` pulls frames (an async callable, ``None`` at the end),
        or is a :class:`~tachi.daemon.inbox.FrameInbox` that the transport's
        protocol feeds. Give ``peer`` to have the peer authenticated at the
        protocol's hello
        (with the token it may present there), or ``principal`` when the
        transport authenticated it already with :meth:`authenticate`.
        """
        from tachi.daemon.connection import Connection

        if peer is None and principal is None:
            raise ValueError("serve_connection needs a peer or a principal")
        task = asyncio.current_task()
        if task is not None:
            self.connections.adopt(task)
        await Connection(self, wire, peer=peer, principal=principal).run(next_frame)

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
            # If the recording fails, the session runs unrecorded: the recording
            # manager logged and audited why, the index says so, `new` warns.
            with contextlib.suppress(TachiError):
                self.recordings.start(session, principal.user)
        return session

    # -- authorisation --------------------------------------------------------
    def admit_connection(self, principal: Principal) -> Callable[[], None]:
        """Count a connection of ``principal`` (greeted) against ``[limits]
        connections``; returns what un-counts it, once. Raises
        ``PermissionDenied`` (audited) past the limit. The daemon's own user is
        not counted, on its socket or with a daemon token (its own, remote):
        nothing may lock the owner out."""
        if _is_local_owner(principal) or principal.grant_session == "*":
            return lambda: None
        key = (
            ("grant", principal.grant_id)
            if principal.grant_id
            else (principal.kind, principal.user)
        )
        limit = self.config.connections
        if self._open_connections.get(key, 0) >= limit:
            who = f"grant {principal.grant_id}" if principal.grant_id else principal.user
            reason = (
                f"too many connections for {who} (at most {limit} at once: [limits] connections)"
            )
            self._audit_refused_connection(principal, key, reason)
            raise PermissionDenied(reason)
        self._open_connections[key] = self._open_connections.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._open_connections.get(key, 1) - 1
            if left > 0:
                self._open_connections[key] = left
            else:
                self._open_connections.pop(key, None)

        return release

    def _audit_refused_connection(
        self, principal: Principal, key: tuple[str | None, str | None], reason: str
    ) -> None:
        """Audit a refusal past ``[limits] connections``: the first, then at
        most one a second per principal, counting the refusals it stands for
        (``refused``). A peer that reconnects in a loop must not fill the log."""
        now = time.monotonic()
        last, refused = self._refused_connections.get(key, (-1.0, 0))
        refused += 1
        if last >= 0 and now - last < 1.0:
            self._refused_connections[key] = (last, refused)
            return
        if len(self._refused_connections) >= 4096:
            self._refused_connections.clear()
        self._refused_connections[key] = (now, 0)
        self.audit_by(
            principal,
            "connection.open",
            result="denied",
            reason=reason,
            details={"refused": refused},
        )

    def allowed(self, principal: Principal, action: str, session: Any) -> bool:
        """Ask every ``tachi_authorize`` hook: any deny wins, else one allow allows.
        A daemon token must still be live (not expired or revoked). Never raises
        for a plugin: one that raises, answers something other than a bool or
        ``None``, or overruns its deadline denies."""
        return self._denial(principal, action, session) is None

    def _denial(
        self, principal: Principal, action: str, session: Any
    ) -> tuple[str, str | None, str | None] | None:
        """Why ``principal`` may not do ``action``: (audit reason, the plugin that
        decided, the message for the peer or ``None`` for the usual one); ``None``
        if it may."""
        if principal.grant_session == "*" and not self.grants.is_active("*", principal.grant_id):
            return ("policy", None, None)
        denial = _denial_of(self.hooks.authorize(principal, action, session))
        if denial is not None and action in OWNER_ALWAYS and _is_local_owner(principal):
            self.audit_by(
                principal,
                action,
                result="allowed",
                reason=f"{denial[0]}; overridden: the daemon's own user may always {action}",
                details={"plugin": denial[1]},
            )
            return None
        return denial

    def authorize(self, principal: Principal, action: str, session: Any) -> None:
        """Raise ``PermissionDenied`` (and audit it, naming the plugin that
        denied and its reason) unless ``allowed``."""
        denial = self._denial(principal, action, session)
        if denial is None:
            return
        reason, plugin, message = denial
        session_id = getattr(session, "id", None)
        self.audit_by(
            principal,
            action,
            session_id,
            result="denied",
            reason=reason,
            details={"plugin": plugin} if plugin else None,
        )
        target = f" on session {session_id}" if session_id else ""
        raise PermissionDenied(message or f"{principal.user} may not {action}{target}")

    def role_of(self, principal: Principal, session: SessionRuntime) -> str | None:
        return session.access.role_of(principal)

    def check_address(self, peer: Peer) -> None:
        """Apply the daemon-wide ``allow_ip`` / ``deny_ip`` rules to a network peer.

        Raises ``PermissionDenied`` (audited with the address) when the peer's
        address is denied, or not allowed while an allow list is set. Local
        peers (no address) always pass.
        """
        if peer.address is None:
            return
        reason = self.config.address_refusal(peer.address)
        if reason is not None:
            self.audit_refusal(peer, "connect", reason)
            raise PermissionDenied(reason)

    def authenticate(self, peer: Peer) -> Principal:
        """Who ``peer`` is, by the IP rules and the ``tachi_authenticate`` hooks.

        Raises ``PermissionDenied`` (audited with the peer's address) when the
        address is refused, when no hook vouches for the peer and it presented
        no token, or when its token is refused; ``AuditWriteError`` if the
        refusal cannot be audited while failing closed.
        """
        self.check_address(peer)
        verdict = self.hooks.authenticate(peer)
        principal = verdict.result
        owner = peer.transport == "unix" and peer.uid == os.getuid()
        if verdict.refusal is not None:
            plugin, exc = verdict.refusal
            if (
                not owner
                or plugin.startswith("tachi.builtins.")
                or isinstance(exc, AuditWriteError)
                or _plugin_token(peer)
            ):
                # A token of a plugin's own scheme is that plugin's to judge: its
                # refusal stands, with its reason, for the daemon's own user too
                # (who gets in without the token). Past here the token would be
                # looked up as a grant's and refused as "unknown token".
                # The built-in token handler audits its own refusals (auth.token).
                if isinstance(exc, PermissionDenied) and plugin != TOKEN_HANDLER:
                    # A refused token is auth.token whoever judged it: it also
                    # slows that address's next guesses.
                    action = "auth.token" if peer.token is not None else "auth"
                    self.audit_refusal(peer, action, exc.message)
                raise exc
            # The daemon's own user (the kernel says so) is never locked out by a
            # plugin: it could kill the daemon anyway, and needs to stop it.
            self.audit(
                action="auth",
                result="allowed",
                principal=peer.username or "-",
                source=peer.source,
                reason=f"plugin {plugin} refused ({exc.message}); overridden: the daemon's"
                " own user on the Unix socket is always let in",
                details={"transport": peer.transport, "plugin": plugin},
            )
            principal = None
        if principal is None and owner:
            assert peer.uid is not None
            principal = Principal.local(peer.uid, peer.pid)
            if peer.token is not None:
                principal = self.principal_for_token(peer.token, principal, peer)
        if principal is None:
            reason = f"no identity accepted for this {peer.transport} connection"
            if peer.address is not None:
                reason += " (present a token: TACHI_TOKEN; 'tachi token create' makes one)"
            failed = ", ".join(sorted({plugin for plugin, _ in verdict.failures}))
            self.audit_refusal(peer, "auth", f"{reason}; failed: {failed}" if failed else reason)
            raise PermissionDenied(reason)
        self.admit(principal)
        return principal

    def _audit_plugin_failure(self, plugin: str, hook: str, why: str) -> None:
        """Audit that a plugin failed in a decision hook (as often as it is logged)."""
        self.audit(
            action="plugin.error",
            result="error",
            principal="tachid",
            source="daemon",
            reason=f"plugin {plugin} failed in {hook}: {why}",
            details={"plugin": plugin, "hook": hook},
        )

    def audit_refusal(self, peer: Peer, action: str, reason: str) -> None:
        """Audit a refused peer that has no principal yet (named by its source):
        per network address, the first of an interval in full, the rest as one
        counted record (``tachi.daemon.refusals``). A refused token or password
        (``auth.token``) also slows that address's next attempts."""
        if action == "auth.token":
            self.refusals.secret_failed(peer.address)
        record = {
            "action": action,
            "result": "denied",
            "principal": peer.username or "-",
            "source": peer.source,
            "reason": reason,
            "details": {"transport": peer.transport, "address": peer.address},
        }
        self.refusals.refused(peer.address, record)

    def admit(self, principal: Principal) -> None:
        """Refuse, at connect, a local user who holds nothing here (audited)."""
        if principal.uid is None or principal.uid == os.getuid():
            # Network identities and token holders are checked per action.
            return
        if principal.user in self.grants.users_with_grants():
            return
        if any(s.access.owner_uid == principal.uid for s in self.manager.sessions.values()):
            return  # handed a session
        self.audit_by(principal, "connect", result="denied", reason="no grant for this user")
        raise PermissionDenied(f"{principal.user} holds no grant on this tachi daemon")

    def principal_for_token(self, token: str, identity: Principal | None, peer: Peer) -> Principal:
        """The principal a share token makes of ``identity`` (``None``: an anonymous peer).

        Raises ``PermissionDenied`` (audited) for an unknown, expired, revoked
        or address-pinned token, and for a grant bound to an identity that the
        peer did not prove.
        """
        try:
            grant = self.grants.authenticate(token, peer_ip=peer.address)
        except TachiError as exc:
            self.audit_refusal(peer, "auth.token", exc.message)
            raise
        if grant.sessionId == "*":
            uid = os.getuid()
            return Principal(
                user=user_name(uid),
                uid=uid,
                source=f"{peer.source} (token {grant.id})",
                grant_id=grant.id,
                grant_session="*",
                grant_role="owner",
                peer_ip=peer.address,
                kind="token",
            )
        if grant.user and (identity is None or not grant.binds(identity.kind, identity.user)):
            # A grant for a named identity is that identity's: nobody may borrow its token.
            reason = f"token of grant {grant.id} belongs to {grant.user}"
            if identity is None and peer.address is not None:
                reason += f"; connect as {grant.user} (a verified identity) to use it"
            self.audit_refusal(peer, "auth.token", reason)
            raise PermissionDenied(reason)
        return Principal(
            user=grant.user or f"token:{grant.id}",
            uid=identity.uid if identity and grant.user else None,
            source=peer.source,
            grant_id=grant.id,
            grant_session=grant.sessionId,
            grant_role=grant.role,
            peer_ip=peer.address,
            kind=identity.kind if identity and grant.user else "token",
            spiffe_id=identity.spiffe_id if identity and grant.user else None,
        )

    # -- events worth auditing ---------------------------------------------------------
    def client_attached(
        self, principal: Principal, session: SessionRuntime, client: AttachedClient
    ) -> None:
        self.audit_by(
            principal,
            "session.attach",
            session.id,
            details={
                "role": client.role,
                "readOnly": client.read_only,
                "client": client.id,
                # A writable client's size may resize the session on attach.
                "size": {"rows": client.size.rows, "cols": client.size.cols}
                if client.size
                else None,
            },
        )
        self.manager.emit(
            session,
            "client-attached",
            {"client": client.id, "principal": principal.user, "role": client.role},
        )

    def client_detached(self, principal: Principal, session: SessionRuntime, reason: str) -> None:
        if not session.closed:
            self.audit_by(principal, "session.detach", session.id, result="info", reason=reason)
        self.manager.emit(
            session, "client-detached", {"principal": principal.user, "reason": reason}
        )

    def window_event(
        self, principal: Principal, session: SessionRuntime, action: str, window: int
    ) -> None:
        self.audit_by(principal, action, session.id, details={"window": window})
        kind = {"window.new": "window-created", "window.rename": "window-renamed"}.get(action)
        if kind is not None:
            self.manager.emit(session, kind, {"window": window})

    def admit_input(
        self, principal: Principal, session: SessionRuntime, size: int, data: bytes | None = None
    ) -> None:
        """Audit input before it reaches the program (one record per burst of typing).

        With ``data`` (the input itself), the input policies (``tachi_authorize``
        implementations that take ``data``) see it first: ``PermissionDenied``
        (audited, naming the plugin) if one refuses it. Raises ``AuditWriteError``
        when the record cannot be written and the log fails closed. Either way the
        caller must then not write the input.
        """
        if data is not None and self.filters_input:
            self._check_input(principal, session, data)
        self.sharing.input_burst(principal, session, size)

    def _check_input(self, principal: Principal, session: SessionRuntime, data: bytes) -> None:
        """Raise ``PermissionDenied`` (audited) if an input policy refuses ``data``.

        Only a refusal, a failure or ``False`` counts: the write itself was
        allowed already, so these policies can only narrow it."""
        verdict = self.hooks.authorize_input(principal, session, data)
        plugin, reason, message = None, None, None
        if verdict.refusal is not None:
            plugin, exc = verdict.refusal
            reason = message = exc.message
        elif verdict.failures:
            plugin, why = verdict.failures[0]
            reason = f"plugin {plugin} failed: {why}"
        else:
            plugin = next((p for p, answer in verdict.answers if answer is False), None)
            reason = "input policy" if plugin else None
        if reason is None:
            return
        self.audit_by(
            principal,
            "session.write",
            session.id,
            result="denied",
            reason=reason,
            details={"plugin": plugin, "bytes": len(data)},
        )
        raise PermissionDenied(
            message or f"input refused by plugin {plugin} on session {session.id}"
        )

    def note_input(self, principal: Principal, session: SessionRuntime, data: bytes) -> None:
        """Input reached a session (after :meth:`admit_input`): record it if asked to."""
        self.recordings.input(session, data)

    # -- sharing ------------------------------------------------------------------
    async def grant_socket_access(self, uid: int) -> Path | None:
        """Let local user ``uid`` reach this daemon (tmux's server-access); returns
        the socket that user should connect to (``None`` for the daemon's own user)."""
        if uid == os.getuid():
            return None
        for transport in self.transports:
            grant = getattr(transport, "grant_local_access", None)
            if grant is not None:
                return await grant(uid)
        return None

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
        """Audit an action a principal took (or was refused). ``details`` gets
        ``principalKind``: a network user named ``root`` is not the local root."""
        return self.audit(
            action=action,
            result=result,
            principal=principal.user,
            source=principal.source,
            session=session,
            reason=reason,
            details={**(details or {}), "principalKind": principal.kind},
        )

    def audit(self, **record: Any) -> dict[str, Any]:
        """Append an audit record. Raises ``AuditWriteError`` when the log cannot be
        written and the daemon is configured to fail closed."""
        return self.audit_log.append(**record)

    def _ship_audit_event(self, event: dict[str, Any]) -> None:
        self.hooks.audit_event(event)

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
            "keeper": self.survival.status() if hasattr(self, "survival") else None,
            "transports": [t.name for t in self.transports],
            "listeners": self.listeners.describe() if hasattr(self, "listeners") else [],
        }


async def serve(
    config: config_mod.Config,
    *,
    listen: list[tuple[str, str]] | None = None,
    config_path: Path | None = None,
) -> None:
    """Run a daemon until it is stopped (used by ``tachid`` and ``tachi daemon start``):
    with the ``listen`` listeners (transport, address) besides the config's, and
    ``config_path`` as the file ``daemon reload`` reads."""
    from tachi.core import fd_limits

    fd_limits.raise_limit()
    daemon = Daemon(config, make_plugin_manager())
    daemon.listen_args = list(listen or ())
    daemon.config_path = config_path
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    await daemon.run()


def _denial_of(verdict: Verdict) -> tuple[str, str | None, str | None] | None:
    """The ``tachi_authorize`` answers combined: a refusal, a failure or a
    ``False`` denies (naming the plugin); otherwise one ``True`` allows."""
    if verdict.refusal is not None:
        plugin, exc = verdict.refusal
        return (exc.message, plugin, exc.message)
    if verdict.failures:
        plugin, why = verdict.failures[0]
        return (f"plugin {plugin} failed: {why}", plugin, None)
    votes = verdict.answers
    for plugin, answer in votes:
        if answer is False:
            return ("policy", plugin, None)
    if any(answer is True for _, answer in votes):
        return None
    return ("policy", None, None)


def run_loop(main: Any) -> None:
    """Run the daemon's event loop: uvloop when it is installed (the default, or
    ``TACHI_EVENT_LOOP=uvloop``), asyncio's with ``TACHI_EVENT_LOOP=asyncio``.

    uvloop is the default because each keystroke costs the daemon less on it
    (measured here, interleaved: 64 -> 53 us of CPU, echo p50 0.121 -> 0.108 ms;
    throughput within noise). Its one earlier test failure under load was the
    TLS session-ticket stall, which happened on either loop and is fixed."""
    if os.environ.get("TACHI_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tachid", description="The tachi session daemon.")
    parser.add_argument("--socket", help="Unix socket path")
    parser.add_argument("--config", help="config.toml path")
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="also listen for network clients there (WebSocket; besides the config's"
        " listeners; repeatable)",
    )
    parser.add_argument("--log-level", default=os.environ.get("TACHI_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    from tachi.library_warnings import hide_unless_asked

    hide_unless_asked()
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
    from tachi.daemon.listeners import DEFAULT_TRANSPORT

    listen = [(DEFAULT_TRANSPORT, address) for address in args.listen]
    try:
        run_loop(
            serve(config, listen=listen, config_path=Path(args.config) if args.config else None)
        )
    except (RuntimeError, TachiError) as exc:
        # One line: the CLI that started us shows the log's last line to its user.
        print(f"tachid: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
