"""Live consequences of sharing decisions: who stays attached, with which rights.

Grants live in :class:`tachi.grants.GrantStore`; this module applies changes to
clients that are connected right now: a revoked or expired grant disconnects
its clients within a tick, a rotated token is handed to its clients in-band,
a handoff demotes the old owner's clients without disconnecting them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tachi.core.periodic import every
from tachi.errors import PermissionDenied, TachiError
from tachi.gotime import now_ns
from tachi.grants import DAEMON_GRANT

if TYPE_CHECKING:
    from tachi.config import Config
    from tachi.core.clients import AttachedClient
    from tachi.core.manager import SessionManager
    from tachi.core.principal import Principal
    from tachi.core.recording import RecordingManager
    from tachi.core.session import SessionRuntime
    from tachi.grants import GrantStore

log = logging.getLogger("tachi.sharing")
TICK_SECONDS = 0.5
#: A pause this long between keystrokes starts a new input burst in the audit log.
BURST_GAP_SECONDS = 2.0
_RANK = {"observer": 1, "collaborator": 2, "owner": 3}
#: Reads of a session's contents (``capture``) by one principal: one record at most this often.
READ_AUDIT_SECONDS = 60.0
#: Size changes of one attached client: one record at most this often (a drag is coalesced).
RESIZE_AUDIT_SECONDS = 1.0


@dataclass
class _Resizes:
    last: float
    size: Any = None
    count: int = 0
    timer: asyncio.TimerHandle | None = None
    #: What the timer will call: run at once when sharing stops.
    flush: Callable[[], None] | None = None


def _size_details(size: Any) -> dict[str, int]:
    return {"rows": size.rows, "cols": size.cols}


@dataclass(eq=False)
class Watch:
    """Something that streams a session to a principal outside an attachment (an
    event subscription and its output taps, a request's stream: :class:`BoundStream`),
    re-checked when access changes.

    ``principal`` returns who it streams to now (a connection's principal moves
    to the new grant when its token is rotated in-band); ``session_id`` is the
    session it streams (``None``: every session it may see, filtered event by
    event); ``action`` is what the principal must still be allowed to do on it;
    ``end`` stops it and tells the peer why.
    """

    principal: Callable[[], Principal]
    session_id: str | None
    action: str
    end: Callable[[str], None]


class BoundStream:
    """A request that streams a session to its caller until it replies (a
    ``session.wait``, a streaming ``session.run``, ``run.output --follow``),
    bound to its caller's access as an event subscription is: a :class:`Watch`
    for as long as the ``with`` block runs. When the principal loses
    ``action`` on the session (revoked, expired, rotated out, handed away),
    ``stop`` runs at once (it detaches the stream's listener, so nothing read
    after that reaches the caller), the denial is audited and the request's
    task is cancelled; leaving the block then raises ``PermissionDenied``
    with the reason (``access revoked (g_…)``). Whatever the request started
    in the session (a run) keeps running there.

    Made by :meth:`SharingService.bind`; enter it in the request's own task."""

    def __init__(
        self,
        service: SharingService,
        principal: Callable[[], Principal],
        session_id: str,
        action: str,
        what: dict[str, Any],
        stop: Callable[[], None] | None,
    ) -> None:
        self._service = service
        self._watch = Watch(principal, session_id, action, self._end)
        #: Details of the audit record of its end (add to it as the request learns more).
        self.what = what
        #: Detaches the stream's listener (may be set once the request made it).
        self.stop = stop
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._unwatch: Callable[[], None] = lambda: None
        #: Why access ended (``None`` while it lasts).
        self.ended: str | None = None

    def __enter__(self) -> BoundStream:
        self._task = asyncio.current_task()
        self._cancelling = self._task.cancelling() if self._task is not None else 0
        self._unwatch = self._service.watch(self._watch)
        return self

    def _end(self, message: str) -> None:
        if self.ended is not None:
            return
        self.ended = message
        if self.stop is not None:
            self.stop()
        watch = self._watch
        # The change itself is audited (share.revoke, share.expire); this records
        # what it cut off. A log failing closed must not keep the stream going.
        with contextlib.suppress(TachiError):
            self._service.daemon.audit_by(
                watch.principal(),
                watch.action,
                watch.session_id,
                result="denied",
                reason=message,
                details=self.what,
            )
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel(message)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._unwatch()
        if self.ended is None:
            return False
        task = self._task
        # Take back our cancellation (one that raced a result away counts too);
        # another one still pending goes on as a cancellation.
        if (
            task is not None
            and task.cancelling() > self._cancelling
            and task.uncancel() > self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            return False
        raise PermissionDenied(self.ended) from None


class SharingHost(Protocol):
    """What sharing uses of the daemon (``tachi.daemon.server.Daemon``)."""

    config: Config
    grants: GrantStore
    manager: SessionManager
    recordings: RecordingManager
    system_principal: Principal

    def allowed(self, principal: Principal, action: str, session: Any) -> bool: ...
    def audit(self, **record: Any) -> dict[str, Any]: ...
    def audit_by(
        self, principal: Principal, action: str, session: str | None = None, **kw: Any
    ) -> dict[str, Any]: ...


class SharingService:
    def __init__(self, daemon: SharingHost) -> None:
        self.daemon = daemon
        self._last_tick = now_ns()
        self._bursts: dict[tuple[str, str, str | None], float] = {}
        #: Streams to re-check when access changes (a dict: ordered, O(1) removal).
        self._watches: dict[Watch, None] = {}
        #: (session, action, kind, user, grant) -> (last record, reads since it).
        self._reads: dict[tuple[str, str, str, str, str | None], tuple[float, int]] = {}
        self._resizes: dict[int, _Resizes] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(every(TICK_SECONDS, self.tick, log))

    async def stop(self) -> None:
        """Stop the ticker (awaited) and write the coalesced resize records still
        pending: no timer of ours fires after the daemon closes its audit log."""
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task})
        for state in list(self._resizes.values()):
            if state.timer is not None and state.flush is not None:
                state.timer.cancel()
                state.flush()

    # -- who may stay ----------------------------------------------------------------
    def watch(self, stream: Watch) -> Callable[[], None]:
        """Re-check ``stream`` whenever access changes (see :meth:`reauthorize`);
        returns the function that stops watching it."""
        self._watches[stream] = None
        return lambda: self._watches.pop(stream, None)

    def bind(
        self,
        principal: Callable[[], Principal],
        session_id: str,
        action: str,
        what: dict[str, Any],
        stop: Callable[[], None] | None = None,
    ) -> BoundStream:
        """A request's stream of ``session_id``, bound to ``principal``'s right to
        ``action`` on it (see :class:`BoundStream`); ``what`` goes into the
        audit record of its end (``{"stream": "session.wait"}``)."""
        return BoundStream(self, principal, session_id, action, what, stop)

    def reauthorize(
        self, session_id: str | None, message: str, *, by: Principal | None = None
    ) -> dict[str, int]:
        """Apply an access change to everything live, at once.

        ``session_id`` names the session whose grants changed (``None`` or ``*``,
        a daemon grant: every session). Each attached client is given the role its
        principal holds now: ended (told why) when it holds none, demoted (told,
        and read-only if it is now an observer) when it holds a weaker one. Each
        watched stream (event subscriptions, their output taps, requests that
        stream: :class:`BoundStream`) whose principal
        may no longer do what it does is ended. ``by`` is who made the change
        (``None``: the daemon, for expiry); forced detaches are audited as its
        doing, naming the client's principal. Returns the counts
        ``disconnected``, ``demoted`` and ``streams``.
        """
        actor = by or self.daemon.system_principal
        sessions = self.daemon.manager.sessions
        if session_id is None or session_id == DAEMON_GRANT:
            targets = list(sessions.values())
        else:
            targets = [sessions[session_id]] if session_id in sessions else []
        counts = {"disconnected": 0, "demoted": 0, "streams": 0}
        for session in targets:
            demoted = counts["demoted"]
            for client in list(session.clients.values()):
                outcome = self.recheck(session, client, message, by=actor)
                if outcome != "kept":
                    counts[outcome] += 1
            if counts["demoted"] > demoted:
                session.apply_size_policy()  # a demoted observer no longer sizes it
        counts["streams"] = self._recheck_watches(session_id, message)
        return counts

    def end_clients_without_access(self, session_id: str, message: str) -> int:
        """Apply an access change to the session (see :meth:`reauthorize`); returns
        how many clients were disconnected."""
        return self.reauthorize(session_id, message)["disconnected"]

    def recheck(
        self,
        session: SessionRuntime,
        client: AttachedClient,
        message: str,
        *,
        by: Principal | None = None,
    ) -> str:
        """Give one attached client the role its principal holds now; returns
        ``kept``, ``demoted`` or ``disconnected``. Never promotes: a client that
        gained rights keeps what it attached with."""
        role, until = session.access.role_and_end(client.principal)
        if role is None:
            client.send_event({"event": "notice", "level": "error", "message": f"tachi: {message}"})
            client.end("revoked", message)
            session.detach(client)
            # The change that caused it is audited already (share.revoke,
            # share.expire): a failing log must not keep the client attached.
            with contextlib.suppress(TachiError):
                self.detached_by(by or self.daemon.system_principal, session, client, message)
            return "disconnected"
        client.role_until = until
        if _RANK.get(role, 0) >= _RANK.get(client.role, 0):
            return "kept"
        was = client.role
        self._demote(client, role, message)
        with contextlib.suppress(TachiError):
            self.daemon.audit_by(
                by or self.daemon.system_principal,
                "session.demote",
                session.id,
                result="info",
                reason=message,
                details={
                    "client": client.id,
                    "principal": client.principal.user,
                    "grant": client.principal.grant_id,
                    "from": was,
                    "to": role,
                    "readOnly": client.read_only,
                },
            )
        return "demoted"

    def lapsed(self, session: SessionRuntime, client: AttachedClient) -> None:
        """The grant behind a client's role ended between two ticks, and it typed:
        ask for its role now (see :meth:`AttachedClient.may_write`)."""
        reason = "access expired"
        if client.principal.grant_id is not None:
            reason += f" ({client.principal.grant_id})"
        self.recheck(session, client, reason)
        if client.read_only and not client.ended:
            session.apply_size_policy()

    def detached_by(
        self, actor: Principal, session: SessionRuntime, client: AttachedClient, reason: str
    ) -> None:
        """Audit and announce a client detached by someone else (or the daemon):
        the record's principal is ``actor``; the client and its principal are in
        ``details``. Raises ``AuditWriteError`` if the log fails closed."""
        victim = client.principal
        if not session.closed:
            self.daemon.audit_by(
                actor,
                "session.detach",
                session.id,
                result="info",
                reason=reason,
                details={
                    "client": client.id,
                    "principal": victim.user,
                    "source": victim.source,
                    "grant": victim.grant_id,
                },
            )
        self.daemon.manager.emit(
            session,
            "client-detached",
            {"client": client.id, "principal": victim.user, "reason": reason, "by": actor.user},
        )

    def _recheck_watches(self, session_id: str | None, message: str) -> int:
        everything = session_id is None or session_id == DAEMON_GRANT
        ended = 0
        for stream in list(self._watches):
            if not everything and stream.session_id not in (None, session_id):
                continue
            principal = stream.principal()
            if stream.session_id is None:
                # Not bound to one session (its events are filtered one by one):
                # it lasts as long as the grant it came in with.
                allowed = principal.grant_id is None or self.daemon.grants.is_active(
                    principal.grant_session or "", principal.grant_id
                )
            else:
                session = self.daemon.manager.sessions.get(stream.session_id)
                if session is None:
                    continue  # closed: nothing more will stream
                allowed = self.daemon.allowed(principal, stream.action, session)
            if not allowed:
                self._watches.pop(stream, None)
                stream.end(message)
                ended += 1
        return ended

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
                    client.role_until = new.ends_at()
                    client.send_event({"event": "token", "grant": new.id, "token": token})
            self.daemon.audit_by(
                principal,
                "token.rotate",
                session.id,
                details={"old": old.id, "new": new.id, "graceNs": grace_ns},
            )
            out.append({**new.to_json(), "token": token, "replaces": old.id})
        if rotated and grace_ns <= 0:
            # The old tokens are dead now: whatever still streams under them
            # (not attached, so not moved to the new grant) ends at once.
            self.reauthorize(session.id, "token rotated out", by=principal)
        return out

    def _switch_grant(self, client: AttachedClient, grant_id: str) -> None:
        from dataclasses import replace

        principal = replace(client.principal, grant_id=grant_id)
        client.principal = principal
        owner = getattr(client, "connection", None)
        if owner is not None:
            owner.principal = principal

    # -- handoff --------------------------------------------------------------------
    @staticmethod
    def _demote(client: AttachedClient, role: str, message: str) -> None:
        """Give a live client the weaker ``role`` and tell it (the notice carries
        ``role`` and ``readOnly``, which the client obeys)."""
        client.role = role
        if role == "observer" and not client.read_only:
            client.read_only = True
            # The daemon stops reading the client's terminal: its keys go back
            # to the client, which now types into nothing.
            connection = client.connection
            if connection is not None and getattr(connection, "attached", None) is client:
                connection.stop_terminal_input()
                connection.send({"event": "terminal", "input": False, "keys": ""})
        suffix = " (read-only)" if client.read_only else ""
        client.send_event(
            {
                "event": "notice",
                "level": "info",
                "message": f"tachi: {message}; you are now {role}{suffix}",
                "role": role,
                "readOnly": client.read_only,
            }
        )

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
                self._demote(client, keep, f"session handed to {user}")
            elif p.grant_id is None and p.uid == uid:
                # Never made writable: a client attached with --read-only stays so.
                client.role = "owner"
                client.send_event(
                    {
                        "event": "notice",
                        "level": "info",
                        "message": f"tachi: you now own session {session.id}",
                        "role": "owner",
                        "readOnly": client.read_only,
                    }
                )
        session.apply_size_policy()
        self.daemon.manager.store.save(session.to_model())
        self._recheck_watches(session.id, f"session {session.id} was handed to {user}")
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

    def note_read(
        self, principal: Principal, session: SessionRuntime, action: str, details: dict[str, Any]
    ) -> None:
        """Audit a read of what a session shows (``session.capture``): the first
        read, then at most one record per ``READ_AUDIT_SECONDS`` for the same
        principal, session and action, whose ``reads`` counts the reads since
        the previous record (this one included), so polling cannot flood the log.
        Raises ``AuditWriteError`` when the log fails closed: the read is refused."""
        key = (session.id, action, principal.kind, principal.user, principal.grant_id)
        now = time.monotonic()
        last, count = self._reads.get(key, (None, 0))
        count += 1
        if last is None or now - last >= READ_AUDIT_SECONDS:
            self.daemon.audit_by(principal, action, session.id, details={**details, "reads": count})
            self._reads[key] = (now, 0)
        else:
            self._reads[key] = (last, count)

    def client_resize(
        self, principal: Principal, session: SessionRuntime, client: AttachedClient, size: Any
    ) -> None:
        """Audit an attached client's new size (``session.resize`` with ``client``).

        A terminal being dragged sends many: at most one record per client per
        ``RESIZE_AUDIT_SECONDS``. The first is written before the size applies
        (raises ``AuditWriteError`` when the log fails closed); later ones in that
        interval are coalesced into one record written at its end, with the last
        size and ``coalesced``, the number of changes it stands for."""
        now = time.monotonic()
        state = self._resizes.get(client.id)
        if state is None or (state.timer is None and now - state.last >= RESIZE_AUDIT_SECONDS):
            self.daemon.audit_by(
                principal,
                "session.resize",
                session.id,
                details={"client": client.id, **_size_details(size)},
            )
            self._resizes[client.id] = _Resizes(last=now)
            return
        state.size, state.count = size, state.count + 1
        if state.timer is None:
            delay = max(0.0, state.last + RESIZE_AUDIT_SECONDS - now)
            state.flush = functools.partial(self._flush_resizes, principal, session, client.id)
            state.timer = asyncio.get_running_loop().call_later(delay, state.flush)

    def _flush_resizes(self, principal: Principal, session: SessionRuntime, client_id: int) -> None:
        state = self._resizes.get(client_id)
        if state is None or state.size is None:
            return
        details = {"client": client_id, **_size_details(state.size), "coalesced": state.count}
        state.timer, state.flush = None, None
        state.size, state.count, state.last = None, 0, time.monotonic()
        # The sizes applied already; a log failing closed can only lose this summary.
        with contextlib.suppress(TachiError):
            self.daemon.audit_by(principal, "session.resize", session.id, details=details)

    def _forget_idle(self) -> None:
        """Drop rate-limiting state nobody needs any more (bounded memory)."""
        now = time.monotonic()
        for cid, state in list(self._resizes.items()):
            if state.timer is None and now - state.last >= RESIZE_AUDIT_SECONDS:
                del self._resizes[cid]
        live = self.daemon.manager.sessions
        for key, (last, count) in list(self._reads.items()):
            if key[0] not in live or (count == 0 and now - last >= READ_AUDIT_SECONDS):
                del self._reads[key]

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
            ended = "rotated out" if grant.replacedBy else "expired"
            self.reauthorize(grant.sessionId, f"access {ended} ({grant.id})")
        self._last_tick = now + 1
        self._forget_idle()
        interval = self.daemon.config.token_rotation
        if interval:
            for session in list(self.daemon.manager.sessions.values()):
                for grant in self.daemon.grants.list(session.id):
                    if grant.replacedBy is None and now - grant.createdAt >= interval:
                        system = self.daemon.system_principal
                        self.rotate(session, grant.id, self.daemon.config.token_grace, system)
