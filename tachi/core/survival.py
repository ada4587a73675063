"""Sessions that outlive the daemon: the daemon's side of the session keeper.

At start the daemon connects to its keeper (starting one if none runs),
receives every PTY it keeps and re-creates those sessions from what it saved:
the session record (``sessions`` table), how to start more windows in it
(``kept_sessions``) and each window's last screen snapshot (``kept_windows``).
While it runs it snapshots, every ``SNAPSHOT_SECONDS``, the screen and
scrollback of each window that printed something since, off the output path.
See docs/survival.md for what survives what.

``TACHI_KEEPER=off`` in the daemon's environment turns all of it off: sessions
then live and die with the daemon, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import struct
import termios
import time
from typing import TYPE_CHECKING, Any

from tachi.core.access import SessionAccess
from tachi.core.keeper_link import KeeperError, KeeperLink, Kept
from tachi.core.periodic import every
from tachi.core.session import SessionRuntime
from tachi.models import SessionState

if TYPE_CHECKING:
    from tachi.core.window import WindowRuntime
    from tachi.daemon.server import Daemon

log = logging.getLogger("tachi.survival")

#: How often windows with new output are snapshotted. Output the daemon read in
#: the last interval before a crash is not in the restored screen (the program
#: and a recording still had it); output produced while no daemon ran is.
SNAPSHOT_SECONDS = 1.0
#: Scrollback lines kept in a snapshot.
SNAPSHOT_HISTORY = 2000
#: Characters written per periodic snapshot at most (a flood in 200 windows
#: must not turn into 200 screen dumps a second): the rest waits a tick,
#: least recently saved first.
SNAPSHOT_BUDGET = 4 << 20
#: The resize that makes a full-screen program redraw after adoption is undone after this.
NUDGE_SECONDS = 0.1
# The alternate screen, as the built-in emulator dumps it.
_ALT_SCREEN = "\x1b[?1047h"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kept_sessions (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kept_windows (
    session_id TEXT NOT NULL,
    window_id INTEGER NOT NULL,
    data TEXT NOT NULL,
    screen TEXT NOT NULL,
    PRIMARY KEY (session_id, window_id)
);
CREATE TABLE IF NOT EXISTS kept_runs (
    session_id TEXT NOT NULL,
    window_id INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (session_id, window_id, run_id)
);
"""


def enabled() -> bool:
    return os.environ.get("TACHI_KEEPER", "on").lower() not in ("off", "0", "no", "false")


