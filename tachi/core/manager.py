"""The session manager: the seed's SessionManager, on the daemon side.

It creates sessions, finds them by id or name, enforces idle timeouts and
maximum durations, and keeps the store current. Authorisation is not done here:
the RPC layer asks the policy hooks before it calls in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pwd
import secrets
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tachi.config import Config
from tachi.core.guarded_hooks import GuardedHook
from tachi.core.periodic import every
from tachi.core.principal import Principal
from tachi.core.screen_budget import ScreenBudget, default_limit
from tachi.core.session import SessionEvents, SessionRuntime
from tachi.core.store import SessionStore

if TYPE_CHECKING:
    from tachi.core.keeper_link import KeeperLink
from tachi.errors import Conflict, InvalidRequest, NotFound, TachiError
from tachi.gotime import format_duration, now_ns
from tachi.models import CloseReason, Session, SessionFilter, SessionRequest, SessionState

log = logging.getLogger("tachi.manager")

TICK_SECONDS = 0.25
#: How long a closed session's ``closed`` event waits for its windows' exits.
CLOSED_EVENT_WAIT = 2.0
PRUNE_INTERVAL_NS = 3600 * 1_000_000_000
AuditFn = Callable[..., Any]


#: Session ids are this many lowercase hex digits.
ID_LENGTH = 8


class SessionManager:
    """Owns every live ``SessionRuntime`` of the daemon."""

    def __init__(
        self,
        *,
        config: Config,
        store: SessionStore,
        hooks: Any,
        audit: AuditFn,
        multiplexer: type,
    ) -> None:
        self.config = config
        self.store = store
        self.hooks = hooks
        self.audit = audit
        self._multiplexer = multiplexer
        self.sessions: dict[str, SessionRuntime] = {}
        #: Closed sessions whose processes are still exiting (hung up, not yet gone):
        #: shutdown waits for them too, so their exit is saved before the store closes.
        self._exiting: set[SessionRuntime] = set()
        #: ``closed`` events held back until the session's windows have exited
        #: (``tachi close`` hangs them up): listeners see window-exited first.
        self._closing: dict[SessionRuntime, dict[str, Any]] = {}
        self._stopped = False
        self.screen_budget = ScreenBudget(default_limit(config.screen_memory))
        self._session_event_hook = GuardedHook(hooks.tachi_session_event)
        self.session_listeners: list[Callable[[SessionRuntime, str, dict[str, Any]], None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._last_prune = 0
        #: The session keeper new windows are spawned through (see tachi.core.survival).
        self.keeper: KeeperLink | None = None

    # -- lifecycle of the manager -------------------------------------------
    def start(self) -> None:
        orphans = self.store.close_orphans(now_ns(), keep=self.sessions)
        if orphans:
            log.info("marked %d sessions of a previous daemon as closed", orphans)
        pruned = self.prune_history(now_ns())
        if pruned:
            log.info("forgot %d sessions closed longer ago than the retention", pruned)
        self._ticker = asyncio.get_running_loop().create_task(
            every(TICK_SECONDS, self.tick, log, watch=True)
        )

    async def shutdown(self, grace: float = 3.0, *, keep: bool = False) -> None:
        """Close every session with reason ``daemon-stopped`` and wait (bounded) for
        their processes to go; with ``keep`` (a restart), leave them running for
        the session keeper and the next daemon."""
        if self._ticker:
            # Awaited: a tick half done must not touch the store after it closes.
            self._ticker.cancel()
            await asyncio.wait({self._ticker})
        if keep:
            self._stopped = True
            return
        for session in list(self.sessions.values()):
            session.finish(CloseReason.DAEMON_STOPPED)
        deadline = asyncio.get_running_loop().time() + grace
        while self._exiting:
            if asyncio.get_running_loop().time() > deadline:
                log.warning("%d sessions' processes did not exit in time", len(self._exiting))
                break
            await asyncio.sleep(0.05)
        # Anything that exits later finds the store closed: it is not written.
        self._stopped = True

    # -- create ---------------------------------------------------------------
    def create(self, principal: Principal, req: SessionRequest) -> SessionRuntime:
        """Start a session with one window. Raises ``Conflict`` for a name in use and
        ``InvalidRequest`` for a command that cannot be started."""
        if req.name is not None:
            _check_name(req.name)
            if any(s.info.name == req.name for s in self.sessions.values()):
                raise Conflict(f"a live session is already named {req.name!r}")
        session_id = self._new_id()
        now = now_ns()
        command = req.command or [self._login_shell(principal)]
        pty = req.pty
        if not pty.term:
            pty.term = self.config.term
        info = Session(
            id=session_id,
            # An agent that proved a SPIFFE ID is that agent (the seed's agentId).
            agentId=req.agentId or principal.spiffe_id or self.config.agent_id,
            userId=principal.user,
            state=SessionState.PENDING,
            pty=pty,
            createdAt=now,
            lastActivity=now,
            idleTimeout=self.config.idle_timeout if req.idleTimeout is None else req.idleTimeout,
            maxDuration=self.config.max_duration if req.maxDuration is None else req.maxDuration,
            name=req.name,
            command=command,
        )
        if info.idleTimeout < 0 or info.maxDuration < 0:
            raise InvalidRequest("idleTimeout and maxDuration must not be negative")
        env = self._child_env(info, req.env)
        if req.cwd and not os.path.isdir(req.cwd):
            raise InvalidRequest(f"cannot start in {req.cwd!r}: no such directory")
        cwd = req.cwd or _home_of(principal)
        session = SessionRuntime(
            info,
            owner_uid=principal.uid,
            env=env,
            cwd=cwd,
            size_policy=self.config.size_policy,
            events=self.session_events(),
        )
        # The seed's pending state: listed, stored and announced before the first
        # window's process exists, so plugins and lists see every step.
        self.sessions[session_id] = session
        self.store.save(session.to_model())
        self.emit(session, "created", {"command": command, "state": str(info.state)})
        try:
            session.mux.new_window(command)
        except (OSError, TachiError) as exc:
            del self.sessions[session_id]
            self.store.delete(session_id)
            self.emit(session, "closed", {"reason": "not-started", "exitCode": None})
            if isinstance(exc, TachiError):
                raise  # e.g. out of descriptors: its own message says what to do
            raise InvalidRequest(f"cannot start {command[0]!r}: {_reason(exc)}") from None
        info.state = SessionState.SUSPENDED
        self.store.save(session.to_model())
        self.emit(session, "state", {"state": str(info.state)})
        return session

    def session_events(self) -> SessionEvents:
        """What a new (or adopted) session reports to and gets from the manager."""
        events = SessionEvents(
            create_screen=lambda cols, rows: self.hooks.create_screen(
                cols, rows, self.config.history_limit
            ),
            make_multiplexer=self._multiplexer,
            changed=self._changed,
            closed=self._closed,
            budget=self.screen_budget,
            history_lines=self.config.history_limit,
            shell_dir=self.config.state_dir / "shell",
        )
        events.keeper = self.keeper
        return events

    def _new_id(self) -> str:
        while True:
            candidate = secrets.token_hex(ID_LENGTH // 2)
            if candidate not in self.sessions and self.store.get(candidate) is None:
                return candidate

    def _login_shell(self, principal: Principal) -> str:
        if self.config.shell:
            return self.config.shell
        if principal.uid is not None:
            with contextlib.suppress(KeyError):
                shell = pwd.getpwuid(principal.uid).pw_shell
                if shell and os.access(shell, os.X_OK):
                    return shell
        return os.environ.get("SHELL") or "/bin/sh"

    def _child_env(self, info: Session, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TACHI_TOKEN")}
        env |= extra
        env["TERM"] = info.pty.term if info.pty else self.config.term
        env["TACHI_SESSION"] = info.id
        # `tachi` typed inside the session reaches this daemon, whatever PATH the
        # session's shell builds (as $TMUX tells tmux which server it is in).
        env["TACHI_SOCKET"] = str(self.config.socket)
        executable = tachi_executable()
        if executable:
            env["TACHI"] = executable
            path = env.get("PATH", os.defpath)
            if shutil.which("tachi", path=path) is None:
                env["PATH"] = f"{path}{os.pathsep}{os.path.dirname(executable)}"
        return env

    def rename(self, session: SessionRuntime, name: str | None) -> None:
        """Rename a live session. Raises ``InvalidRequest`` for a malformed name and
        ``Conflict`` if another live session has it."""
        if name is not None:
            _check_name(name)
            if any(s.info.name == name for s in self.sessions.values() if s is not session):
                raise Conflict(f"a live session is already named {name!r}")
        session.info.name = name
        self.store.save(session.to_model())
        self._changed(session, "renamed", {"name": name})

    def prune_history(self, now: int) -> int:
        """Apply the ``[session] retention`` setting: forget sessions closed longer ago."""
        if not self.config.retention:
            return 0
        self._last_prune = now
        return self.store.prune(now - self.config.retention)

    # -- lookup -------------------------------------------------------------------
    def find(self, ref: str) -> SessionRuntime | Session:
        """The live session with id or name ``ref``, else its closed record.

        Raises ``NotFound`` naming ``ref``."""
        if ref in self.sessions:
            return self.sessions[ref]
        by_name = [s for s in self.sessions.values() if s.info.name == ref]
        if len(by_name) == 1:
            return by_name[0]
        stored = self.store.get(ref)
        if stored is None:
            raise NotFound(f"no session {ref!r} (see 'tachi ls')")
        return stored

    def live(self, ref: str) -> SessionRuntime:
        """Like :meth:`find` but the session must be running."""
        found = self.find(ref)
        if isinstance(found, Session):
            reason = f" ({found.closeReason})" if found.closeReason else ""
            raise NotFound(f"session {found.id} is closed{reason}")
        return found

    def list(self, flt: SessionFilter) -> list[Session]:
        live = [s.to_model() for s in self.sessions.values() if flt.matches(s.info)]
        live.sort(key=lambda s: s.createdAt)
        history = not flt.live and flt.state in (None, SessionState.CLOSED)
        closed = self.store.closed(flt) if history else []
        closed.sort(key=lambda s: s.createdAt)
        return closed + live

    # -- events -------------------------------------------------------------------
    def _changed(self, session: SessionRuntime, event: str, details: dict[str, Any]) -> None:
        if self._stopped:
            return
        if event in ("state", "window-exited", "window-switched", "resized"):
            self.store.save(session.to_model())
        if event == "window-exited" and not _running(session):
            self._exiting.discard(session)
        self.emit(session, event, details)
        if event == "window-exited" and not _running(session):
            self._emit_closed(session)

    def _closed(self, session: SessionRuntime) -> None:
        self.sessions.pop(session.id, None)
        if _running(session):
            self._exiting.add(session)
        self.store.save(session.to_model())
        info = session.info
        self.audit(
            action="session.close",
            result="info",
            principal="tachid",
            source="daemon",
            session=info.id,
            reason=str(info.closeReason),
            details={"exitCode": info.exitCode},
        )
        details = {"reason": str(info.closeReason), "exitCode": info.exitCode}
        if _running(session):
            # Its windows were hung up: their window-exited events come first.
            # A process that ignores SIGHUP does not hold ``closed`` back long.
            self._closing[session] = details
            asyncio.get_running_loop().call_later(CLOSED_EVENT_WAIT, self._emit_closed, session)
            return
        self.emit(session, "closed", details)

    def _emit_closed(self, session: SessionRuntime) -> None:
        details = self._closing.pop(session, None)
        if details is not None:
            self.emit(session, "closed", details)

    def emit(self, session: SessionRuntime, event: str, details: dict[str, Any]) -> None:
        """Tell listeners (event streams, recorders) and ``tachi_session_event`` plugins."""
        for listener in self.session_listeners:
            listener(session, event, details)
        self._session_event_hook(session=session, event=event, details=details)

    # -- limits ---------------------------------------------------------------------
    def tick(self, now: int) -> None:
        """Enforce idle timeouts and maximum durations, warning before the latter;
        prune closed history once an hour."""
        if now - self._last_prune >= PRUNE_INTERVAL_NS:
            self.prune_history(now)
        for session in list(self.sessions.values()):
            info = session.info
            if info.idleTimeout and now - info.lastActivity >= info.idleTimeout:
                self._expire(session, CloseReason.IDLE_TIMEOUT)
                continue
            if not info.maxDuration:
                continue
            deadline = info.createdAt + info.maxDuration
            warn_before = min(60_000_000_000, info.maxDuration // 5)
            if not session.warned_max_duration and now >= deadline - warn_before:
                session.warned_max_duration = True
                left = format_duration(max(deadline - now, 1_000_000_000))
                session.broadcast(
                    {
                        "event": "notice",
                        "level": "warning",
                        "message": f"tachi: session {info.id} reaches its maximum duration"
                        f" and closes in {left}",
                    }
                )
            if now >= deadline:
                self._expire(session, CloseReason.MAX_DURATION)

    def _expire(self, session: SessionRuntime, reason: CloseReason) -> None:
        log.info("session %s: %s", session.id, reason)
        session.finish(reason)


@functools.cache
def tachi_executable() -> str | None:
    """The ``tachi`` command installed beside the Python running this daemon,
    else the one on the daemon's PATH, else ``None``."""
    beside = os.path.join(os.path.dirname(sys.executable), "tachi")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("tachi")


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidRequest(
            f"invalid session name {name!r}: use 1-64 letters, digits, '-', '_' or '.'"
        )
    if len(name) == ID_LENGTH and all(c in "0123456789abcdef" for c in name):
        # Ids are looked up before names: a session named like another's id
        # could never be reached by its name.
        raise InvalidRequest(
            f"invalid session name {name!r}: it looks like a session id"
            f" ({ID_LENGTH} hex digits); add a letter outside a-f, or a '-'"
        )


def _home_of(principal: Principal) -> str:
    if principal.uid is not None:
        with contextlib.suppress(KeyError):
            return pwd.getpwuid(principal.uid).pw_dir
    return os.path.expanduser("~")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _running(session: SessionRuntime) -> bool:
    """Whether any of the session's processes has yet to exit."""
    return any(not w.child.finished for w in session.mux.windows())
