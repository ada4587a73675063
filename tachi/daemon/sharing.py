"""Live consequences of sharing decisions: who stays attached, with which rights.

Grants live in :class:`tachi.grants.GrantStore`; this module applies changes to
clients that are connected right now: a revoked or expired grant disconnects
its clients within a tick, a rotated token is handed to its clients in-band,
a handoff demotes the old owner's clients without disconnecting them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from tachi.core.periodic import every
from tachi.errors import TachiError
from tachi.gotime import now_ns

if TYPE_CHECKING:
    from tachi.core.clients import AttachedClient
    from tachi.core.principal import Principal
    from tachi.core.session import SessionRuntime
    from tachi.daemon.server import Daemon

log = logging.getLogger("tachi.sharing")
TICK_SECONDS = 0.5
#: A pause this long between keystrokes starts a new input burst in the audit log.
BURST_GAP_SECONDS = 2.0


class SharingService:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._last_tick = now_ns()
        self._bursts: dict[tuple[str, str, str | None], float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(every(TICK_SECONDS, self.tick, log))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- who may stay ----------------------------------------------------------------
    def end_clients_without_access(self, session_id: str, message: str) -> int:
        """Disconnect every client of the session whose principal lost its role."""
        session = self.daemon.manager.sessions.get(session_id)
        if session is None:
            return 0
        dropped = 0
        for client in list(session.clients.values()):
            if session.access.role_of(client.principal) is None:
                client.send_event(
                    {"event": "notice", "level": "error", "message": f"tachi: {message}"}
                )
                client.end("revoked", message)
                session.detach(client)
                self.daemon.client_detached(client.principal, session, message)
                dropped += 1
        return dropped

    # -- rotation -------------------------------------------------------------------
    def rotate(
        self, session: SessionRuntime, grant_id: str | None, grace_ns: int, principal: Principal
    ) -> list[dict[str, Any]]:
        """Rotate one grant's token or all of the session's; connected holders of
        an old token get the new one in-band and stay connected."""
        rotated = self.daemon.grants.rotate(
            session.id, grant_id, grace_ns=grace_ns, created_by=principal.user
        )
        out = []
        for old, new, token in rotated:
            for client in list(session.clients.values()):
                if client.principal.grant_id == old.id:
                    self._switch_grant(client, new.id)
                    client.send_event({"event": "token", "grant": new.id, "token": token})
            self.daemon.audit_by(
                principal,
                "token.rotate",
                session.id,
                details={"old": old.id, "new": new.id, "graceNs": grace_ns},
            )
            out.append({**new.to_json(), "token": token, "replaces": old.id})
        return out

    def _switch_grant(self, client: AttachedClient, grant_id: str) -> None:
        from dataclasses import replace

        principal = replace(client.principal, grant_id=grant_id)
        client.principal = principal
        owner = getattr(client, "connection", None)
        if owner is not None:
            owner.principal = principal

    # -- handoff --------------------------------------------------------------------
    def handoff(
        self, session: SessionRuntime, user: str, uid: int, keep: str, by: Principal
    ) -> None:
        """Make ``user`` the owner now; the old owner keeps ``keep`` (or nothing)."""
        access = session.access
        old_user, old_uid = access.owner_user, access.owner_uid
        access.owner_user, access.owner_uid = user, uid
        session.info.userId = user
        if keep != "none" and old_user != user:
            self.daemon.grants.create(session.id, keep, created_by=by.user, user=old_user)
        for client in list(session.clients.values()):
            p = client.principal
            if p.grant_id is None and p.uid == old_uid and old_uid != uid:
                if keep == "none":
                    client.end("handoff", f"session {session.id} was handed to {user}")
                    session.detach(client)
                    continue
                client.role = keep
                if keep == "observer":
                    client.read_only = True
                client.send_event(
                    {
                        "event": "notice",
                        "level": "info",
                        "message": f"tachi: session handed to {user}; you are now {keep}",
                    }
                )
            elif p.grant_id is None and p.uid == uid:
                client.role = "owner"
                client.read_only = False
                client.send_event(
                    {
                        "event": "notice",
                        "level": "info",
                        "message": f"tachi: you now own session {session.id}",
                    }
                )
        session.apply_size_policy()
        self.daemon.manager.store.save(session.to_model())
        self.daemon.audit_by(
            by, "session.handoff", session.id, details={"from": old_user, "to": user, "keep": keep}
        )
        self.daemon.recordings.marker(session.id, f"handoff: {old_user} -> {user} (keeps {keep})")

    # -- attribution ----------------------------------------------------------------
    def input_burst(self, principal: Principal, session: SessionRuntime, size: int) -> None:
        """Audit who is about to type, once per burst of input rather than per keystroke.

        Called before the input reaches the program. Raises ``AuditWriteError``
        when a burst starts and its record cannot be written (the log fails
        closed): the caller refuses the input. The burst counts as started only
        once its record is written, so every later keystroke tries again.
        """
        key = (session.id, principal.user, principal.grant_id)
        now = time.monotonic()
        last = self._bursts.get(key)
        if last is None or now - last > BURST_GAP_SECONDS:
            self.daemon.audit_by(
                principal,
                "session.input",
                session.id,
                details={"grant": principal.grant_id, "bytes": size},
            )
        self._bursts[key] = now

    # -- time -------------------------------------------------------------------------
    def tick(self, now: int) -> None:
        """Disconnect clients of grants that expired (or whose grace ended) since
        the last tick; rotate tokens that reached the configured age."""
        for grant in self.daemon.grants.expired_between(self._last_tick, now + 1):
            with contextlib.suppress(TachiError):
                self.daemon.audit(
                    action="share.expire",
                    result="info",
                    principal="tachid",
                    source="daemon",
                    session=grant.sessionId,
                    details={"grant": grant.id},
                )
            self.end_clients_without_access(grant.sessionId, f"access expired ({grant.id})")
        self._last_tick = now + 1
        interval = self.daemon.config.token_rotation
        if interval:
            for session in list(self.daemon.manager.sessions.values()):
                for grant in self.daemon.grants.list(session.id):
                    if grant.replacedBy is None and now - grant.createdAt >= interval:
                        system = self.daemon.system_principal
                        self.rotate(session, grant.id, self.daemon.config.token_grace, system)
