"""Share grants and their tokens.

A grant gives one role (observer or collaborator) on one session, to a named
local user and/or to whoever presents its token. Tokens are 256-bit random
strings shown once; only their SHA-256 is stored (a token has full entropy, so
a fast hash is enough) and a presented token is compared in constant time.
Grants that expire, are revoked or rotated out stay in the table until their
session's grants are deleted, so a refusal can say precisely why.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tachi.errors import InvalidRequest, NotFound, PermissionDenied
from tachi.gotime import format_rfc3339, now_ns

ROLES = ("observer", "collaborator")
#: The session id of a daemon grant: its token acts as the daemon's own user
#: (``tachi token create``), for remote CLIs and programs.
DAEMON_GRANT = "*"
TOKEN_PREFIX = "tachi_"
_RANK = {"observer": 1, "collaborator": 2}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    role TEXT NOT NULL,
    user TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    allow_ips TEXT NOT NULL DEFAULT '',
    revoked INTEGER NOT NULL DEFAULT 0,
    grace_until INTEGER,
    replaced_by TEXT,
    created_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS grants_session ON grants(session_id);
"""
_COLUMNS = (
    "id, session_id, role, user, token_hash, created_at, expires_at, allow_ips,"
    " revoked, grace_until, replaced_by, created_by"
)


