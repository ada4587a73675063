"""The audit stream: every host's records, each exactly once, through a NATS outage."""

from __future__ import annotations

import json
import time

from nats_support import fleet, wait_until

from tachi.audit import read_records
from tachi.models import PTYConfig


def local_records(daemon) -> list[dict]:
    return list(read_records(daemon.state_dir / "audit" / "audit.jsonl"))


def resize_many(daemon, session: str, n: int) -> None:
    """``n`` audited actions (each resize is a record), through the real socket."""
    with daemon.client() as client:
        for i in range(n):
            client.resize(session, PTYConfig(rows=20 + i % 7, cols=80))


def shipped(observer, host: str) -> list[dict]:
    records = fleet(observer, "audit", "--json", "--host", host)
    for r in records:
        assert r.pop("host") == host
    return records


def test_records_made_while_nats_is_down_arrive_once_and_verify(nats_server, fleet_daemons):
    daemons = {name: fleet_daemons(nats_server.url, name) for name in ("h1", "h2", "h3")}
    sessions = {name: d.new("cat")["id"] for name, d in daemons.items()}
    observer = daemons["h1"]
    for name, d in daemons.items():
        resize_many(d, sessions[name], 10)
        wait_until(lambda d=d, name=name: len(shipped(observer, name)) >= 10, 10, f"{name} ships")

    nats_server.stop()
    outage = time.monotonic()
    while time.monotonic() - outage < 6:  # NATS down for 6 s while sessions make records
        for name, d in daemons.items():
            resize_many(d, sessions[name], 25)  # the daemons answer as usual
        time.sleep(0.5)
    nats_server.start()

    for name, d in daemons.items():
        want = local_records(d)
        assert len(want) > 128  # several checkpoints' worth
        n = len(want)

        def arrived(name: str = name, n: int = n) -> list[dict] | None:
            records = shipped(observer, name)
            return records if len(records) >= n else None

        got = wait_until(arrived, 20, f"{name}'s records after the outage")
        # Every record, exactly once, byte-identical, in order.
        assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
        assert got[: len(want)] == want
    verified = fleet(observer, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    lines = verified.stdout.splitlines()
    assert len(lines) == 3 and all(": ok, " in line for line in lines)
    assert all(int(line.split(", ")[1].split()[0]) >= 2 for line in lines)  # checkpoints


def test_verify_catches_a_record_forged_into_the_stream(nats_server, fleet_daemons):
    d = fleet_daemons(nats_server.url, "victim")
    s = d.new("cat")["id"]
    resize_many(d, s, 70)  # past the first checkpoint
    wait_until(lambda: len(shipped(d, "victim")) >= 70, 10, "records shipped")
    assert fleet(d, "audit", "verify").returncode == 0
    # Someone with write access to the stream appends a record of their own.
    last = shipped(d, "victim")[-1]
    forged = dict(last, seq=last["seq"] + 1, prev=last["hash"], action="session.create")
    import asyncio

    import nats

    async def publish() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().publish("tachi.audit.victim", json.dumps(forged).encode())
        await nc.close()

    asyncio.run(publish())
    bad = fleet(d, "audit", "verify", check=False)
    assert bad.returncode == 1 and "hash mismatch" in bad.stderr


def test_without_fleet_settings_the_plugin_is_idle(tachi_home):
    from tachi.testing import DaemonProcess

    daemon = DaemonProcess(tachi_home, {"TACHI_LOAD_PLUGINS": "nats"})
    daemon.start()
    try:
        status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
        plugins = json.loads(daemon.run("plugins", "--json", check=True).stdout)
        daemon.new("sleep", "300")
    finally:
        daemon.stop()
    assert "nats" in [p["name"] for p in plugins]
    assert "fleet" not in status["transports"]
    assert "fleet" not in daemon.log.read_text()
    refused = daemon.run("fleet", "ls")
    assert refused.returncode == 1 and "no [fleet] table" in refused.stderr, refused


def test_a_daemon_whose_nats_is_unreachable_starts_and_serves(tachi_home):
    from nats_support import fleet_config, free_port

    from tachi.testing import DaemonProcess

    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    daemon = DaemonProcess(
        tachi_home, {"TACHI_LOAD_PLUGINS": "nats"}, config=fleet_config(url, "lone")
    )
    began = time.monotonic()
    daemon.start()
    try:
        assert time.monotonic() - began < 5
        s = daemon.new("cat")
        resize_many(daemon, s["id"], 20)
        assert daemon.run("ls", check=True).returncode == 0
        time.sleep(3)  # several reconnect attempts
    finally:
        daemon.stop()
    log = daemon.log.read_text()
    assert log.count("cannot reach NATS") == 1, log
    assert "Traceback" not in log
    down = daemon.run("fleet", "hosts")
    assert down.returncode == 1 and "cannot reach NATS" in down.stderr