class Survival:
    """Keeps the daemon's sessions adoptable by the next daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.manager = daemon.manager
        self.db = daemon.db
        self.link: KeeperLink | None = None
        #: (session, window) -> (seq, name, active) as last saved.
        self._saved: dict[tuple[str, int], tuple[int, str, bool]] = {}
        self._task: asyncio.Task[None] | None = None
        #: session -> (owner uid, owner user) as last saved.
        self._owners: dict[str, tuple[int | None, str]] = {}
        self.adopted = 0
        self.adopt_ms = 0.0

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """Connect to (or start) the keeper and adopt what it kept. Call before
        ``SessionManager.start``, which closes every stored session not adopted."""
        try:
            self._start()
        finally:
            # Recordings left open go on with their adopted sessions; the rest
            # are closed (whatever happened above).
            recordings = getattr(self.daemon, "recordings", None)
            if recordings is not None:
                recordings.continue_adopted(self.manager.sessions)

    def _start(self) -> None:
        if not enabled():
            return
        self.db.executescript(_SCHEMA)
        try:
            self.link, kept = KeeperLink.open(self.daemon.config.socket)
        except (OSError, ValueError) as exc:
            log.warning("no session keeper (%s): sessions end with this daemon", exc)
            return
        self.manager.keeper = self.link
        self.link.journal_full = self._journal_full
        from tachi.daemon.run_ops import RUN_KEPT

        RUN_KEPT.append(self._run_kept)
        self.manager.session_listeners.append(self._session_event)
        self._adopt(kept)
        self._forget_stale()
        self._task = asyncio.get_running_loop().create_task(
            every(SNAPSHOT_SECONDS, self.snapshot, log)
        )

    def leave(self) -> None:
        """A restart: save every screen, then let go of the keeper, which keeps
        every session for the next daemon."""
        if self.link is None:
            return
        self._stop_task()
        self.snapshot(everything=True)
        self.link.detach()

    def close(self) -> None:
        """A stop: every session was closed; the keeper kills what is left and goes."""
        if self.link is None:
            return
        self._stop_task()
        self.link.close_all()

    def _stop_task(self) -> None:
        from tachi.daemon.run_ops import RUN_KEPT

        with contextlib.suppress(ValueError):
            RUN_KEPT.remove(self._run_kept)
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def status(self) -> dict[str, Any] | None:
        if self.link is None:
            return None
        return {
            "pid": self.link.pid,
            "connected": not self.link.broken,
            "adopted": self.adopted,
            "adoptMs": round(self.adopt_ms, 1),
        }

    # -- saving -----------------------------------------------------------------
    def _session_event(self, session: SessionRuntime, event: str, details: dict[str, Any]) -> None:
        if event == "created":
            self._save_session(session, (session.owner_uid, session.info.userId))
        elif event == "window-exited":
            window_id = details.get("window")
            self._saved.pop((session.id, window_id), None)  # type: ignore[arg-type]
            for table in ("kept_windows", "kept_runs"):
                self.db.execute(
                    f"DELETE FROM {table} WHERE session_id = ? AND window_id = ?",
                    (session.id, window_id),
                )
        elif event == "closed":
            self._forget(session.id)

    def _save_session(self, session: SessionRuntime, owner: tuple[int | None, str]) -> None:
        data = {
            "ownerUid": owner[0],
            "ownerUser": owner[1],
            "env": session.env,
            "cwd": session.cwd,
            "sizePolicy": session.size_policy,
        }
        self.db.execute(
            "INSERT OR REPLACE INTO kept_sessions(id, data) VALUES (?, ?)",
            (session.id, json.dumps(data)),
        )
        self._owners[session.id] = owner

    def _forget(self, session_id: str) -> None:
        self._owners.pop(session_id, None)
        for key in [k for k in self._saved if k[0] == session_id]:
            del self._saved[key]
        self.db.execute("DELETE FROM kept_windows WHERE session_id = ?", (session_id,))
        self.db.execute("DELETE FROM kept_runs WHERE session_id = ?", (session_id,))
        self.db.execute("DELETE FROM kept_sessions WHERE id = ?", (session_id,))

    def snapshot(self, now: int = 0, *, everything: bool = False) -> int:
        """Save the screen and scrollback of every window that changed since it
        was last saved (all of them with ``everything``); returns how many."""
        due: list[tuple[SessionRuntime, WindowRuntime, tuple[int, str, bool]]] = []
        for session in list(self.manager.sessions.values()):
            access = getattr(session, "access", None)
            if access is not None:
                # A hand-over (tachi share --handoff) changes the owner after creation.
                owner = (access.owner_uid, access.owner_user)
                if self._owners.get(session.id) != owner:
                    self._save_session(session, owner)
            active = session.mux.active
            for window in session.mux.windows():
                state = (window.seq, window.name, window is active)
                if everything or self._saved.get((session.id, window.id)) != state:
                    due.append((session, window, state))
        budget = SNAPSHOT_BUDGET
        written = 0
        for session, window, state in due:
            budget -= self._save_window(session, window, state)
            written += 1
            if budget <= 0 and not everything:
                break
        return written

    def _save_window(
        self, session: SessionRuntime, window: WindowRuntime, state: tuple[int, str, bool]
    ) -> int:
        """Save one window's screen as of its output offset now, then start its
        journal again from there (only once the row is committed: a crash in
        between finds the old journal, which still covers the new snapshot);
        returns the characters saved."""
        screen = restore_text(window)
        data = {
            "name": window.name,
            "command": window.command,
            "createdAt": window.created_at,
            "seq": window.seq,
            "active": state[2],
            "runs": _saved_runs(session, window),
        }
        self.db.execute(
            "INSERT OR REPLACE INTO kept_windows(session_id, window_id, data, screen)"
            " VALUES (?, ?, ?, ?)",
            (session.id, window.id, json.dumps(data), screen),
        )
        # The runs saved one by one since the last snapshot are in this one.
        self.db.execute(
            "DELETE FROM kept_runs WHERE session_id = ? AND window_id = ?",
            (session.id, window.id),
        )
        self._saved[(session.id, window.id)] = state
        journal = getattr(window, "journal", None)
        if journal is not None:
            # What the journal holds past the snapshot (reads being gathered
            # as a full journal made it save) stays; so does output a recording
            # has not handed to its recorder process yet: the next daemon
            # records it from there.
            recordings = getattr(self.daemon, "recordings", None)
            keep = recordings.unhanded_from(session, window) if recordings else None
            journal.trim(window.seq if keep is None else min(keep, window.seq))
        return len(screen)

    def _run_kept(self, session: SessionRuntime, window: WindowRuntime, record: Any) -> None:
        """A ``tachi run`` is about to be typed: save it on its own row, so the
        next daemon knows it. Not a snapshot (rendering the screen and
        scrollback cost a run up to 3 ms), nor the window's row (its runs grow):
        the run has read nothing yet, and its marks, which carry its id, come
        after the last snapshot's offset in the journal."""
        if self.link is None or session.id not in self.manager.sessions:
            return
        from tachi.daemon.run_ops import saved_run

        self.db.execute(
            "INSERT OR REPLACE INTO kept_runs(session_id, window_id, run_id, data)"
            " VALUES (?, ?, ?, ?)",
            (session.id, window.id, record.id, json.dumps(saved_run(record))),
        )

    def _journal_full(self, key: str) -> None:
        """A window's journal would overflow (a flood between two ticks): save
        that window now, so the journal never overwrites unsaved output."""
        sid, _, wid = key.partition("/")
        session = self.manager.sessions.get(sid)
        if session is None or not wid.isdigit():
            return
        for window in session.mux.windows():
            if window.id == int(wid):
                state = (window.seq, window.name, window is session.mux.active)
                self._save_window(session, window, state)
                return

    def _forget_stale(self) -> None:
        """Rows of sessions that are no longer live (closed while nobody looked)."""
        live = set(self.manager.sessions)
        for (sid,) in self.db.execute("SELECT id FROM kept_sessions").fetchall():
            if sid not in live:
                self._forget(sid)

    # -- adopting ---------------------------------------------------------------
    def _adopt(self, kept: list[Kept]) -> None:
        began = time.monotonic()
        by_session: dict[str, list[tuple[int, Kept]]] = {}
        for k in kept:
            sid, _, wid = k.key.partition("/")
            if not wid.isdigit():
                self._discard(k, "it is not a window of any session")
                continue
            by_session.setdefault(sid, []).append((int(wid), k))
        for sid, windows in by_session.items():
            windows.sort(key=lambda w: w[0])
            try:
                self._adopt_session(sid, windows)
            except Exception as exc:
                log.exception("could not adopt session %s", sid)
                for _, k in windows:
                    if k.master >= 0:
                        self._discard(k, f"its session could not be adopted: {exc}")
        #: How long adoption took (ms), for status and benchmarks.
        self.adopt_ms = (time.monotonic() - began) * 1000
        if kept:
            log.info(
                "adopted %d sessions (%d windows) from the keeper in %.0f ms",
                self.adopted,
                len(kept),
                self.adopt_ms,
            )

    def _adopt_session(self, sid: str, windows: list[tuple[int, Kept]]) -> None:
        info = self.manager.store.get(sid)
        row = self.db.execute("SELECT data FROM kept_sessions WHERE id = ?", (sid,)).fetchone()
        if info is None or info.id != sid or info.state == SessionState.CLOSED or row is None:
            for _, k in windows:
                self._discard(k, f"session {sid} is not known as live")
            return
        meta = json.loads(row[0])
        snaps = {
            wid: (json.loads(data), screen)
            for wid, data, screen in self.db.execute(
                "SELECT window_id, data, screen FROM kept_windows WHERE session_id = ?", (sid,)
            )
        }
        session = SessionRuntime(
            info,
            owner_uid=meta.get("ownerUid"),
            env=meta.get("env") or {},
            cwd=meta.get("cwd"),
            size_policy=meta.get("sizePolicy") or self.daemon.config.size_policy,
            events=self.manager.session_events(),
        )
        owner = (meta.get("ownerUid"), meta.get("ownerUser") or info.userId)
        session.access = SessionAccess(sid, owner[0], owner[1], self.daemon.grants)
        self._owners[sid] = owner
        active = None
        for wid, k in windows:
            data, screen = snaps.get(wid, (k.meta, ""))
            command = data.get("command") or k.meta.get("command") or info.command
            session.adopting[wid] = k
            try:
                window = session.mux.new_window(
                    command, data.get("name"), select=False, window_id=wid
                )
            finally:
                # Taken by the window, or ours to discard.
                if session.adopting.pop(wid, None) is None:
                    k.master = -1
            window.created_at = int(data.get("createdAt") or window.created_at)
            if screen:
                window.screen.feed(screen.encode())
                window.seq = int(data.get("seq") or 0)
            runs = list(data.get("runs") or [])
            known = {run.get("id") for run in runs}
            for (saved,) in self.db.execute(
                "SELECT data FROM kept_runs WHERE session_id = ? AND window_id = ? ORDER BY rowid",
                (sid, wid),
            ):
                run = json.loads(saved)
                if run.get("id") not in known:
                    runs.append(run)
            if runs:
                _restore_runs(session, window, runs)
            _replay_journal(window)
            if data.get("active"):
                active = window
            if k.status is None and (
                _ALT_SCREEN in screen or window.child.foreground_pgrp() != window.child.pid
            ):
                _nudge(window)
        if active is not None:
            session.mux.select(active.id)
        info.state = SessionState.SUSPENDED
        info.clients = 0
        self.manager.sessions[sid] = session
        self.manager.store.save(session.to_model())
        for wid, _ in windows:
            window = session.mux.get(wid)
            self._saved[(sid, wid)] = (window.seq, window.name, window is session.mux.active)
        self.adopted += 1
        self.daemon.audit(
            action="session.adopt",
            result="info",
            principal="tachid",
            source="daemon",
            session=sid,
            details={"windows": [{"window": w, "pid": k.pid} for w, k in windows]},
        )
        self.manager.emit(session, "adopted", {"windows": [w for w, _ in windows]})

    def _discard(self, k: Kept, why: str) -> None:
        """End a kept process nobody can adopt (its record is gone)."""
        log.warning("ending pid %d (%s): %s", k.pid, k.key, why)
        if k.status is None:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(k.pid, signal.SIGKILL)
            if k.pidfd is not None:
                select.select([k.pidfd], [], [], 2.0)
        if self.link is not None:
            self.link.reap(k.pid)
        k.close()


