"""Sharing with real local users and tokens: roles in the daemon, handoff, expiry, rotation."""

from __future__ import annotations

import json
import time

import pexpect
import pytest

from helpers import SHELL, capture, get, spawn_attach, wait_match
from tachi.errors import PermissionDenied
from tachi.models import PTYConfig
from users import as_user, ensure_users

PREFIX = "\x1c"


@pytest.fixture
def users():
    return ensure_users()


def share(daemon, sid, *args) -> dict:
    return json.loads(daemon.run("share", sid, "--json", *args, check=True).stdout)


def read_until(conn, predicate, timeout: float = 10) -> bool:
    """Read from an attached SessionConn until one of its events satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(predicate(e) for e in conn.events):
            return True
        conn.read(timeout=0.2)
    return False


def audit_records(daemon, *args) -> list[dict]:
    return json.loads(daemon.run("audit", "--json", *args, check=True).stdout)


def test_observer_sees_output_live_but_cannot_type_resize_or_signal(tachi_daemon, users):
    s = tachi_daemon.new(*SHELL, rows=30, cols=100)
    sid = s["id"]
    share(tachi_daemon, sid, "--role", "observer", "--user", "tachi-alice")

    def observer():
        with tachi_daemon.client(shared=True) as client:
            conn = client.attach(sid, size=PTYConfig(rows=50, cols=200))
            assert conn.read_only and conn.role == "observer"
            conn.write(b"echo OBSERVER-TYPED\r")
            conn.resize(60, 220)
            try:
                client.send_signal(sid, "INT")
                signalled = "allowed"
            except PermissionDenied as exc:
                signalled = str(exc)
            try:
                client.send(sid, "echo OBSERVER-SENT\n")
                sent = "allowed"
            except PermissionDenied as exc:
                sent = str(exc)
            seen = b""
            deadline = time.monotonic() + 15
            while b"owner-says-42" not in seen and time.monotonic() < deadline:
                seen += conn.read(timeout=1)
            return signalled, sent, b"owner-says-42" in seen

    import threading

    def owner_types():
        time.sleep(1.0)
        tachi_daemon.run("send", sid, r"echo owner-says-$((6*7))\n", check=True)

    threading.Thread(target=owner_types, daemon=True).start()
    signalled, sent, saw_live = as_user("tachi-alice", observer)
    assert saw_live
    assert "may not session.signal" in signalled
    assert "may not session.write" in sent
    screen = capture(tachi_daemon, sid)
    assert "OBSERVER-TYPED" not in screen and "OBSERVER-SENT" not in screen
    pty = get(tachi_daemon, sid)["pty"]
    assert (pty["rows"], pty["cols"]) == (30, 100)
    denied = [r for r in audit_records(tachi_daemon, "--session", sid) if r["result"] == "denied"]
    actions = {r["action"] for r in denied if r["principal"] == "tachi-alice"}
    assert {"session.write", "session.resize", "session.signal"} <= actions


def test_collaborators_both_type_and_the_audit_log_says_who(tachi_daemon, users):
    s = tachi_daemon.new(*SHELL)
    sid = s["id"]
    for user in ("tachi-alice", "tachi-bob"):
        share(tachi_daemon, sid, "--role", "collaborator", "--user", user)

    def typist(word):
        def run():
            with tachi_daemon.client(shared=True) as client:
                conn = client.attach(sid)
                assert not conn.read_only and conn.role == "collaborator"
                conn.write(f"echo typed-by-{word}\r".encode())
                seen = b""
                while f"typed-by-{word}\r\n".encode() not in seen:
                    seen += conn.read(timeout=5)
                conn.close()
                return True

        return run

    assert as_user("tachi-alice", typist("alice"))
    assert as_user("tachi-bob", typist("bob"))
    screen = capture(tachi_daemon, sid)
    assert "\ntyped-by-alice" in "\n" + screen and "\ntyped-by-bob" in "\n" + screen
    inputs = [
        r for r in audit_records(tachi_daemon, "--session", sid) if r["action"] == "session.input"
    ]
    assert {"tachi-alice", "tachi-bob"} <= {r["principal"] for r in inputs}
    # Per burst, not per byte: one record each for a single typed line.
    assert sum(r["principal"] == "tachi-alice" for r in inputs) == 1


def test_handoff_demotes_the_old_owner_live(tachi_daemon, users):
    s = tachi_daemon.new(*SHELL)
    sid = s["id"]
    with tachi_daemon.client() as client:
        conn = client.attach(sid)
        tachi_daemon.run("handoff", sid, "--to", "tachi-alice", "--keep", "observer", check=True)
        # Still connected, now read-only; the notice says so in the fields the
        # client obeys (tachi attach stops sending keys and resizes).
        assert read_until(
            conn,
            lambda e: (
                "you are now observer (read-only)" in str(e.get("message"))
                and e.get("role") == "observer"
                and e.get("readOnly") is True
            ),
        )
        conn.write(b"echo OLD-OWNER-TYPED\r")
        assert not conn.done

        def new_owner():
            with tachi_daemon.client(shared=True) as c:
                c.send(sid, "echo new-owner-$((1+1))\n")
                return c.get(sid).userId

        assert as_user("tachi-alice", new_owner) == "tachi-alice"
        seen = b""
        while b"new-owner-2" not in seen:
            seen += conn.read(timeout=5)
        conn.close()
    assert "OLD-OWNER-TYPED" not in capture(tachi_daemon, sid)
    handoffs = [
        r for r in audit_records(tachi_daemon, "--session", sid) if r["action"] == "session.handoff"
    ]
    assert handoffs and handoffs[0]["details"]["to"] == "tachi-alice"
    # The old owner kept observer rights: it may read but no longer write.
    assert tachi_daemon.run("send", sid, "x").returncode == 4


def test_the_daemons_user_can_close_a_session_handed_away_with_nothing_kept(tachi_daemon, users):
    s = tachi_daemon.new(*SHELL)
    out = tachi_daemon.run("handoff", s["id"], "--to", "tachi-alice", "--keep", "none")
    assert out.returncode == 0
    # The new owner is told plainly whose rights the shell has.
    assert "still run as root" in out.stderr and "tachi-alice now controls a shell" in out.stderr
    assert tachi_daemon.run("send", s["id"], "x").returncode == 4
    closed = tachi_daemon.run("close", s["id"])
    assert closed.returncode == 0, closed.stderr
    assert get(tachi_daemon, s["id"])["state"] == "closed"


def test_a_collaborator_grant_warns_whose_rights_it_gives(tachi_daemon, users):
    s = tachi_daemon.new(*SHELL)
    out = tachi_daemon.run("share", s["id"], "--role", "collaborator", "--user", "tachi-bob")
    assert out.returncode == 0
    assert "types into programs that run as root" in out.stderr
    observer = tachi_daemon.run("share", s["id"], "--role", "observer")
    assert "run as" not in observer.stderr


def test_a_user_without_a_grant_is_refused_at_connect_and_audited(tachi_daemon, users):
    s = tachi_daemon.new("sleep", "300")
    grant = share(tachi_daemon, s["id"], "--role", "observer", "--user", "tachi-bob")
    tachi_daemon.run("revoke", s["id"], grant["id"], check=True)  # bob can still reach the socket

    def connect():
        try:
            tachi_daemon.client(shared=True).disconnect()
            return "admitted"
        except PermissionDenied as exc:
            return str(exc)

    assert "holds no grant" in as_user("tachi-bob", connect)
    refused = [
        r
        for r in audit_records(tachi_daemon)
        if r["action"] == "connect" and r["result"] == "denied"
    ]
    assert refused and refused[-1]["principal"] == "tachi-bob"


def test_token_observer_via_cli_attach_cannot_type(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    assert grant["attach"].endswith(grant["token"])
    child = spawn_attach(tachi_daemon, s["id"], "--token", grant["token"])
    time.sleep(0.5)
    child.send("echo TOKEN-OBSERVER-TYPED\r")
    tachi_daemon.run("send", s["id"], r"echo marker-$((2+5))\n", check=True)
    child.expect("marker-7")
    assert "TOKEN-OBSERVER-TYPED" not in capture(tachi_daemon, s["id"])
    # --token works on the scripting commands too, with the grant's rights.
    assert tachi_daemon.run("capture", s["id"], "--token", grant["token"]).returncode == 0
    sent = tachi_daemon.run("send", s["id"], "x", "--token", grant["token"])
    assert sent.returncode == 4 and "may not session.write" in sent.stderr
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def test_tokens_are_long_random_and_stored_only_as_hashes(tachi_daemon):
    s = tachi_daemon.new("sleep", "300")
    grant = share(tachi_daemon, s["id"], "--role", "collaborator")
    token = grant["token"]
    assert len(token) >= 43 + len("tachi_")
    tachi_daemon.stop()
    for path in tachi_daemon.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data, path
            assert token[10:40].encode() not in data, path


def test_token_expiry_disconnects_within_a_second(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "collaborator", "--ttl", "2s")
    with tachi_daemon.client(token=grant["token"]) as client:
        conn = client.attach(s["id"])
        started = time.monotonic()
        while not conn.done:
            conn.read(timeout=5)
        elapsed = time.monotonic() - started
    assert elapsed < 4, f"disconnected after {elapsed:.1f}s for a 2s ttl"
    assert "expired" in conn.detached["message"]
    refused = tachi_daemon.run("capture", s["id"], "--token", grant["token"])
    assert refused.returncode == 4 and "expired" in refused.stderr


def test_revoke_disconnects_and_refuses(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    with tachi_daemon.client(token=grant["token"]) as client:
        conn = client.attach(s["id"])
        tachi_daemon.run("revoke", s["id"], grant["id"], check=True)
        while not conn.done:
            conn.read(timeout=5)
    refused = tachi_daemon.run("capture", s["id"], "--token", grant["token"])
    assert refused.returncode == 4 and "revoked" in refused.stderr


def test_rotation_with_grace_and_in_band_refresh(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "collaborator")
    old = grant["token"]
    with tachi_daemon.client(token=old) as client:
        conn = client.attach(s["id"])
        out = tachi_daemon.run(
            "token", "rotate", s["id"], grant["id"], "--grace", "2s", "--json", check=True
        )
        (rotated,) = json.loads(out.stdout)
        new = rotated["token"]
        assert new != old and rotated["replaces"] == grant["id"]
        # The connected client got the new token in-band ...
        assert read_until(conn, lambda e: e.get("event") == "token" and e["token"] == new)
        # ... the old one still works during the grace period ...
        assert tachi_daemon.run("capture", s["id"], "--token", old).returncode == 0
        time.sleep(2.5)
        # ... and is refused after it, while the connected client stays and can type.
        refused = tachi_daemon.run("capture", s["id"], "--token", old)
        assert refused.returncode == 4 and "rotated out" in refused.stderr
        assert not conn.done
        conn.write(b"echo still-typing-$((4+4))\r")
        wait_match(tachi_daemon, s["id"], "still-typing-8")
        conn.close()
    assert tachi_daemon.run("capture", s["id"], "--token", new).returncode == 0


def test_rotation_grace_zero_refuses_at_once(tachi_daemon):
    s = tachi_daemon.new("sleep", "300")
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    tachi_daemon.run("token", "rotate", s["id"], "--grace", "0", check=True)
    refused = tachi_daemon.run("capture", s["id"], "--token", grant["token"])
    assert refused.returncode == 4 and "rotated out" in refused.stderr


def test_share_ls_and_bad_input(tachi_daemon):
    s = tachi_daemon.new("sleep", "300")
    grant = share(
        tachi_daemon, s["id"], "--role", "observer", "--allow-ip", "10.0.0.0/8", "--ttl", "1h"
    )
    listed = json.loads(tachi_daemon.run("share", "ls", s["id"], "--json", check=True).stdout)
    assert [g["id"] for g in listed] == [grant["id"]]
    assert listed[0]["allowIps"] == ["10.0.0.0/8"] and "token" not in listed[0]
    bad = tachi_daemon.run("share", s["id"], "--role", "observer", "--allow-ip", "not-a-cidr")
    assert bad.returncode == 2
    unknown = tachi_daemon.run("share", s["id"], "--role", "observer", "--user", "no-such-user-x")
    assert unknown.returncode == 3 and "no local user" in unknown.stderr


def test_audit_verify_catches_edits_deletions_and_reordering(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    for i in range(5):
        tachi_daemon.run("resize", s["id"], "--rows", str(20 + i), "--cols", "80", check=True)
    tachi_daemon.stop()  # writes a final checkpoint
    ok = tachi_daemon.run("audit", "verify")
    assert ok.returncode == 0 and "audit log ok" in ok.stdout
    log = tachi_daemon.state_dir / "audit" / "audit.jsonl"
    original = log.read_text().splitlines(keepends=True)
    assert len(original) >= 8

    def verify_with(lines):
        log.write_text("".join(lines))
        result = tachi_daemon.run("audit", "verify")
        log.write_text("".join(original))
        return result

    edited = list(original)
    edited[3] = (
        edited[3].replace('"allowed"', '"denied"', 1)
        if '"allowed"' in edited[3]
        else edited[3].replace('"info"', '"denied"', 1)
    )
    result = verify_with(edited)
    assert result.returncode == 1 and "record 4" in result.stderr
    deleted = original[:2] + original[3:]
    result = verify_with(deleted)
    assert result.returncode == 1 and "record 3" in result.stderr
    swapped = list(original)
    swapped[4], swapped[5] = swapped[5], swapped[4]
    result = verify_with(swapped)
    assert result.returncode == 1 and ("record 5" in result.stderr or "record 6" in result.stderr)
    truncated = original[:-2]
    result = verify_with(truncated)
    assert result.returncode == 1


def test_a_user_bound_token_cannot_be_borrowed(tachi_daemon, users):
    s = tachi_daemon.new("sleep", "300")
    grant = share(tachi_daemon, s["id"], "--role", "collaborator", "--user", "tachi-alice")
    share(tachi_daemon, s["id"], "--role", "observer", "--user", "tachi-bob")

    def bob_borrows():
        try:
            tachi_daemon.client(shared=True, token=grant["token"]).disconnect()
            return "accepted"
        except PermissionDenied as exc:
            return str(exc)

    assert "belongs to tachi-alice" in as_user("tachi-bob", bob_borrows)


def test_configured_rotation_rotates_tokens_by_itself(tachi_home):
    from tachi.testing import DaemonProcess

    daemon = DaemonProcess(
        tachi_home, config='[security]\ntoken_rotation = "2s"\ntoken_grace = "0"\n'
    )
    daemon.start()
    try:
        s = daemon.new(*SHELL)
        grant = share(daemon, s["id"], "--role", "observer")
        with daemon.client(token=grant["token"]) as client:
            conn = client.attach(s["id"])
            assert read_until(conn, lambda e: e.get("event") == "token", timeout=8)
            assert not conn.done  # refreshed in-band, not dropped
            conn.close()
        refused = daemon.run("capture", s["id"], "--token", grant["token"])
        assert refused.returncode == 4 and "rotated out" in refused.stderr
    finally:
        daemon.stop()


def test_an_observers_typed_keys_are_dropped_by_the_daemon_and_audited(tachi_daemon):
    """attach --token as an observer: what they type goes to the daemon, which
    drops it (never the program) and writes one denied session.write record."""
    s = tachi_daemon.new(*SHELL)
    made = tachi_daemon.run("share", s["id"], "--role", "observer", "--json", check=True)
    token = json.loads(made.stdout)["token"]
    child = spawn_attach(tachi_daemon, s["id"], "--token", token)
    child.expect(r"\$ |# ")
    child.send("echo OBSERVER-KEYS\r")
    until = time.monotonic() + 10
    denied: list[dict] = []
    while not denied and time.monotonic() < until:
        records = audit_records(tachi_daemon, "--session", s["id"])
        denied = [r for r in records if r["action"] == "session.write" and r["result"] == "denied"]
        time.sleep(0.1)
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    assert denied, "the observer's keys left no audit record"
    assert denied[0]["principal"].startswith("token:") and "read-only" in denied[0]["reason"]
    assert "OBSERVER-KEYS" not in capture(tachi_daemon, s["id"])
