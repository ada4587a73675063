"""The registry: every host's sessions in one list, hosts that die shown gone."""

from __future__ import annotations

import time

from nats_support import fleet, wait_until


def test_fleet_ls_shows_the_sessions_of_every_host(nats_server, fleet_daemons):
    daemons = {
        name: fleet_daemons(nats_server.url, name) for name in ("build-1", "build-2", "gpu-3")
    }
    made = {name: d.new("sleep", "300")["id"] for name, d in daemons.items()}
    closing = daemons["build-1"].new("sleep", "300")["id"]

    def listed():
        return {(s["host"], s["id"]) for s in fleet(daemons["gpu-3"], "ls", "--json")}

    wait_until(
        lambda: {(h, i) for h, i in made.items()} | {("build-1", closing)} <= listed(),
        10,
        "every host's sessions in fleet ls",
    )
    # A closed session leaves the registry (an event, not a poll).
    daemons["build-1"].run("close", closing, check=True)
    wait_until(lambda: ("build-1", closing) not in listed(), 5, "the closed session gone")
    one = fleet(daemons["build-2"], "ls", "--json", "--host", "build-1")
    assert [s["id"] for s in one] == [made["build-1"]]
    assert one[0]["command"] == ["sleep", "300"] and one[0]["state"] in ("pending", "suspended")
    table = fleet(daemons["build-1"], "ls").stdout
    assert table.splitlines()[0].split()[:4] == ["HOST", "ID", "NAME", "STATE"]
    hosts = {h["host"]: h["status"] for h in fleet(daemons["build-1"], "hosts", "--json")}
    assert hosts == {"build-1": "up", "build-2": "up", "gpu-3": "up"}


def test_a_killed_host_is_gone_within_15_s_and_comes_back(nats_server, fleet_daemons):
    a = fleet_daemons(nats_server.url, "alpha")
    b = fleet_daemons(nats_server.url, "beta")
    c = fleet_daemons(nats_server.url, "gamma")
    session = b.new("sleep", "300")["id"]
    wait_until(
        lambda: (
            {h["host"] for h in fleet(a, "hosts", "--json") if h["status"] == "up"}
            == {"alpha", "beta", "gamma"}
        ),
        10,
        "three hosts up",
    )
    b.kill()  # kill -9: no goodbye; its keeper keeps the session alive
    killed = time.monotonic()
    wait_until(
        lambda: {h["host"]: h["status"] for h in fleet(c, "hosts", "--json")}.get("beta") == "gone",
        15,
        "beta shown gone",
    )
    assert time.monotonic() - killed <= 15
    (mine,) = [s for s in fleet(a, "ls", "--json") if s["id"] == session]
    assert mine["state"] == "unreachable" and mine["host"] == "beta"
    assert "unreachable" in fleet(a, "ls", "--state", "unreachable").stdout
    # The daemon comes back (adopting the kept session): so does the host, by itself.
    b.start()
    wait_until(
        lambda: (
            [s["state"] for s in fleet(a, "ls", "--json", "--host", "beta") if s["id"] == session]
            in (["pending"], ["suspended"], ["active"])
        ),
        15,
        "beta's session reachable again",
    )
    assert {h["host"]: h["status"] for h in fleet(a, "hosts", "--json")}["beta"] == "up"
