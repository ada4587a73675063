"""Refused logins cannot flood the audit log or guess tokens at full speed
(issue 26 F5): 200 wrong SSH passwords against a real daemon, and the
throttle's rules on their own (with its clock under the test's control)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tachi.daemon import refusals
from tachi.daemon.refusals import THROTTLED, RefusalThrottle
from tachi.testing import DaemonProcess

asyncssh = pytest.importorskip("asyncssh")

GUESSES = 200
UNKNOWN = "unknown token"


def _ssh_port(daemon: DaemonProcess) -> int:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    (listener,) = [x for x in status["listeners"] if x["transport"] == "ssh"]
    return int(listener["url"].rsplit(":", 1)[1])


async def _guess(port: int, total: int, connections: int, deadline: float) -> int:
    """Send ``total`` wrong passwords over ``connections`` parallel SSH
    connections (asyncssh tries the password method again after each
    failure); returns how many were sent before ``deadline``."""
    sent = 0

    class Guesser(asyncssh.SSHClient):  # type: ignore[misc]
        def password_auth_requested(self) -> str | None:
            nonlocal sent
            if sent >= total or time.monotonic() > deadline:
                return None
            sent += 1
            return f"tachi_wrong-guess-{sent}"

    async def one() -> None:
        while sent < total and time.monotonic() < deadline:
            try:
                conn, _ = await asyncssh.create_connection(
                    Guesser, "127.0.0.1", port, username="guest", known_hosts=None,
                    client_keys=None, agent_path=None, preferred_auth="password",
                    login_timeout=30,
                )  # fmt: skip
                conn.close()
            except (asyncssh.Error, OSError):
                pass

    await asyncio.gather(*(one() for _ in range(connections)))
    return sent


def _token_refusals(daemon: DaemonProcess) -> list[dict]:
    records = json.loads(daemon.run("audit", "--json", check=True).stdout)
    return [r for r in records if r["action"] == "auth.token" and r["result"] == "denied"]


def _counted(records: list[dict]) -> tuple[int, int]:
    """(secrets checked, attempts refused unchecked) that the records account for."""
    checked = throttled = 0
    for r in records:
        reasons = r["details"].get("reasons") or {r["reason"]: r["details"].get("count", 1)}
        checked += sum(n for reason, n in reasons.items() if reason == UNKNOWN)
        throttled += sum(n for reason, n in reasons.items() if reason == THROTTLED)
    return checked, throttled


def test_two_hundred_wrong_passwords_are_slowed_and_counted_not_logged_one_by_one(
    tachi_home: Path,
):
    config = '[transports.ssh]\nlisten = "127.0.0.1:0"\n'
    daemon = DaemonProcess(tachi_home, extra_env={"TACHI_LOAD_PLUGINS": "ssh"}, config=config)
    daemon.start()
    try:
        port = _ssh_port(daemon)
        started = time.monotonic()
        sent = asyncio.run(_guess(port, GUESSES, connections=4, deadline=started + 60))
        elapsed = time.monotonic() - started
        assert sent == GUESSES
        # Every guess is accounted for once the interval's counts are written.
        deadline = time.monotonic() + 3 * refusals.INTERVAL_SECONDS
        while sum(_counted(_token_refusals(daemon))) < GUESSES:
            assert time.monotonic() < deadline, _counted(_token_refusals(daemon))
            time.sleep(0.2)
        records = _token_refusals(daemon)
        checked, throttled = _counted(records)
        assert checked + throttled == GUESSES
        # Bounded audit: a full record and a counted one per interval, not 200.
        intervals = elapsed / refusals.INTERVAL_SECONDS + 2
        assert len(records) <= 2 * intervals + 2, [r["reason"] for r in records]
        assert any(r["details"]["count"] > 1 for r in records)
        # Guessing is slow: unthrottled this was ~290 checked guesses a second.
        assert checked / elapsed < 5, (checked, elapsed)
        assert throttled > 0
        # The daemon's own user is not slowed: the Unix socket answers at once.
        assert daemon.run("ls", "--json", timeout=5).returncode == 0
    finally:
        daemon.stop()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(address: str | None, reason: str = UNKNOWN, action: str = "auth.token") -> dict:
    return {
        "action": action, "result": "denied", "principal": "-",
        "source": f"ssh:{address}:1", "reason": reason,
        "details": {"transport": "ssh", "address": address},
    }  # fmt: skip


def test_refusals_are_counted_per_address_and_interval_and_locals_never():
    written: list[dict] = []
    clock = _Clock()
    throttle = RefusalThrottle(lambda **r: written.append(r), clock=clock)
    for _ in range(50):
        throttle.refused("10.0.0.1", _record("10.0.0.1"))
    throttle.refused("10.0.0.2", _record("10.0.0.2"))
    for _ in range(3):
        throttle.refused(None, _record(None))  # the Unix socket: always in full
    assert [r["details"]["address"] for r in written] == ["10.0.0.1", "10.0.0.2", None, None, None]
    clock.now += refusals.INTERVAL_SECONDS
    throttle.flush(expired_only=True)
    (summary,) = written[5:]
    assert summary["details"]["count"] == 49
    assert summary["details"]["reasons"] == {UNKNOWN: 49}
    assert "49 more refusals from 10.0.0.1" in summary["reason"]
    throttle.close()
    assert len(written) == 6  # nothing else was pending


def test_the_number_of_addresses_tracked_is_bounded(monkeypatch):
    monkeypatch.setattr(refusals, "MAX_SOURCES", 4)
    written: list[dict] = []
    throttle = RefusalThrottle(lambda **r: written.append(r), clock=_Clock())
    for i in range(100):
        for _ in range(2):
            throttle.refused(f"10.0.1.{i}", _record(f"10.0.1.{i}"))
        throttle.secret_failed(f"10.0.1.{i}")
    assert len(throttle._buckets) <= 5 and len(throttle._guessing) <= 4
    throttle.close()
    assert sum(r["details"]["count"] for r in written) == 200


def test_each_failed_secret_makes_the_next_attempt_from_that_address_wait_longer():
    clock = _Clock()
    throttle = RefusalThrottle(lambda **r: None, clock=clock)

    def wait_before_next(address: str) -> float:
        state = throttle._guessing.get(address)
        before = state.next_slot if state else 0.0
        assert asyncio.run(_admit_now(throttle, address))
        after = throttle._guessing[address].next_slot if address in throttle._guessing else 0.0
        return after - max(before, clock.now)

    async def _admit_now(t: RefusalThrottle, address: str) -> bool:
        # The slot math without sleeping: the clock is the test's.
        state = t._guessing.get(address)
        if state is not None:
            clock.now = max(clock.now, state.next_slot)
        return await t.before_secret(address)

    assert asyncio.run(throttle.before_secret("10.0.0.9"))  # no failures: no wait
    steps = []
    for _ in range(8):
        throttle.secret_failed("10.0.0.9")
        steps.append(wait_before_next("10.0.0.9"))
    assert steps == sorted(steps) and steps[0] > 0
    assert steps[-1] == refusals.MAX_STEP_SECONDS
    # Too far ahead: refused without looking at the secret.
    throttle._guessing["10.0.0.9"].next_slot = clock.now + refusals.MAX_WAIT_SECONDS + 1
    assert asyncio.run(throttle.before_secret("10.0.0.9")) is False
    # Another address and local peers are not affected; time forgives.
    assert asyncio.run(throttle.before_secret("10.0.0.10"))
    assert asyncio.run(throttle.before_secret(None))
    clock.now += refusals.FORGET_SECONDS + 1
    assert asyncio.run(throttle.before_secret("10.0.0.9"))
    assert "10.0.0.9" not in throttle._guessing


@pytest.mark.parametrize("token", ["tachi_" + "x" * 43, "not-a-tachi-token"])
def test_a_refused_token_is_audited_once_as_auth_token(tachi_daemon, token):
    """One refusal, one record: the token handler audits it, the daemon does not
    audit it again as a bare 'auth' refusal (a network peer's refusal would
    otherwise cost two records)."""
    denied = tachi_daemon.run("ls", env={"TACHI_TOKEN": token})
    assert denied.returncode == 4, denied.stderr
    records = json.loads(tachi_daemon.run("audit", "--json", check=True).stdout)
    refused = [r for r in records if r["result"] == "denied"]
    assert [r["action"] for r in refused] == ["auth.token"], refused
