"""What the dispatcher asks before an operation runs, seen from real clients:
the computed needs of an attach, an attached client's own requests, and a
daemon token's exec once the token is revoked."""

from __future__ import annotations

import base64
import json

import pytest

from tachi.audit import read_records
from tachi.errors import InvalidRequest, NotFound, PermissionDenied

SHELL = ("sh",)


def share(daemon, sid, *args) -> dict:
    return json.loads(daemon.run("share", sid, "--json", *args, check=True).stdout)


def denials(daemon, action: str) -> list[dict]:
    return [
        r
        for r in read_records(daemon.state_dir / "audit" / "audit.jsonl")
        if r["action"] == action and r["result"] == "denied"
    ]


def test_a_writable_attach_naming_a_window_switches_to_it(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    with tachi_daemon.client() as client:
        client.new_window(s["id"], ["sh"], name="second")  # now active
        client.switch_window(s["id"], 0)
        conn = client.attach(s["id"], window=1)
        conn.close()
        active = [w for w in client.list_windows(s["id"]) if w.active]
    assert [w.id for w in active] == [1]


def test_an_observer_may_name_only_the_active_window(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    with tachi_daemon.client() as owner:
        owner.new_window(s["id"], ["sh"])
        owner.switch_window(s["id"], 0)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    with tachi_daemon.client(token=grant["token"]) as observer:
        observer.attach(s["id"], window=0).close()  # the active one: fine, read-only
        with pytest.raises(PermissionDenied, match="read-only client cannot switch"):
            observer.attach(s["id"], window=1)


def test_detaching_the_others_asks_session_detach(tachi_daemon):
    """An observer's attach with ``detachOthers`` is refused before it happens
    (``session.detach``, audited), and nobody is detached."""
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    with tachi_daemon.client() as owner, tachi_daemon.client(token=grant["token"]) as observer:
        kept = owner.attach(s["id"])
        with pytest.raises(PermissionDenied):
            observer.call("session.attach", session=s["id"], detachOthers=True)
        assert len(owner.call("session.clients", session=s["id"])) == 1
        kept.close()
    assert denials(tachi_daemon, "session.detach")


def test_an_attached_clients_own_requests_need_an_attachment(tachi_daemon):
    with tachi_daemon.client() as client:
        for op in ("client.redraw", "client.resize", "client.detach"):
            with pytest.raises(InvalidRequest, match="not attached"):
                client.call(op, rows=24, cols=80)


def test_a_revoked_daemon_token_stops_feeding_its_exec(tachi_daemon):
    """``exec.stdin`` asks ``exec`` again: the command a daemon token started
    takes no more input once the token is revoked."""
    made = json.loads(tachi_daemon.run("token", "create", "--json", check=True).stdout)
    with tachi_daemon.client(token=made["token"]) as client:
        client.call("exec.start", command=["cat"])
        fed = client.call("exec.stdin", data=base64.b64encode(b"hi\n").decode())
        assert fed == {"bytes": 3}
        tachi_daemon.run("token", "revoke", made["id"], check=True)
        with pytest.raises(PermissionDenied):
            client.call("exec.stdin", data=base64.b64encode(b"more\n").decode())


def test_a_request_without_its_session_argument_is_invalid(tachi_daemon):
    with tachi_daemon.client() as client:
        for op in ("session.capture", "share.list", "record.start", "window.list"):
            with pytest.raises(InvalidRequest, match="missing argument 'session'"):
                client.call(op)
        # Optional where the operation says so: every session's events.
        assert client.call("events.subscribe")["session"] is None


def test_a_run_in_a_session_the_caller_may_not_see_is_no_run(tachi_daemon):
    """A run's id found in a session the caller may not see answers as a
    missing run would: the session's id is not given away."""
    hidden = tachi_daemon.new("bash", "--norc")
    mine = tachi_daemon.new(*SHELL)
    with tachi_daemon.client() as owner:
        run = owner.call("session.run", session=hidden["id"], command="sleep 30", detach=True)
    grant = share(tachi_daemon, mine["id"], "--role", "collaborator")
    with tachi_daemon.client(token=grant["token"]) as stranger, pytest.raises(NotFound) as refused:
        stranger.call("run.wait", run=run["run"], timeout=1)
    assert "no run" in str(refused.value) and hidden["id"] not in str(refused.value)
