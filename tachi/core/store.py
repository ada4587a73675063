"""Session metadata in SQLite (WAL), so history survives the daemon."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from pathlib import Path

from tachi.models import CloseReason, Session, SessionFilter, SessionState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT,
    user_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_created ON sessions(created_at);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open the daemon's database (created 0600 if missing) in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def session_ids(path: Path, ref: str) -> list[str]:
    """Ids of every session, live or closed, whose id or name is ``ref``, read
    from the daemon database at ``path`` without a daemon (for ``tachi audit``).

    Returns ``[]`` when nothing matches or the database does not exist yet.
    """
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT id FROM sessions WHERE id = ? OR name = ? ORDER BY created_at", (ref, ref)
        ).fetchall()
    except sqlite3.OperationalError:  # no sessions table yet
        return []
    finally:
        db.close()
    return [r[0] for r in rows]


class SessionStore:
    """Upserts of ``Session`` records and queries of the closed ones."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(_SCHEMA)

    def save(self, session: Session) -> None:
        self._db.execute(
            "INSERT INTO sessions(id, name, user_id, agent_id, state, created_at, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET name=excluded.name, user_id=excluded.user_id,"
            " state=excluded.state, data=excluded.data",
            (
                session.id,
                session.name,
                session.userId,
                session.agentId,
                str(session.state),
                session.createdAt,
                json.dumps(session.to_json()),
            ),
        )

    def get(self, ref: str) -> Session | None:
        row = self._db.execute(
            "SELECT data FROM sessions WHERE id = ? OR name = ? ORDER BY created_at DESC LIMIT 1",
            (ref, ref),
        ).fetchone()
        return Session.from_json(json.loads(row[0])) if row else None

    def closed(self, flt: SessionFilter, limit: int = 500) -> list[Session]:
        rows = self._db.execute(
            "SELECT data FROM sessions WHERE state = 'closed' ORDER BY created_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        sessions = [Session.from_json(json.loads(r[0])) for r in rows]
        return [s for s in sessions if flt.matches(s)]

    def delete(self, session_id: str) -> None:
        """Forget one session (one that never started)."""
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def prune(self, closed_before: int) -> int:
        """Forget closed sessions that closed before ``closed_before`` (epoch ns).
        Returns how many were removed; live sessions are never touched."""
        rows = self._db.execute("SELECT id, data FROM sessions WHERE state = 'closed'").fetchall()
        doomed = [
            (sid,)
            for sid, data in rows
            if (Session.from_json(json.loads(data)).closedAt or 0) < closed_before
        ]
        self._db.executemany("DELETE FROM sessions WHERE id = ?", doomed)
        return len(doomed)

    def close_orphans(self, now: int, keep: Collection[str] = ()) -> int:
        """Mark sessions left open by a daemon that died as closed (``daemon-stopped``),
        except those in ``keep`` (adopted from the session keeper)."""
        rows = self._db.execute("SELECT id, data FROM sessions WHERE state != 'closed'").fetchall()
        rows = [r for r in rows if r[0] not in keep]
        for _sid, data in rows:
            s = Session.from_json(json.loads(data))
            s.state = SessionState.CLOSED
            s.closeReason = CloseReason.DAEMON_STOPPED
            s.closedAt = now
            s.clients = 0
            self.save(s)
        return len(rows)
