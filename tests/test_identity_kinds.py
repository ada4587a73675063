"""A name is not an identity: grants and ownership match on kind *and* name
(issue 26: F9, F10, F17). The store is the daemon's real SQLite schema; the
end-to-end paths (SSH, SPIFFE) are in the plugins' tests."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tachi.builtins.acl import role_on, tachi_authorize
from tachi.core.access import SessionAccess
from tachi.core.principal import Principal, user_name
from tachi.grants import GrantStore
from tachi.models import Session, SessionState

BOB_SVID = "spiffe://example.org/bob"


def _principal(kind: str, user: str, uid: int | None = None, **extra) -> Principal:
    return Principal(user=user, uid=uid, source=f"{kind}:test", kind=kind, **extra)


@pytest.fixture
def store() -> GrantStore:
    return GrantStore(sqlite3.connect(":memory:"))


def test_a_spiffe_grant_binds_an_svid_not_a_name_spelled_like_it(store):
    store.create("s1", "collaborator", created_by="root", user=BOB_SVID)
    access = SessionAccess("s1", os.getuid(), user_name(os.getuid()), store)
    assert access.role_of(_principal("spiffe", BOB_SVID, spiffe_id=BOB_SVID)) == "collaborator"
    # An SSH principal (or a plugin's identity) spelled like the SPIFFE ID gets nothing.
    assert access.role_of(_principal("ssh", BOB_SVID)) is None
    assert access.role_of(_principal("oidc", BOB_SVID)) is None


def test_a_user_grant_binds_the_local_login_and_its_ssh_principal_only(store):
    grant, _ = store.create("s1", "observer", created_by="root", user="tachi-bob")
    assert grant.userKind == "user"
    access = SessionAccess("s1", os.getuid(), "root", store)
    assert access.role_of(_principal("unix", "tachi-bob", uid=4242)) == "observer"
    assert access.role_of(_principal("ssh", "tachi-bob")) == "observer"  # docs/ssh.md
    assert access.role_of(_principal("spiffe", "tachi-bob")) is None
    assert store.users_with_grants() == {"tachi-bob"}
    assert store.users_with_grants(kind="spiffe") == set()


def test_rotation_keeps_what_a_grant_is_bound_to(store):
    grant, _ = store.create("s1", "observer", created_by="root", user=BOB_SVID)
    ((_, new, _),) = store.rotate("s1", grant.id, grace_ns=0, created_by="root")
    assert new.userKind == "spiffe"
    assert store.get("s1", new.id).binds("spiffe", BOB_SVID)
    assert not store.get("s1", new.id).binds("ssh", BOB_SVID)


def test_grants_from_before_kinds_were_stored_are_read_by_their_name(tmp_path):
    """An old database (no user_kind column) is migrated; its rows' kinds are
    told from the name (a local account name cannot contain '://')."""
    path = tmp_path / "tachi.db"
    old = sqlite3.connect(path)
    old.executescript(
        """CREATE TABLE grants (id TEXT PRIMARY KEY, session_id TEXT NOT NULL,
        role TEXT NOT NULL, user TEXT, token_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL, expires_at INTEGER, allow_ips TEXT NOT NULL DEFAULT '',
        revoked INTEGER NOT NULL DEFAULT 0, grace_until INTEGER, replaced_by TEXT,
        created_by TEXT NOT NULL);
        INSERT INTO grants VALUES ('g_1', 's1', 'observer', 'spiffe://example.org/bob', 'h1',
        1, NULL, '', 0, NULL, NULL, 'root');
        INSERT INTO grants VALUES ('g_2', 's1', 'observer', 'tachi-bob', 'h2',
        1, NULL, '', 0, NULL, NULL, 'root');"""
    )
    old.commit()
    old.close()
    store = GrantStore(sqlite3.connect(path))
    assert store.get("s1", "g_1").userKind == "spiffe"
    assert store.get("s1", "g_2").userKind == "user"
    assert store.for_user("s1", BOB_SVID, kind="ssh") is None
    assert store.for_user("s1", BOB_SVID, kind="spiffe").id == "g_1"


def _closed(owner: str) -> Session:
    return Session(
        id="c1", agentId="vm", userId=owner, state=SessionState.CLOSED, pty=None,
        createdAt=1, lastActivity=1,
    )  # fmt: skip


def test_a_closed_session_is_owned_by_a_local_identity_not_a_name():
    """F17: as live sessions compare the owner's uid, a network principal
    spelled like the owner's login owns nothing of its closed sessions."""
    me = user_name(os.getuid())
    closed = _closed(me)
    local = Principal.local(os.getuid())
    ssh_namesake = _principal("ssh", me)
    assert role_on(local, closed) == "owner"
    assert role_on(ssh_namesake, closed) is None
    for action in ("session.get", "record.read", "record.rm"):
        assert tachi_authorize(principal=ssh_namesake, action=action, session=closed) is None
        assert tachi_authorize(principal=local, action=action, session=closed) is True


def test_only_a_kernel_proven_owner_is_the_local_owner():
    """F10: who may make daemon tokens (token_ops.require_local_owner)."""
    uid = os.getuid()
    assert Principal.local(uid).is_local_owner
    assert not _principal("ssh", user_name(uid), uid=uid).is_local_owner
    assert not _principal("spiffe", "spiffe://example.org/ci", uid=uid).is_local_owner
    daemon_token = _principal("token", user_name(uid), uid=uid, grant_id="g_1", grant_session="*")
    assert not daemon_token.is_local_owner
