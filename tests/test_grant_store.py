"""GrantStore rules that no transport here exercises yet (peer addresses), and its hashing."""

from __future__ import annotations

import sqlite3

import pytest

from tachi import grants as grants_mod
from tachi.errors import InvalidRequest, PermissionDenied
from tachi.grants import GrantStore


@pytest.fixture
def store():
    return GrantStore(sqlite3.connect(":memory:"))


def test_allow_ip_is_enforced_when_the_transport_knows_the_peer(store):
    grant, token = store.create(
        "s1", "observer", created_by="root", allow_ips=["10.0.0.0/8", "::1/128"]
    )
    assert store.authenticate(token, peer_ip="10.1.2.3").id == grant.id
    assert store.authenticate(token, peer_ip="::1").id == grant.id
    assert store.authenticate(token, peer_ip=None).id == grant.id  # Unix socket: no address
    with pytest.raises(PermissionDenied, match=r"address 192\.168\.1\.1 not allowed"):
        store.authenticate(token, peer_ip="192.168.1.1")


def test_bad_requests(store):
    with pytest.raises(InvalidRequest, match="invalid network"):
        store.create("s1", "observer", created_by="root", allow_ips=["10.0.0.300/8"])
    with pytest.raises(InvalidRequest, match="unknown role"):
        store.create("s1", "owner", created_by="root")
    with pytest.raises(InvalidRequest, match="ttl"):
        store.create("s1", "observer", created_by="root", ttl_ns=0)
    with pytest.raises(PermissionDenied, match="unknown token"):
        store.authenticate("tachi_nope")


def test_tokens_are_compared_in_constant_time(store, monkeypatch):
    calls = []
    real = grants_mod.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(grants_mod.hmac, "compare_digest", spy)
    _, token = store.create("s1", "collaborator", created_by="root")
    store.authenticate(token)
    assert calls and all(len(a) == 64 for a, _ in calls)


def test_strongest_user_grant_wins_and_expired_ones_do_not_count(store):
    store.create("s1", "observer", created_by="root", user="alice")
    collab, _ = store.create("s1", "collaborator", created_by="root", user="alice", ttl_ns=10**9)
    assert store.for_user("s1", "alice").role == "collaborator"
    later = collab.expiresAt + 1
    assert store.for_user("s1", "alice", now=later).role == "observer"
    assert collab.id in {g.id for g in store.expired_between(collab.expiresAt - 1, later)}
