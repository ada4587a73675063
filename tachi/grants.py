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
#: What a grant's ``user`` names (its ``userKind``), and the principal kinds
#: that prove that name: a local account name (``--user``) is proven by the
#: kernel (``unix``) or by an SSH principal named after the account (docs/ssh.md);
#: a SPIFFE ID only by an SVID. A name alone never crosses kinds.
USER_KINDS: dict[str, frozenset[str]] = {
    "user": frozenset({"unix", "ssh"}),
    "spiffe": frozenset({"spiffe"}),
}

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
    created_by TEXT NOT NULL,
    user_kind TEXT
);
CREATE INDEX IF NOT EXISTS grants_session ON grants(session_id);
"""
_COLUMNS = (
    "id, session_id, role, user, token_hash, created_at, expires_at, allow_ips,"
    " revoked, grace_until, replaced_by, created_by, user_kind"
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
    #: What ``user`` names: ``user`` (a local account) or ``spiffe`` (see ``USER_KINDS``).
    userKind: str | None = None
    _token_hash: str = ""

    def binds(self, kind: str, name: str) -> bool:
        """Whether a principal of ``kind`` named ``name`` is the identity this
        grant is bound to: same name *and* a kind that proves such a name."""
        if self.user is None or name != self.user:
            return False
        return kind in USER_KINDS.get(self.userKind or "", frozenset({self.userKind}))

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
            "userKind": self.userKind,
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
        columns = {row[1] for row in db.execute("PRAGMA table_info(grants)")}
        if "user_kind" not in columns:
            # Databases from before grants recorded what their user names.
            db.execute("ALTER TABLE grants ADD COLUMN user_kind TEXT")

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
        user_kind: str | None = None,
    ) -> tuple[Grant, str]:
        """Create a grant; returns it with its token, which is not stored anywhere.

        ``user_kind`` says what ``user`` names (``user``: a local account,
        ``spiffe``: a SPIFFE ID); by default it is inferred from the name.
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
        if user is not None and user_kind is None:
            user_kind = _infer_kind(user)
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
            userKind=user_kind if user is not None else None,
        )
        token = new_token()
        grant._token_hash = hash_token(token)
        self._db.execute(
            f"INSERT INTO grants({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL, ?, ?)",
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
                grant.userKind,
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

    def for_user(
        self, session_id: str, user: str, *, kind: str = "unix", now: int | None = None
    ) -> Grant | None:
        """The strongest active grant bound to the identity ``user`` of principal
        kind ``kind`` on the session (``Grant.binds``: name and kind)."""
        now = now_ns() if now is None else now
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM grants WHERE session_id = ? AND user = ?", (session_id, user)
        ).fetchall()
        active = [g for g in map(_from_row, rows) if g.active(now) and g.binds(kind, user)]
        return max(active, key=lambda g: _RANK[g.role], default=None)

    def users_with_grants(self, *, kind: str = "unix", now: int | None = None) -> set[str]:
        """Names of ``kind`` principals that hold an active grant somewhere."""
        now = now_ns() if now is None else now
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM grants WHERE user IS NOT NULL").fetchall()
        return {
            g.user
            for g in map(_from_row, rows)
            if g.user and g.active(now) and g.binds(kind, g.user)
        }

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
                user_kind=old.userKind,
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


def _infer_kind(user: str) -> str:
    """What a grant's name is, for grants made without saying: a local account
    name cannot contain ``:`` or ``/``, so ``spiffe://…`` is a SPIFFE ID."""
    return "spiffe" if user.startswith("spiffe://") else "user"


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
        userKind=row[12] or (_infer_kind(row[3]) if row[3] else None),
    )
