"""NATS subject permissions for the transport (docs/fleet.md, "Security"): a
host's user serves only its own connect and connection subjects, and a client
user made for some hosts (``reaches``) reaches those hosts' daemons through
``nats://SERVER/HOST`` and no other. Real nats-server with the documented
accounts block, real daemons logged in as their hosts."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from nats_support import NatsServer, wait_until
from tachi_nats.provision import accounts_config

from tachi.testing import DaemonProcess

USERS = [
    {"user": "admin", "password": "admin-secret"},
    {"user": "alpha", "password": "alpha-secret", "host": "alpha"},
    {"user": "beta", "password": "beta-secret", "host": "beta"},
    {"user": "ops", "password": "ops-secret", "reaches": ["alpha"]},
]


def _serving(daemon: DaemonProcess) -> bool:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    return any(x["transport"] == "nats" and x.get("connected") for x in status["listeners"])


@pytest.fixture
def hosts():
    directory = Path(tempfile.mkdtemp(prefix="nats-", dir="/tmp"))
    server = NatsServer(directory, extra=accounts_config("tachi", USERS))
    server.start()
    made: list[DaemonProcess] = []
    try:
        for name in ("alpha", "beta"):
            home = Path(tempfile.mkdtemp(prefix=f"tachi-{name}-", dir="/tmp"))
            config = (
                f'[fleet]\nurl = "{server.url}"\nhost = "{name}"\n'
                f'user = "{name}"\npassword = "{name}-secret"\n'
            )
            daemon = DaemonProcess(home, {"TACHI_LOAD_PLUGINS": "nats"}, config=config)
            made.append(daemon)
            daemon.start()
        for daemon in made:
            wait_until(lambda d=daemon: _serving(d), 15, "serving through NATS")
        yield server, {"alpha": made[0], "beta": made[1]}
    finally:
        for daemon in made:
            daemon.stop()
            shutil.rmtree(daemon.home, ignore_errors=True)
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_client_user_reaches_its_hosts_and_no_other(hosts):
    server, daemons = hosts
    port = server.url.rsplit(":", 1)[1]
    for name, daemon in daemons.items():
        daemon.new("sleep", "300", name=f"job-on-{name}")
    tokens = {
        name: json.loads(d.run("token", "create", "--json", check=True).stdout)["token"]
        for name, d in daemons.items()
    }
    here = daemons["alpha"]

    def remote(host: str) -> tuple[int, str, str, float]:
        url = f"nats://ops:ops-secret@127.0.0.1:{port}/{host}"
        started = time.monotonic()
        r = here.run("--host", url, "ls", "--json", env={"TACHI_TOKEN": tokens[host]}, timeout=60)
        return r.returncode, r.stdout, r.stderr, time.monotonic() - started

    code, out, err, _ = remote("alpha")
    assert code == 0, err
    assert [s["name"] for s in json.loads(out)] == ["job-on-alpha"]
    # beta is not this user's: its connect request is refused by NATS itself,
    # the daemon never hears of it, and the client says so within its timeout.
    code, out, err, took = remote("beta")
    assert code != 0 and "job-on-beta" not in out
    assert err.strip().startswith("tachi: ") and len(err.strip().splitlines()) == 1, err
    assert took < 45
    audited = json.loads(daemons["beta"].run("audit", "--json", check=True).stdout)
    assert not [r for r in audited if "nats" in str(r.get("source", ""))]


def test_fleet_permissions_prints_what_the_accounts_block_uses(tachi_home):
    from tachi_nats.provision import client_permissions, host_permissions

    daemon = DaemonProcess(tachi_home, {"TACHI_LOAD_PLUGINS": "nats"})
    printed = daemon.run("fleet", "permissions", "--host", "alpha", "--client-of", "alpha")
    assert printed.returncode == 0, printed.stderr
    out = json.loads(printed.stdout)
    assert out == {
        "alpha": host_permissions("tachi", "alpha"),
        "client": client_permissions("tachi", ["alpha"]),
    }
    assert out["alpha"]["allow_responses"] is True
    bad = daemon.run("fleet", "permissions", "--client-of", "no/such")
    assert bad.returncode == 2 and "not a host name" in bad.stderr
