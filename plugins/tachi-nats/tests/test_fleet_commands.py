"""fleet forget, fleet audit filters, and the agent's cheap wake-ups."""

from __future__ import annotations

import time

from nats_support import fleet, wait_until

from tachi.gotime import format_rfc3339, now_ns
from tachi.models import PTYConfig


def test_a_gone_host_is_forgotten_but_its_history_stays(nats_server, fleet_daemons):
    keep = fleet_daemons(nats_server.url, "keep")
    old = fleet_daemons(nats_server.url, "old-box")
    old.new("sleep", "300")
    wait_until(lambda: len(fleet(keep, "ls", "--json")) == 1, 10, "old-box's session listed")
    up = keep.run("fleet", "forget", "old-box")
    assert up.returncode == 1 and "old-box is up" in up.stderr
    old.kill()  # a dead host: its heartbeat expires, its session stays unreachable
    old.end_keeper()
    wait_until(
        lambda: (
            {h["host"]: h["status"] for h in fleet(keep, "hosts", "--json")}["old-box"] == "gone"
        ),
        15,
        "old-box gone",
    )
    assert [s["state"] for s in fleet(keep, "ls", "--json")] == ["unreachable"]
    audited = len(fleet(keep, "audit", "--json", "--host", "old-box"))

    forgot = keep.run("fleet", "forget", "old-box", check=True)
    assert "forgot old-box and 1 session(s)" in forgot.stdout
    assert [h["host"] for h in fleet(keep, "hosts", "--json")] == ["keep"]
    assert fleet(keep, "ls", "--json") == []
    assert len(fleet(keep, "audit", "--json", "--host", "old-box")) == audited > 0
    unknown = keep.run("fleet", "forget", "old-box")
    assert unknown.returncode == 1 and "no host 'old-box'" in unknown.stderr


def test_fleet_audit_filters_by_session_and_time(nats_server, fleet_daemons):
    d = fleet_daemons(nats_server.url, "solo")
    first, second = d.new("sleep", "300")["id"], d.new("sleep", "300")["id"]
    with d.client() as client:
        client.resize(first, PTYConfig(rows=30, cols=80))
        time.sleep(1.1)  # the records' times differ from here on (RFC 3339, ns)
        cut = format_rfc3339(now_ns())
        time.sleep(0.1)
        client.resize(second, PTYConfig(rows=31, cols=80))
    total = len(list((d.state_dir / "audit" / "audit.jsonl").read_text().splitlines()))
    wait_until(lambda: len(fleet(d, "audit", "--json")) == total, 10, "all records shipped")

    mine = fleet(d, "audit", "--json", "--session", first)
    assert mine and {r["session"] for r in mine} == {first}
    assert "session.resize" in [r["action"] for r in mine]
    later = fleet(d, "audit", "--json", "--since", cut)
    assert later and all(r["time"] >= cut for r in later)
    assert [r["session"] for r in later if r["action"] == "session.resize"] == [second]
    assert len(fleet(d, "audit", "--json", "--since", "1h")) == total
    assert fleet(d, "audit", "--json", "--since", "1h", "--session", "nosuch") == []
    bad = d.run("fleet", "audit", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "neither an RFC 3339 time nor a duration" in bad.stderr


def test_a_burst_of_hook_calls_wakes_the_agent_loop_once(tmp_path):
    """Each wake-up is a write to the loop's self-pipe and a loop iteration: a
    burst of session events before the loop runs should cost one, not one each."""
    import threading

    from nats_support import free_port
    from tachi_nats.agent import FleetAgent
    from tachi_nats.settings import parse

    settings = parse({"url": f"nats://127.0.0.1:{free_port()}", "host": "h"})
    agent = FleetAgent(settings, state_dir=tmp_path, audit_dir=tmp_path, public_key="", version="t")
    agent.start()
    try:
        loop = agent._loop
        assert loop is not None
        scheduled = []
        real = loop.call_soon_threadsafe

        def counting(callback, *args):
            scheduled.append(callback)
            return real(callback, *args)

        loop.call_soon_threadsafe = counting  # count what the hooks hand over
        held = threading.Event()
        release = threading.Event()
        real(lambda: (held.set(), release.wait(5)))  # the loop is busy meanwhile
        assert held.wait(5)
        for i in range(1000):
            agent.session_changed(f"s{i % 10}", b'{"x":%d}' % i)
        release.set()
        assert len(scheduled) == 1, len(scheduled)  # one wake-up, not 1000
        assert len(agent._pending) == 10  # the latest state per session, bounded
        # Once the loop has run the wake-ups, the next call wakes it again.
        wait_until(lambda: not agent._wake_pending, 5, "the wake-ups run")
        agent.session_changed("s0", b"{}")
        assert len(scheduled) == 2
    finally:
        agent.stop(3)


def test_sessions_that_ended_while_their_daemon_was_dead_leave_the_registry(
    nats_server, fleet_daemons
):
    d = fleet_daemons(nats_server.url, "phoenix")
    ended = d.new("sleep", "300")["id"]
    wait_until(lambda: [s["id"] for s in fleet(d, "ls", "--json")] == [ended], 10, "listed")
    d.kill()  # no goodbye: the registry still holds the session
    d.end_keeper()  # and the session ends while no daemon runs
    d.start()  # a new daemon that never knew it
    alive = d.new("sleep", "300")["id"]
    wait_until(
        lambda: [s["id"] for s in fleet(d, "ls", "--json")] == [alive],
        15,
        "only the live session listed",
    )
