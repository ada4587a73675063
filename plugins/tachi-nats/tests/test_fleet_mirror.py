"""The fleet served by a daemon's mirror of the registry (``fleet.snapshot``):
complete, current, gone hosts shown gone, stopped when idle, the same output
as reading NATS directly, and refused to whoever may not list the fleet."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import sys
import time
from typing import Any

import pytest
from nats_support import fleet, wait_until
from tachi_nats import cli as fleet_cli
from tachi_nats import nats_io
from tachi_nats.settings import parse

from tachi.client.sync import Client
from tachi.errors import PermissionDenied


def ask(daemon: Any, kind: str = "json", **filters: str) -> tuple[dict[str, Any], Any]:
    """``fleet.snapshot`` on ``daemon``, as the CLI asks it: (reply, decoded payload)."""
    with daemon.client() as client:
        reply, data = fleet_cli._ask(client, kind, {**dict.fromkeys(("host", "state")), **filters})
    return reply, json.loads(data)


def nats(url: str, work: Any) -> Any:
    """Run ``work(js)`` against the fleet's NATS (the test's own client)."""

    async def main() -> Any:
        settings = parse({"url": url, "host": "test"})
        nc = await nats_io.connect(settings)
        try:
            return await work(nc.jetstream(timeout=10))
        finally:
            await nc.close()

    return asyncio.run(main())


def test_fleet_ls_through_the_daemon_lists_every_host_without_importing_nats_py(
    nats_server, fleet_daemons
):
    daemons = {h: fleet_daemons(nats_server.url, h) for h in ("build-1", "build-2", "gpu-3")}
    made = {(h, d.new("sleep", "300")["id"]) for h, d in daemons.items()}
    observer = daemons["gpu-3"]
    wait_until(
        lambda: made <= {(s["host"], s["id"]) for s in ask(observer)[1]}, 10, "all in the mirror"
    )
    # The whole command, in a process of its own (not the warm CLI's fork).
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tachi", "fleet", "ls", "--json"],
        env={**observer.env, "TACHI_WARM": "0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert made <= {(s["host"], s["id"]) for s in json.loads(result.stdout)}
    imported = re.findall(r"\|\s+(\S+)\s*$", result.stderr, re.M)
    assert "tachi_nats.cli" in imported
    assert not [m for m in imported if m == "nats" or m.startswith("nats.")]
    # One session per line: a program can read it as JSON, a person can grep it.
    assert result.stdout.startswith("[\n{") and result.stdout.count("\n") == len(made) + 2


def test_a_change_on_another_host_reaches_the_mirror_without_reading_again(
    nats_server, fleet_daemons
):
    a = fleet_daemons(nats_server.url, "alpha")
    b = fleet_daemons(nats_server.url, "beta")
    reply, _ = ask(a)
    fills = reply["mirror"]["fills"]
    sid = b.new("sleep", "300")["id"]
    made = time.monotonic()
    wait_until(lambda: sid in {s["id"] for s in ask(a)[1]}, 5, "beta's new session in the mirror")
    assert time.monotonic() - made < 5
    b.run("close", sid, check=True)
    wait_until(lambda: sid not in {s["id"] for s in ask(a)[1]}, 5, "the closed one gone")
    # Pushed by the watch, not found by reading the registry again.
    assert ask(a)[0]["mirror"]["fills"] == fills


def test_a_killed_host_is_gone_through_the_mirror_within_15_s(nats_server, fleet_daemons):
    a = fleet_daemons(nats_server.url, "alpha")
    b = fleet_daemons(nats_server.url, "beta")
    sid = b.new("sleep", "300")["id"]
    wait_until(
        lambda: {h["host"]: h["status"] for h in ask(a, "hosts")[1]}.get("beta") == "up",
        10,
        "beta up in the mirror",
    )
    b.kill()
    killed = time.monotonic()
    wait_until(
        lambda: {h["host"]: h["status"] for h in ask(a, "hosts")[1]}.get("beta") == "gone",
        15,
        "beta gone in the mirror",
    )
    assert time.monotonic() - killed <= 15
    (mine,) = [s for s in ask(a)[1] if s["id"] == sid]
    assert mine["state"] == "unreachable"
    assert [r[1] for r in ask(a, "rows", state="unreachable")[1]] == [sid]


def _connected(daemon: Any, host: str) -> bool:
    """Whether the daemon's fleet agent is connected (asked before then, the
    mirror says it is not: ``DaemonUnavailable``): its heartbeat is in the
    registry, read without the mirror."""
    hosts = fleet(daemon, "hosts", "--json", "--direct")
    return any(h["host"] == host and h["status"] == "up" for h in hosts)


def _consumers(url: str, bucket: str) -> int:
    """Consumers on the whole of ``bucket`` (the mirror's; a daemon's own short
    reads filter on its host's keys)."""

    async def count(js: Any) -> int:
        from nats.js.errors import NotFoundError

        try:
            found = await js._jsm.consumers_info(f"KV_{bucket}")
        except NotFoundError:  # the daemon has not made its buckets yet: none
            return 0
        return sum(1 for c in found if c.config.filter_subject == f"$KV.{bucket}.>")

    return nats(url, count)


def test_the_mirror_stops_when_idle_and_fills_again_when_asked(nats_server, fleet_daemons):
    a = fleet_daemons(nats_server.url, "alpha", "mirror_idle = 2\n")
    assert _consumers(nats_server.url, "tachi-sessions") == 0  # nobody asked: nothing kept
    wait_until(lambda: _connected(a, "alpha"), 15, "the daemon connected to NATS")
    reply, sessions = ask(a)
    assert reply["mirror"]["fills"] == 1 and sessions == []
    assert _consumers(nats_server.url, "tachi-sessions") == 1
    # Not asked for 2 s: the consumers are deleted (and the copy dropped).
    wait_until(lambda: _consumers(nats_server.url, "tachi-sessions") == 0, 10, "consumer deleted")
    assert _consumers(nats_server.url, "tachi-hosts") == 0
    sid = a.new("sleep", "300")["id"]
    wait_until(lambda: sid in {s["id"] for s in ask(a)[1]}, 5, "listed after a new fill")
    assert ask(a)[0]["mirror"]["fills"] == 2


def test_a_bad_mirror_idle_stops_the_daemon_at_start(nats_server, tmp_path):
    from nats_support import fleet_config

    from tachi.testing import DaemonProcess

    d = DaemonProcess(
        tmp_path,
        {"TACHI_LOAD_PLUGINS": "nats"},
        config=fleet_config(nats_server.url, "alpha", 'mirror_idle = "soon"\n'),
    )
    with pytest.raises(Exception, match="mirror_idle"):
        d.start()


def _simulated_host(url: str, host: str, count: int) -> None:
    """``count`` sessions of ``host`` put straight into the registry, large and
    incompressible (the reply takes several chunks), with no heartbeat: gone."""

    async def put(js: Any) -> None:
        acks = []
        for n in range(count):
            doc = {
                "id": f"{n:08d}",
                "host": host,
                "name": secrets.token_urlsafe(900),
                "state": "active",
                "userId": "sim",
                "agentId": "bench",
                "command": ["sleep", "1"],
                "createdAt": f"2026-01-01T00:00:{n % 60:02d}Z",
                "pty": {"cols": 80, "rows": 24},
                "windows": [{"id": 0}],
            }
            acks.append(
                await js.publish_async(f"$KV.tachi-sessions.{host}.{doc['id']}", nats_io.dumps(doc))
            )
        for ack in acks:
            await ack

    nats(url, put)


def _aged(text: str) -> str:
    """The table with its ages made equal ("12s ago" and "9s ago" are both
    "N ago"), and so the column widths an age's length moves."""
    aged = re.sub(r"\b\d+[smhd] ago\b", "N ago", text)
    return "\n".join(" ".join(line.split()) for line in aged.splitlines())


def test_the_daemon_and_nats_give_the_same_output(nats_server, fleet_daemons):
    a = fleet_daemons(nats_server.url, "alpha")
    b = fleet_daemons(nats_server.url, "beta")
    for d in (a, b, b):
        d.new("sleep", "300")
    _simulated_host(nats_server.url, "sim", 1500)
    b.kill()  # its sessions unreachable: rewritten, on both paths
    wait_until(
        lambda: (
            {h["host"]: h["status"] for h in fleet(a, "hosts", "--json", "--direct")}
            == {"alpha": "up", "beta": "gone", "sim": "gone"}
        ),
        15,
        "beta gone",
    )
    reply, _ = ask(a)
    assert reply["chunks"] > 1  # more than one frame's worth

    def both(*args: str) -> tuple[str, str]:
        via = a.run("fleet", *args, check=True).stdout
        direct = a.run("fleet", *args, "--direct", check=True).stdout
        return via, direct

    via, direct = both("ls", "--json")
    assert via == direct
    listed = json.loads(via)
    assert len(listed) == 1503
    assert {s["state"] for s in listed if s["host"] != "alpha"} == {"unreachable"}
    for args in (("ls",), ("ls", "--host", "beta"), ("ls", "--state", "unreachable", "--json")):
        via, direct = both(*args)
        assert _aged(via) == _aged(direct), args
    via, direct = both("hosts", "--json")

    def steady(hosts: str) -> list[dict[str, Any]]:  # the heartbeat's time moves on
        return [{k: v for k, v in h.items() if k != "heartbeat"} for h in json.loads(hosts)]

    assert steady(via) == steady(direct) and len(steady(via)) == 3
    via, direct = both("hosts")
    assert via == direct and via.splitlines()[0].split()[:2] == ["HOST", "STATUS"]


def test_a_principal_without_rights_is_refused_and_audited(nats_server, fleet_daemons):
    a = fleet_daemons(nats_server.url, "alpha")
    sid = a.new("sleep", "300")["id"]
    grant = json.loads(a.run("share", sid, "--json", "--role", "observer", check=True).stdout)
    with (
        Client(a.socket, token=grant["token"], autostart=False) as client,
        pytest.raises(PermissionDenied),
    ):
        fleet_cli._ask(client, "json", {})
    records = json.loads(a.run("audit", "--json", check=True).stdout)
    assert any(
        r["action"] == "fleet.read" and r["result"] == "denied" and grant["id"] in r["principal"]
        for r in records
    ), [r for r in records if r["result"] == "denied"]
    # The daemon's own user may.
    assert ask(a)[1][0]["id"] == sid


def test_a_change_after_a_cached_answer_is_seen(nats_server, fleet_daemons):
    a = fleet_daemons(nats_server.url, "alpha")
    b = fleet_daemons(nats_server.url, "beta")
    first = b.new("sleep", "300")["id"]
    wait_until(lambda: first in {s["id"] for s in ask(a)[1]}, 10, "beta's session in the mirror")
    # Asked again with nothing changed: the same answer, kept, not built again,
    # even across heartbeats (each host's, every 2 s), which the listing does not show.
    # (A new session publishes a state or two more as it starts: once they are
    # in, asking again costs only the send.)
    reply, listed = wait_until(
        lambda: (answer := ask(a))[0]["cached"] and answer, 10, "an unchanged answer kept"
    )
    assert first in {s["id"] for s in listed}
    time.sleep(2.5)  # a heartbeat of each host in between; not a timing assertion
    assert ask(a)[0]["cached"]
    # Other filters on the same copy: an answer of their own, not the kept one.
    reply, only_alpha = ask(a, host="alpha")
    assert not reply["cached"] and first not in {s["id"] for s in only_alpha}
    # A change: the kept answers are dropped, the next one shows it.
    second = b.new("sleep", "300")["id"]
    wait_until(
        lambda: second in {s["id"] for s in ask(a)[1]}, 5, "the new session after a cached answer"
    )
    b.run("close", first, check=True)
    wait_until(lambda: first not in {s["id"] for s in ask(a)[1]}, 5, "the closed one gone")
    # A host going away changes the states shown, not a session's entry.
    b.kill()
    wait_until(
        lambda: {s["id"]: s["state"] for s in ask(a)[1]}.get(second) == "unreachable",
        15,
        "beta's session unreachable after a cached answer",
    )
    # The hosts view follows the heartbeats themselves.
    hosts = {h["host"]: h for h in ask(a, "hosts")[1]}
    beat = hosts["alpha"]["heartbeat"]
    wait_until(
        lambda: {h["host"]: h for h in ask(a, "hosts")[1]}["alpha"]["heartbeat"] != beat,
        10,
        "alpha's next heartbeat in the hosts view",
    )
