"""`tachi fleet up` / `down`: a local nats-server for one machine, with a token."""

from __future__ import annotations

import socket

from nats_support import fleet, free_port, wait_until

from tachi.testing import DaemonProcess


def test_fleet_up_prints_settings_that_a_daemon_joins_with(tachi_home):
    port = free_port()
    admin = DaemonProcess(tachi_home, {"TACHI_LOAD_PLUGINS": "nats"})  # only for .run
    up = admin.run("fleet", "up", "--listen", f"127.0.0.1:{port}", check=True)
    daemon = None
    try:
        assert up.stdout.splitlines()[1:3] == ["[fleet]", f'url = "nats://127.0.0.1:{port}"']
        assert up.stdout.splitlines()[3].startswith('token = "')
        again = admin.run("fleet", "up", "--listen", f"127.0.0.1:{port}", check=True)
        assert "already runs" in again.stderr and again.stdout == up.stdout
        # Without the token, the server refuses.
        (tachi_home / "config.toml").write_text(
            f'[fleet]\nurl = "nats://127.0.0.1:{port}"\nhost = "solo"\n'
        )
        refused = admin.run("fleet", "hosts")
        assert refused.returncode == 1 and "cannot reach NATS" in refused.stderr
        # With the printed lines, a daemon joins.
        config = "\n".join(up.stdout.splitlines()[1:]) + '\nhost = "solo"\n'
        daemon = DaemonProcess(tachi_home, {"TACHI_LOAD_PLUGINS": "nats"}, config=config)
        daemon.start()
        wait_until(
            lambda: [h["host"] for h in fleet(daemon, "hosts", "--json")] == ["solo"],
            10,
            "the daemon in the fleet",
        )
    finally:
        if daemon is not None:
            daemon.stop()
        down = admin.run("fleet", "down", check=True)
    assert "stopped" in down.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert "no fleet nats-server" in admin.run("fleet", "down", check=True).stderr
