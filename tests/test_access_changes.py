"""When access changes, everything live follows at once.

Revoking a grant, its expiry, or rotating its token out with no grace ends
what streams under it (event subscriptions and their output, over the Unix
socket and over WebSocket) as it ends attached clients. A user who loses a
collaborator grant but keeps an observer grant is demoted live: told, and their
keys stop reaching the PTY. Someone who may not see a session cannot tell it
exists (issue 26: F1, F2, F19).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import SHELL, audit_records, capture, share, shows, until
from tachi.errors import DaemonUnavailable, TachiError
from tachi.testing import DaemonProcess
from users import as_user, ensure_users


class EventsProcess:
    """``tachi events SESSION --output --json`` as a real process, its lines read
    by a thread so the test can wait for them with a timeout."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def output_until(self, text: str, timeout: float = 15) -> bool:
        """Read events until ``text`` shows up in the output ones (True), the
        stream ends or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if event is None:
                return False
            self.seen.append(event)
            if text in "".join(e.get("data", "") for e in self.seen if e["type"] == "output"):
                return True
        return False

    def ended(self, timeout: float = 10) -> tuple[int | None, str]:
        """Its exit status and stderr once it exits, or (None, "") after ``timeout``."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, ""
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def events_output(daemon: DaemonProcess, sid: str, token: str) -> EventsProcess:
    argv = daemon.tachi_argv("events", sid, "--output", "--json", "--token", token)
    return EventsProcess(argv, daemon.env)


def streaming(stream: EventsProcess, daemon: DaemonProcess, sid: str) -> bool:
    """Whether output reaches the stream: the session prints a line each second
    until one shows up (the process needs a moment to start and subscribe)."""
    for i in range(20):
        daemon.run("send", sid, f"echo live-{i}-$((1+1))\n", check=True)
        if stream.output_until(f"live-{i}-2", timeout=1):
            return True
    return False


def output_after_end(stream: EventsProcess, daemon: DaemonProcess, sid: str, word: str) -> str:
    """Make the session print ``word`` (computed by the shell, so the typed line
    never contains it) and return all output the stream delivered."""
    daemon.run("send", sid, f"echo {word}-$((40+2))\n", check=True)
    shows(daemon, sid, f"{word}-42")
    stream.output_until(f"{word}-42", timeout=1)  # whatever may still come
    return "".join(e.get("data", "") for e in stream.seen if e["type"] == "output")


