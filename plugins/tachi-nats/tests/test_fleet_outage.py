"""The issue's outage: 5 daemons, NATS down for 30 s while their sessions make
audit records; then every record is in the stream exactly once and verifies."""

from __future__ import annotations

import json
import time

import pytest
from nats_support import fleet, wait_until

from tachi.audit import read_records
from tachi.models import PTYConfig

pytestmark = pytest.mark.xdist_group("heavy")

HOSTS = ("rack-1", "rack-2", "rack-3", "rack-4", "rack-5")
OUTAGE = 30.0


def shipped(observer, host: str) -> list[dict] | None:
    result = observer.run("fleet", "audit", "--json", "--host", host, timeout=30)
    if result.returncode != 0:
        return None
    return [{k: v for k, v in r.items() if k != "host"} for r in json.loads(result.stdout)]


def test_five_hosts_through_a_30_s_nats_outage_lose_nothing_and_repeat_nothing(
    nats_server, fleet_daemons
):
    daemons = {h: fleet_daemons(nats_server.url, h) for h in HOSTS}
    sessions = {h: d.new("sleep", "600")["id"] for h, d in daemons.items()}
    observer = daemons["rack-1"]
    wait_until(
        lambda: (
            {x["host"] for x in fleet(observer, "hosts", "--json") if x["status"] == "up"}
            == set(HOSTS)
        ),
        15,
        "five hosts up",
    )

    nats_server.stop()
    began = time.monotonic()
    clients = {h: d.client() for h, d in daemons.items()}
    made = 0
    try:
        while time.monotonic() - began < OUTAGE:  # the sessions go on making records
            for h, client in clients.items():
                for i in range(5):
                    client.resize(sessions[h], PTYConfig(rows=20 + (made + i) % 9, cols=80))
            made += 5
            time.sleep(0.5)
    finally:
        for client in clients.values():
            client.disconnect()
    assert made >= 150  # the daemons answered all along
    nats_server.start()

    for h, d in daemons.items():
        want = list(read_records(d.state_dir / "audit" / "audit.jsonl"))
        n = len(want)
        got = wait_until(
            lambda h=h, n=n: (r := shipped(observer, h)) and len(r) >= n and r,
            60,
            f"{h}'s records after the outage",
        )
        assert [r["seq"] for r in got] == list(range(1, len(got) + 1)), h  # once each
        assert got[: len(want)] == want, h  # byte for byte what the host wrote
    verified = fleet(observer, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.count(": ok, ") == len(HOSTS), verified.stdout
