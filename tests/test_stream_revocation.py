"""A request that streams a session ends with the access it was made with.

``session.wait``, a streaming ``session.run`` and ``run.output --follow`` are
checked once, when they start; they then read the session for as long as they
last. Revoking the token they came with, rotating it out with no grace (or its
expiry) ends them at once, as it ends event subscriptions: the caller gets
``PermissionDenied`` naming the reason, nothing the session prints afterwards
reaches it, the end is audited, and a run it started keeps running in the
session (issue 26: F1).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import SHELL, audit_records, share, shows
from tachi.client.wire import WireConnection
from tachi.errors import PermissionDenied
from tachi.protocol import CONTROL, decode_control
from tachi.testing import DaemonProcess

#: How long a stream may outlive the access it was opened with.
ENDS_WITHIN = 10.0


def reply_to(wire: WireConnection, request_id: int, timeout: float) -> dict[str, Any] | None:
    """The reply to ``request_id`` (``None`` if none came within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        frame = wire.next_frame(min(left, 0.2))
        if frame is None or frame.channel != CONTROL:
            continue
        message = decode_control(frame.payload)
        if message.get("id") == request_id and "ok" in message:
            return message
    return None


def waiting(daemon: DaemonProcess, token: str, sid: str, args: dict[str, Any]) -> tuple[Any, int]:
    """A peer's ``session.wait`` in flight, known to be in place: a request the
    daemon answers after it started the wait (requests start in the order they
    come) has been answered."""
    wire = WireConnection(Path(daemon.socket), token=token, autostart=False)
    request_id = wire.send_request("session.wait", {"session": sid, **args})
    wire.call("session.get", {"session": sid})
    return wire, request_id


def denial_audited(daemon: DaemonProcess, sid: str, action: str, stream: str, reason: str) -> bool:
    return any(
        r["action"] == action
        and r["result"] == "denied"
        and r.get("reason") == reason
        and (r.get("details") or {}).get("stream") == stream
        for r in audit_records(daemon, "--session", sid)
    )


def after_end(daemon: DaemonProcess, sid: str, word: str) -> str:
    """Make the session print ``word``-42 (computed by the shell: the typed
    line never holds it) and wait until it is on the screen."""
    daemon.run("send", sid, f"echo {word}-$((40+2))\n", check=True)
    shows(daemon, sid, f"{word}-42")
    return f"{word}-42"


# -- session.wait ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode",
    [{"new": True}, {}],
    ids=["new-output", "screen-and-output"],
)
def test_a_revoked_waiter_gets_the_reason_not_a_match(tachi_daemon, mode):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    wire, request_id = waiting(
        tachi_daemon, grant["token"], s["id"], {"match": r"after-revoke-4\d", "timeout": 60, **mode}
    )
    try:
        tachi_daemon.run("revoke", s["id"], grant["id"], check=True)
        started = time.monotonic()
        # What the waiter waits for shows up right after the revoke: it must not
        # be handed text it may no longer read.
        text = after_end(tachi_daemon, s["id"], "after-revoke")
        reply = reply_to(wire, request_id, ENDS_WITHIN)
        assert reply is not None, "the wait outlived its token's revocation"
        assert time.monotonic() - started < ENDS_WITHIN
        assert text not in json.dumps(reply), "text printed after the revoke reached the waiter"
        assert not reply["ok"], reply
        error = reply["error"]
        assert error["code"] == PermissionDenied.code
        assert error["message"] == f"access revoked ({grant['id']})"
    finally:
        wire.close()
    reason = f"access revoked ({grant['id']})"
    assert denial_audited(tachi_daemon, s["id"], "session.read", "session.wait", reason)


