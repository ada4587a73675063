"""The audit log says who did what: the actor of a detach, every size change,
reads of a session's screen, output and recordings (issue 26: F13, F18)."""

from __future__ import annotations

import os
import pwd
from typing import Any

from helpers import SHELL, audit_records, get, share, shows, until
from tachi.models import PTYConfig
from tachi.testing import DaemonProcess


def records(daemon: DaemonProcess, sid: str, action: str) -> list[dict[str, Any]]:
    return [r for r in audit_records(daemon, "--session", sid) if r["action"] == action]


ME = pwd.getpwuid(os.getuid()).pw_name


def test_a_collaborator_detaching_the_owner_is_recorded_as_the_one_who_did_it(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "collaborator")
    with tachi_daemon.client() as client:
        conn = client.attach(s["id"])
        (owner_client,) = client.clients(s["id"])
        detached = tachi_daemon.run("detach", s["id"], "--token", grant["token"])
        assert detached.returncode == 0, detached.stderr
        until(lambda: conn.read(timeout=0.2) == b"" and conn.done)
    (record,) = records(tachi_daemon, s["id"], "session.detach")
    # The actor is the collaborator; the owner is who was detached, not who left.
    assert record["principal"] == f"token:{grant['id']}"
    assert record["details"]["principal"] == ME
    assert record["details"]["client"] == owner_client["id"]


def test_every_size_change_of_an_attached_client_is_recorded(tachi_daemon):
    s = tachi_daemon.new(*SHELL, rows=30, cols=100)
    with tachi_daemon.client() as client:
        conn = client.attach(s["id"], size=PTYConfig(rows=30, cols=100))
        (me,) = client.clients(s["id"])
        conn.resize(40, 120)
        until(lambda: get(tachi_daemon, s["id"])["pty"]["rows"] == 40)
        # A drag: twenty sizes in a row, coalesced in the log, the last one kept.
        for rows in range(41, 61):
            conn.resize(rows, 120)
        until(lambda: get(tachi_daemon, s["id"])["pty"]["rows"] == 60)

        def last_size_recorded() -> list[dict[str, Any]]:
            found = [
                r
                for r in records(tachi_daemon, s["id"], "session.resize")
                if r["details"].get("client") == me["id"]
            ]
            return found if found and found[-1]["details"]["rows"] == 60 else []

        resized = until(last_size_recorded, timeout=10)
        conn.close()
    # The size it attached with is on record too: it sized the session then.
    (attached,) = records(tachi_daemon, s["id"], "session.attach")
    assert attached["details"]["client"] == me["id"]
    assert attached["details"]["size"] == {"rows": 30, "cols": 100}
    assert resized[0]["principal"] == ME
    assert (resized[0]["details"]["rows"], resized[0]["details"]["cols"]) == (40, 120)
    # Every change is accounted for, in far fewer records than changes.
    assert sum(r["details"].get("coalesced", 1) for r in resized) == 21
    assert len(resized) < 10


def test_an_observers_captures_and_output_stream_are_recorded(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    for _ in range(3):
        tachi_daemon.run("capture", s["id"], "--token", grant["token"], check=True)
    captures = records(tachi_daemon, s["id"], "session.capture")
    # One record for a run of reads (at most one a minute), naming the reader.
    assert [(r["principal"], r["details"]["reads"]) for r in captures] == [
        (f"token:{grant['id']}", 1)
    ]
    with tachi_daemon.client(token=grant["token"]) as client:
        client.call("events.subscribe", session=s["id"], output=True)
    (subscribed,) = records(tachi_daemon, s["id"], "events.subscribe")
    assert subscribed["principal"] == f"token:{grant['id']}"
    assert subscribed["details"] == {"output": True, "principalKind": "token"}


def test_reading_a_recording_is_recorded_once_per_connection_from_any_offset(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    with tachi_daemon.client() as client:
        rec = client.start_recording(s["id"])
        tachi_daemon.run("send", s["id"], "echo recorded-$((2*21))\n", check=True)
        shows(tachi_daemon, s["id"], "recorded-42")
        client.stop_recording(s["id"])
    with tachi_daemon.client() as reader:
        # A reader that skips the start is still a reader.
        reader.call("record.read", recording=rec.id, offset=10)
        assert len(records(tachi_daemon, s["id"], "record.access")) == 1
        reader.call("record.read", recording=rec.id, offset=0)
        reader.call("record.read", recording=rec.id, offset=20)
    with tachi_daemon.client() as again:
        again.call("record.read", recording=rec.id, offset=0)
    accesses = records(tachi_daemon, s["id"], "record.access")
    # One per connection that read it, not one per chunk.
    assert [r["details"]["offset"] for r in accesses] == [10, 0]