# -- F1: event subscriptions end with the access they were opened with -------------
def test_revoking_a_token_ends_its_output_stream_at_once(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    stream = events_output(tachi_daemon, s["id"], grant["token"])
    try:
        assert streaming(stream, tachi_daemon, s["id"]), "the observer's stream showed nothing"
        tachi_daemon.run("revoke", s["id"], grant["id"], check=True)
        code, err = stream.ended()
        assert code is not None, "tachi events kept running after its token was revoked"
        assert code != 0 and f"access revoked ({grant['id']})" in err
        assert "after-revoke-42" not in output_after_end(stream, tachi_daemon, s["id"], "after")
        # What the revocation cut off is audited, as for every stream (BoundStream).
        assert any(
            r["result"] == "denied"
            and r.get("reason") == f"access revoked ({grant['id']})"
            and (r.get("details") or {}).get("stream") == "events"
            for r in audit_records(tachi_daemon, "--session", s["id"])
        )
    finally:
        stream.close()


def test_an_output_stream_ends_when_its_grant_expires(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer", "--ttl", "2s")
    from tachi.client.sync import Client

    outcome: queue.Queue[BaseException | str] = queue.Queue()

    def follow() -> None:
        try:
            client = Client(tachi_daemon.socket, token=grant["token"], autostart=False)
            for _event in client.events(s["id"], output=True):
                pass
            outcome.put("stream ended without a word")
        except BaseException as exc:  # what the client raised is the result
            outcome.put(exc)

    started = time.monotonic()
    threading.Thread(target=follow, daemon=True).start()
    # Output keeps flowing while the grant runs out.
    for i in range(40):
        if not outcome.empty():
            break
        tachi_daemon.run("send", s["id"], f"echo tick-{i}\n", check=True)
        time.sleep(0.1)
    try:
        result = outcome.get(timeout=10)
    except queue.Empty:
        raise AssertionError("the stream outlived its grant's expiry") from None
    elapsed = time.monotonic() - started
    assert isinstance(result, DaemonUnavailable), result
    assert f"access expired ({grant['id']})" in str(result)
    assert elapsed < 5, f"stream ended {elapsed:.1f}s after subscribing, for a 2s ttl"


def test_rotating_a_token_out_with_no_grace_ends_its_stream(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    stream = events_output(tachi_daemon, s["id"], grant["token"])
    try:
        assert streaming(stream, tachi_daemon, s["id"])
        tachi_daemon.run("token", "rotate", s["id"], grant["id"], "--grace", "0", check=True)
        code, err = stream.ended()
        assert code is not None, "tachi events kept running on a token rotated out"
        assert code != 0 and "rotated out" in err
        assert "rotated-42" not in output_after_end(stream, tachi_daemon, s["id"], "rotated")
    finally:
        stream.close()


def test_a_handoff_with_nothing_kept_ends_the_old_owners_token_stream(tachi_daemon):
    """A daemon token is the daemon's user: once its session is handed away with
    nothing kept, that user may not read it, and the stream it follows ends."""
    ensure_users()
    s = tachi_daemon.new(*SHELL)
    made = json.loads(tachi_daemon.run("token", "create", "--json", check=True).stdout)
    stream = events_output(tachi_daemon, s["id"], made["token"])
    try:
        assert streaming(stream, tachi_daemon, s["id"])
        tachi_daemon.run("handoff", s["id"], "--to", "tachi-alice", "--keep", "none", check=True)
        code, err = stream.ended()
        assert code is not None and code != 0, "the stream outlived the handoff"
        assert "handed to tachi-alice" in err
    finally:
        stream.close()


def test_revoking_a_daemon_token_ends_its_streams_and_clients(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    made = json.loads(tachi_daemon.run("token", "create", "--json", check=True).stdout)
    stream = events_output(tachi_daemon, s["id"], made["token"])
    try:
        assert streaming(stream, tachi_daemon, s["id"])
        with tachi_daemon.client(token=made["token"]) as client:
            conn = client.attach(s["id"])
            tachi_daemon.run("token", "revoke", made["id"], check=True)
            until(lambda: conn.read(timeout=0.2) == b"" and conn.done, timeout=10)
        assert f"access revoked ({made['id']})" in conn.detached["message"]
        code, err = stream.ended()
        assert code is not None and code != 0, "the stream outlived its daemon token"
        assert "access revoked" in err
    finally:
        stream.close()


def test_revoking_a_token_ends_its_stream_over_websocket(tachi_home):
    sys.path.insert(0, str(Path(__file__).parents[1] / "plugins/tachi-websocket/tests"))
    from ws_support import start_remote

    remote = start_remote(tachi_home, 'listen = "127.0.0.1:0"\ntls = "self-signed"')
    daemon = remote.daemon
    try:
        s = daemon.new(*SHELL)
        grant = share(daemon, s["id"], "--role", "observer")
        argv = daemon.tachi_argv(*remote.flags(), "events", s["id"], "--output", "--json")
        stream = EventsProcess(argv, {**daemon.env, "TACHI_TOKEN": grant["token"]})
        try:
            assert streaming(stream, daemon, s["id"]), "no output reached the remote stream"
            daemon.run("revoke", s["id"], grant["id"], check=True)
            code, err = stream.ended()
            assert code is not None, "the remote stream kept running after the revoke"
            assert code != 0 and "access revoked" in err
            assert "gone-42" not in output_after_end(stream, daemon, s["id"], "gone")
        finally:
            stream.close()
    finally:
        daemon.stop()


# -- F2: a weaker grant left over demotes, at once ---------------------------------
@pytest.mark.parametrize("how", ["revoke", "expiry"])
def test_losing_a_collaborator_grant_but_keeping_observer_demotes_live(tachi_daemon, how):
    ensure_users()
    s = tachi_daemon.new(*SHELL)
    sid = s["id"]
    ttl = ["--ttl", "5s"] if how == "expiry" else []
    collaborator = share(tachi_daemon, sid, "--role", "collaborator", "--user", "tachi-alice", *ttl)
    share(tachi_daemon, sid, "--role", "observer", "--user", "tachi-alice")
    said: dict[str, Any] = {}

    def owner() -> None:
        # Once alice's first line ran, take the collaborator grant away. Over a
        # socket, not by running tachi: a pipe made while as_user forks would be
        # inherited by alice's process and hold that command until she is done.
        try:
            with tachi_daemon.client() as owner_client:

                def screen() -> str:
                    return owner_client.call("session.capture", session=sid)["text"]

                until(lambda: "before-2" in screen(), timeout=20, interval=0.1)
                if how == "revoke":
                    said["revoke"] = owner_client.call(
                        "share.revoke", session=sid, grant=collaborator["id"]
                    )
        except BaseException as exc:  # shown by the assertion below
            said["error"] = exc

    def alice() -> dict[str, Any]:
        with tachi_daemon.client(shared=True) as client:
            conn = client.attach(sid)
            role_at_attach = conn.role
            conn.write(b"echo before-$((1+1))\r")
            typed = b"before-2" in conn.read_until(b"before-2", timeout=15)
            deadline = time.monotonic() + 20
            notice = None
            while notice is None and not conn.done and time.monotonic() < deadline:
                conn.read(timeout=0.2)
                notice = next(
                    (e for e in conn.events if "you are now observer" in str(e.get("message"))),
                    None,
                )
            conn.write(b"echo AFTER-$((3*3))-LOST\r")
            later = b""
            end = time.monotonic() + 1
            while time.monotonic() < end:
                later += conn.read(timeout=0.2)
            return {
                "role": role_at_attach,
                "typed": typed,
                "ran_after": b"AFTER-9-LOST" in later,
                "notice": notice,
                "done": conn.done,
                "events": [e for e in conn.events if e.get("event") != "screen"],
            }

    thread = threading.Thread(target=owner, daemon=True)
    thread.start()
    seen = as_user("tachi-alice", alice, timeout=40)
    thread.join(30)
    assert seen["role"] == "collaborator" and seen["typed"]
    log = tachi_daemon.log.read_text(errors="replace")[-3000:]
    assert seen["notice"] is not None, f"alice was never told: {said}, {seen}\n{log}"
    assert seen["notice"]["readOnly"] is True and not seen["done"]  # demoted, not dropped
    assert not seen["ran_after"]
    if how == "revoke":
        assert (said["revoke"]["demoted"], said["revoke"]["disconnected"]) == (1, 0)
    # The owner's own line comes after alice's: once it shows, hers would have.
    tachi_daemon.run("send", sid, "echo owner-$((6+1))\n", check=True)
    shows(tachi_daemon, sid, "owner-7")
    assert "AFTER-9-LOST" not in capture(tachi_daemon, sid)
    records = audit_records(tachi_daemon, "--session", sid)
    demoted = [r for r in records if r["action"] == "session.demote"]
    assert demoted and demoted[0]["details"]["principal"] == "tachi-alice"
    assert (demoted[0]["details"]["from"], demoted[0]["details"]["to"]) == (
        "collaborator",
        "observer",
    )
    denied = [r for r in records if r["action"] == "session.write" and r["result"] == "denied"]
    assert any(r["principal"] == "tachi-alice" for r in denied)


# -- F19: no telling "not yours" from "not there" -----------------------------------
SESSION_OPS = [
    ("session.get", {}),
    ("session.attach", {}),
    ("session.capture", {}),
    ("session.send", {"text": "x"}),
    ("session.signal", {"signal": "INT"}),
    ("session.resize", {"size": {"rows": 10, "cols": 10}}),
    ("session.close", {}),
    ("session.detach", {}),
    ("session.clients", {}),
    ("session.rename", {"name": "mine"}),
    ("session.handoff", {"to": "root"}),
    ("session.run", {"command": "true"}),
    ("session.wait", {"exit": True, "timeout": 0.1}),
    ("window.list", {}),
    ("window.new", {}),
    ("window.select", {"window": 0}),
    ("window.rename", {"window": 0, "name": "w"}),
    ("window.close", {"window": 0}),
    ("events.subscribe", {}),
    ("events.subscribe", {"output": True}),
    ("share.create", {"role": "observer"}),
    ("share.list", {}),
    ("share.revoke", {"grant": "g_00000000"}),
    ("token.rotate", {}),
    ("record.start", {}),
    ("record.stop", {}),
    ("record.list", {}),
]


def answer(client: Any, op: str, args: dict[str, Any]) -> tuple[str, str]:
    try:
        client.call(op, **args)
    except TachiError as exc:
        return type(exc).__name__, str(exc)
    return "ok", ""


def test_a_token_cannot_tell_other_sessions_from_missing_ones(tachi_daemon):
    mine = tachi_daemon.new("sleep", "300")
    other = tachi_daemon.new("sleep", "300", name="payroll-deploy")
    grant = share(tachi_daemon, mine["id"], "--role", "observer")
    probes = [other["id"], "payroll-deploy"]
    with tachi_daemon.client(token=grant["token"]) as client:
        for op, args in SESSION_OPS:
            for ref in probes:
                existing = answer(client, op, {"session": ref, **args})
                missing = answer(client, op, {"session": ref + "x", **args})
                assert existing[0] == missing[0] == "NotFound", (op, ref, existing)
                assert existing[1] == missing[1].replace(ref + "x", ref), (op, existing, missing)
                assert other["id"] not in existing[1] or ref == other["id"]
        # Its own session: it knows it exists, and is told precisely what it may not do.
        kind, message = answer(client, "session.send", {"session": mine["id"], "text": "x"})
        assert kind == "PermissionDenied" and "may not session.write" in message
    probes_audited = [
        r
        for r in audit_records(tachi_daemon, "--session", other["id"])
        if r["result"] == "denied" and r["principal"] == f"token:{grant['id']}"
    ]
    assert len(probes_audited) >= len(SESSION_OPS)  # every probe is still a denial on record


def test_the_daemons_user_still_gets_precise_answers(tachi_daemon):
    s = tachi_daemon.new("sleep", "300")
    tachi_daemon.run("close", s["id"], check=True)
    closed = tachi_daemon.run("capture", s["id"])
    assert closed.returncode == 3 and f"session {s['id']} is closed" in closed.stderr
    missing = tachi_daemon.run("capture", "no-such-session")
    assert missing.returncode == 3 and "no session 'no-such-session'" in missing.stderr


# -- the keystroke path asks for the live role once the grant behind it ended -------
def test_a_key_typed_after_the_grant_ended_asks_for_the_live_role_first():
    """Between an expiry and the daemon's next tick, the keystroke path itself
    notices that the grant behind the client's role has ended, and asks."""
    from tachi.core.clients import AttachedClient
    from tachi.core.principal import Principal
    from tachi.gotime import now_ns

    asked: list[AttachedClient] = []

    def demote(client: AttachedClient) -> None:
        asked.append(client)
        client.role, client.read_only, client.role_until = "observer", True, None

    client = AttachedClient(
        wire=None,  # type: ignore[arg-type]  (nothing is sent in this check)
        principal=Principal(user="alice", uid=None, source="test"),
        role="collaborator",
        read_only=False,
        size=None,
        limit=0,
        snapshot=lambda: (0, 0, "", (0, 0)),
        role_until=now_ns() + 60 * 10**9,
        on_role_lapsed=demote,
    )
    assert client.may_write() and not asked  # before the end: no lookup at all
    client.role_until = now_ns() - 1
    assert not client.may_write()
    assert asked == [client] and client.role == "observer"
    assert not client.may_write() and len(asked) == 1  # read-only now: asked once