def test_rotating_a_token_out_ends_its_wait(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    wire, request_id = waiting(
        tachi_daemon, grant["token"], s["id"], {"matches": [r"rotated-4\d"], "new": True}
    )
    try:
        tachi_daemon.run("token", "rotate", s["id"], grant["id"], "--grace", "0", check=True)
        text = after_end(tachi_daemon, s["id"], "rotated")
        reply = reply_to(wire, request_id, ENDS_WITHIN)
        assert reply is not None, "the wait outlived its token, rotated out with no grace"
        assert text not in json.dumps(reply)
        assert not reply["ok"] and reply["error"]["message"] == "token rotated out", reply
    finally:
        wire.close()


def test_a_wait_that_keeps_its_access_still_matches(tachi_daemon):
    """Revoking someone else's grant leaves a waiter alone."""
    s = tachi_daemon.new(*SHELL)
    mine = share(tachi_daemon, s["id"], "--role", "observer")
    other = share(tachi_daemon, s["id"], "--role", "observer")
    wire, request_id = waiting(
        tachi_daemon, mine["token"], s["id"], {"match": r"kept-4\d", "new": True, "timeout": 60}
    )
    try:
        tachi_daemon.run("revoke", s["id"], other["id"], check=True)
        after_end(tachi_daemon, s["id"], "kept")
        reply = reply_to(wire, request_id, ENDS_WITHIN)
        assert reply is not None and reply["ok"], reply
        assert reply["result"]["matched"] == "kept-42"
    finally:
        wire.close()


# -- session.run, streamed -------------------------------------------------------------
class Streamed:
    """A peer's streamed call (``run``, ``run_output``) on a thread: the output
    it was given, piece by piece, and what the call ended with."""

    def __init__(self, call: Any) -> None:
        self.pieces: queue.Queue[str] = queue.Queue()
        self.seen = ""
        self.outcome: queue.Queue[BaseException | Any] = queue.Queue()

        def go() -> None:
            try:
                self.outcome.put(call(self._output))
            except BaseException as exc:  # what the client raised is the result
                self.outcome.put(exc)

        threading.Thread(target=go, daemon=True).start()

    def _output(self, data: bytes, omitted: int = 0) -> None:
        self.pieces.put(data.decode(errors="replace"))

    def _drain(self, timeout: float) -> None:
        try:
            self.seen += self.pieces.get(timeout=timeout)
        except queue.Empty:
            return
        while not self.pieces.empty():
            self.seen += self.pieces.get_nowait()

    def shows(self, text: str, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.seen and time.monotonic() < deadline:
            self._drain(0.2)
        return text in self.seen

    def ended(self, timeout: float = ENDS_WITHIN) -> BaseException | Any | None:
        try:
            result = self.outcome.get(timeout=timeout)
        except queue.Empty:
            return None
        self._drain(0)
        return result


def gated(tmp: Path, word: str) -> tuple[str, Path]:
    """A command that prints a start line, waits (bounded) for a file, then
    prints ``word``-42: output produced at a moment the test chooses."""
    gate = tmp / f"{word}.go"
    command = (
        f"echo started-$((6*7)); for i in $(seq 600); do [ -e {gate} ] && break; sleep 0.05;"
        f" done; echo {word}-$((40+2))"
    )
    return command, gate


def test_revoking_a_token_ends_its_streamed_run_and_the_run_goes_on(tachi_daemon, tmp_path):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "collaborator")
    command, gate = gated(tmp_path, "late")
    client = tachi_daemon.client(token=grant["token"])
    try:
        run = Streamed(lambda out: client.run(s["id"], command, timeout=60, on_output=out))
        assert run.shows("started-42"), "the run's output never reached the collaborator"
        tachi_daemon.run("revoke", s["id"], grant["id"], check=True)
        outcome = run.ended()
        assert outcome is not None, "the streamed run outlived its token's revocation"
        assert isinstance(outcome, PermissionDenied), outcome
        assert str(outcome) == f"access revoked ({grant['id']})"
        # The command itself runs on in the session; what it prints now is not
        # the revoked peer's to see.
        gate.touch()
        shows(tachi_daemon, s["id"], "late-42")
        run._drain(0.5)
        assert "late-42" not in run.seen
    finally:
        client.disconnect()
    reason = f"access revoked ({grant['id']})"
    assert denial_audited(tachi_daemon, s["id"], "session.write", "session.run", reason)


# -- run.output --follow ---------------------------------------------------------------
@pytest.mark.parametrize("how", ["revoke", "expiry"])
def test_losing_access_ends_a_followed_run(tachi_daemon, tmp_path, how):
    s = tachi_daemon.new(*SHELL)
    ttl = ("--ttl", "3s") if how == "expiry" else ()
    grant = share(tachi_daemon, s["id"], "--role", "observer", *ttl)
    command, gate = gated(tmp_path, "followed")
    with tachi_daemon.client() as owner:
        ident = owner.run(s["id"], command, detach=True).run
    client = tachi_daemon.client(token=grant["token"])
    try:
        follow = Streamed(
            lambda out: client.run_output(ident, follow=True, timeout=60, on_output=out)
        )
        assert follow.shows("started-42"), "the followed run's output never reached the observer"
        if how == "revoke":
            tachi_daemon.run("revoke", s["id"], grant["id"], check=True)
            reason = f"access revoked ({grant['id']})"
        else:
            reason = f"access expired ({grant['id']})"
        outcome = follow.ended()
        assert outcome is not None, f"the follow outlived its grant ({how})"
        assert isinstance(outcome, PermissionDenied), outcome
        assert str(outcome) == reason
        gate.touch()
        shows(tachi_daemon, s["id"], "followed-42")
        follow._drain(0.5)
        assert "followed-42" not in follow.seen
    finally:
        client.disconnect()
    # The run went on without its follower: the owner collects it.
    with tachi_daemon.client() as owner:
        result = owner.run_wait(ident, timeout=30)
    assert result.exit_code == 0 and "followed-42" in result.output
    assert denial_audited(tachi_daemon, s["id"], "session.read", "run.output", reason)


def test_a_revoked_run_wait_gets_the_reason_not_the_output(tachi_daemon, tmp_path):
    s = tachi_daemon.new(*SHELL)
    grant = share(tachi_daemon, s["id"], "--role", "observer")
    command, gate = gated(tmp_path, "waited")
    with tachi_daemon.client() as owner:
        ident = owner.run(s["id"], command, detach=True).run
    shows(tachi_daemon, s["id"], "started-42")
    wire = WireConnection(Path(tachi_daemon.socket), token=grant["token"], autostart=False)
    try:
        request_id = wire.send_request("run.wait", {"run": ident, "timeout": 60})
        wire.call("session.get", {"session": s["id"]})  # the wait is in place
        tachi_daemon.run("revoke", s["id"], grant["id"], check=True)
        gate.touch()
        shows(tachi_daemon, s["id"], "waited-42")
        reply = reply_to(wire, request_id, ENDS_WITHIN)
        assert reply is not None, "run.wait outlived its token's revocation"
        assert "waited-42" not in json.dumps(reply)
        assert not reply["ok"] and reply["error"]["message"] == f"access revoked ({grant['id']})"
    finally:
        wire.close()