def _saved_runs(session: SessionRuntime, window: WindowRuntime) -> list[dict[str, Any]]:
    """``tachi run``s of the window, saved with its screen (at the same offset)."""
    from tachi.daemon.run_ops import saved_runs

    return saved_runs(session, window)


def _restore_runs(session: SessionRuntime, window: WindowRuntime, runs: list[Any]) -> None:
    """Runs saved with an adopted window's screen, kept again before its journal
    is replayed: a run that ended after the snapshot ends in the replay."""
    from tachi.daemon.run_ops import restore_runs

    try:
        restore_runs(session, window, runs)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("runs of %s/%d not restored: %s", session.id, window.id, exc)


def _replay_journal(window: WindowRuntime) -> None:
    """Feed an adopted window what its journal holds past its snapshot: the
    output the dead daemon had read but not saved yet. It goes through the
    window's output path (screen, command marks, backlog), not into the
    journal again, before anything else is read from the PTY."""
    journal = getattr(window, "journal", None)
    if journal is None:
        return
    tail = journal.since(window.seq)
    if tail is None:
        log.warning(
            "the journal of %s starts at %d, after its snapshot (%d): output between is lost",
            journal.key,
            journal.base,
            window.seq,
        )
        window.seq = journal.base
        tail = journal.since(window.seq) or b""
    if not tail:
        return
    window.journal = None
    try:
        window._output(tail)
    finally:
        window.journal = journal


def restore_text(window: WindowRuntime) -> str:
    """What a fresh screen is fed to show ``window``'s screen and scrollback
    again: the scrollback lines scrolled off the top, then the screen drawn."""
    screen = window.screen
    history = screen.history()[-SNAPSHOT_HISTORY:]
    ansi = screen.ansi()
    if not history:
        return ansi
    return "\r\n".join(history) + "\r\n" * screen.rows + ansi


def _nudge(window: WindowRuntime) -> None:
    """Make a full-screen program draw itself again: one column less, then back
    (a same-size TIOCSWINSZ sends no SIGWINCH)."""
    rows, cols = window.screen.rows, window.screen.cols
    fd = window.child.fd

    def set_size(c: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, c, 0, 0))

    if cols < 2:
        return
    set_size(cols - 1)
    asyncio.get_running_loop().call_later(
        NUDGE_SECONDS, lambda: None if window.child.finished else set_size(cols)
    )


__all__ = ["KeeperError", "Survival", "enabled", "restore_text"]