@dataclass(slots=True)
class Grant:
    """One grant. Never carries its token."""

    id: str
    sessionId: str
    role: str
    user: str | None
    createdAt: int
    expiresAt: int | None
    allowIps: list[str] = field(default_factory=list)
    revoked: bool = False
    graceUntil: int | None = None
    replacedBy: str | None = None
    createdBy: str = ""
    _token_hash: str = ""

    def ends_at(self) -> int | None:
        """When it stops being usable: expiry or the end of its rotation grace."""
        ends = [t for t in (self.expiresAt, self.graceUntil) if t is not None]
        return min(ends) if ends else None

    def active(self, now: int) -> bool:
        ends = self.ends_at()
        return not self.revoked and (ends is None or now < ends)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sessionId": self.sessionId,
            "role": self.role,
            "user": self.user,
            "createdAt": format_rfc3339(self.createdAt),
            "expiresAt": format_rfc3339(self.expiresAt) if self.expiresAt else None,
            "allowIps": list(self.allowIps),
            "revoked": self.revoked,
            "graceUntil": format_rfc3339(self.graceUntil) if self.graceUntil else None,
            "replacedBy": self.replacedBy,
            "createdBy": self.createdBy,
        }


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh token: the prefix and 32 random bytes, URL-safe (43 characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class GrantStore:
    """Grants in the daemon's SQLite database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(_SCHEMA)

    # -- creating ---------------------------------------------------------------
    def create(
        self,
        session_id: str,
        role: str,
        *,
        created_by: str,
        user: str | None = None,
        ttl_ns: int | None = None,
        allow_ips: Sequence[str] = (),
        expires_at: int | None = None,
    ) -> tuple[Grant, str]:
        """Create a grant; returns it with its token, which is not stored anywhere.

        Raises ``InvalidRequest`` for an unknown role, a malformed CIDR or a ttl ≤ 0.
        """
        if session_id == DAEMON_GRANT:
            if role != "owner":
                raise InvalidRequest("a daemon grant has the owner role")
        elif role not in ROLES:
            raise InvalidRequest(f"unknown role {role!r}: use observer or collaborator")
        if ttl_ns is not None and ttl_ns <= 0:
            raise InvalidRequest("ttl must be positive")
        networks = [_network(c) for c in allow_ips]
        now = now_ns()
        grant = Grant(
            id="g_" + secrets.token_hex(4),
            sessionId=session_id,
            role=role,
            user=user,
            createdAt=now,
            expiresAt=expires_at if ttl_ns is None else now + ttl_ns,
            allowIps=[str(n) for n in networks],
            createdBy=created_by,
        )
        token = new_token()
        grant._token_hash = hash_token(token)
        self._db.execute(
            f"INSERT INTO grants({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL, ?)",
            (
                grant.id,
                session_id,
                role,
                user,
                grant._token_hash,
                now,
                grant.expiresAt,
                ",".join(grant.allowIps),
                created_by,
            ),
        )
        return grant, token

    # -- reading ------------------------------------------------------------------
    def get(self, session_id: str, grant_id: str) -> Grant:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM grants WHERE id = ? AND session_id = ?", (grant_id, session_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"no grant {grant_id!r} on session {session_id}")
        return _from_row(row)

    def is_active(self, session_id: str, grant_id: str) -> bool:
        """Whether the grant exists and is usable now (not expired, revoked or rotated out)."""
        try:
            return self.get(session_id, grant_id).active(now_ns())
        except NotFound:
            return False

    def list(self, session_id: str, *, include_inactive: bool = False) -> list[Grant]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM grants WHERE session_id = ? ORDER BY created_at", (session_id,)
        ).fetchall()
        grants = [_from_row(r) for r in rows]
        now = now_ns()
        return grants if include_inactive else [g for g in grants if g.active(now)]

    def for_user(self, session_id: str, user: str, *, now: int | None = None) -> Grant | None:
        """The strongest active grant naming local ``user`` on the session."""
        now = now_ns() if now is None else now
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM grants WHERE session_id = ? AND user = ?", (session_id, user)
        ).fetchall()
        active = [g for g in map(_from_row, rows) if g.active(now)]
        return max(active, key=lambda g: _RANK[g.role], default=None)

    def users_with_grants(self, *, now: int | None = None) -> set[str]:
        now = now_ns() if now is None else now
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM grants WHERE user IS NOT NULL").fetchall()
        return {g.user for g in map(_from_row, rows) if g.user and g.active(now)}

    def expired_between(self, start_ns: int, end_ns: int) -> list[Grant]:
        """Grants whose expiry or grace end fell in ``[start_ns, end_ns)``."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM grants WHERE revoked = 0 AND"
            " ((expires_at >= ? AND expires_at < ?) OR (grace_until >= ? AND grace_until < ?))",
            (start_ns, end_ns, start_ns, end_ns),
        ).fetchall()
        return [_from_row(r) for r in rows]

    # -- changing ---------------------------------------------------------------------
    def revoke(self, session_id: str, grant_id: str) -> Grant:
        grant = self.get(session_id, grant_id)
        self._db.execute("UPDATE grants SET revoked = 1 WHERE id = ?", (grant_id,))
        grant.revoked = True
        return grant

    def rotate(
        self, session_id: str, grant_id: str | None = None, *, grace_ns: int, created_by: str
    ) -> list[tuple[Grant, Grant, str]]:
        """Replace one grant's token (or every active grant's) with a new grant.

        The old grant stays valid for ``grace_ns`` (0: not at all). Returns
        ``[(old, new, new_token)]``. Raises ``NotFound`` for an unknown grant and
        ``InvalidRequest`` for one that is no longer active."""
        now = now_ns()
        if grant_id is not None:
            targets = [self.get(session_id, grant_id)]
            if not targets[0].active(now) or targets[0].replacedBy:
                raise InvalidRequest(f"grant {grant_id} is no longer active")
        else:
            targets = [g for g in self.list(session_id) if g.replacedBy is None]
        out = []
        for old in targets:
            new, token = self.create(
                session_id,
                old.role,
                created_by=created_by,
                user=old.user,
                allow_ips=old.allowIps,
                expires_at=old.expiresAt,
            )
            grace_end = now + max(grace_ns, 0)
            self._db.execute(
                "UPDATE grants SET grace_until = ?, replaced_by = ? WHERE id = ?",
                (grace_end, new.id, old.id),
            )
            old.graceUntil, old.replacedBy = grace_end, new.id
            out.append((old, new, token))
        return out

    def delete_session(self, session_id: str) -> int:
        return self._db.execute("DELETE FROM grants WHERE session_id = ?", (session_id,)).rowcount

    # -- authenticating ------------------------------------------------------------------
    def authenticate(
        self, token: str, *, peer_ip: str | None = None, now: int | None = None
    ) -> Grant:
        """The grant a presented token stands for.

        Raises ``PermissionDenied`` saying why: unknown, expired, revoked, rotated
        out, or a peer address outside the grant's networks (``peer_ip`` ``None``,
        as on the Unix socket, skips that check)."""
        now = now_ns() if now is None else now
        presented = hash_token(token)
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM grants WHERE token_hash = ?", (presented,)
        ).fetchone()
        # The lookup is by hash; compare again in constant time so the answer never
        # depends on how much of a guess was right.
        if row is None or not hmac.compare_digest(row[4], presented):
            raise PermissionDenied("unknown token")
        grant = _from_row(row)
        if grant.revoked:
            raise PermissionDenied(f"grant {grant.id} was revoked")
        if grant.expiresAt is not None and now >= grant.expiresAt:
            raise PermissionDenied(f"token of grant {grant.id} expired")
        if grant.graceUntil is not None and now >= grant.graceUntil:
            raise PermissionDenied(
                f"token of grant {grant.id} was rotated out (see {grant.replacedBy})"
            )
        if peer_ip is not None and grant.allowIps:
            address = ipaddress.ip_address(peer_ip)
            if not any(address in ipaddress.ip_network(n) for n in grant.allowIps):
                raise PermissionDenied(f"address {peer_ip} not allowed by grant {grant.id}")
        return grant


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise InvalidRequest(f"invalid network {cidr!r} (use CIDR such as 10.0.0.0/8)") from None


def _from_row(row: Sequence[Any]) -> Grant:
    return Grant(
        id=row[0],
        sessionId=row[1],
        role=row[2],
        user=row[3],
        _token_hash=row[4],
        createdAt=row[5],
        expiresAt=row[6],
        allowIps=[c for c in row[7].split(",") if c],
        revoked=bool(row[8]),
        graceUntil=row[9],
        replacedBy=row[10],
        createdBy=row[11],
    )
