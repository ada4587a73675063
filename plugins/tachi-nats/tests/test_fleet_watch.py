"""``tachi fleet ls --watch``: a live view in a real terminal. A session made on
another host appears and a closed one goes without the command being run
again, through the local daemon's mirror and reading NATS itself
(``--direct``); Ctrl-C ends it cleanly."""

from __future__ import annotations

import pexpect
import pytest
from nats_support import fleet, wait_until


@pytest.mark.parametrize("path", ["daemon", "direct"])
def test_fleet_ls_watch_follows_other_hosts_live(nats_server, fleet_daemons, path):
    here = fleet_daemons(nats_server.url, "here")
    there = fleet_daemons(nats_server.url, "there")
    wait_until(
        lambda: {h["host"] for h in fleet(here, "hosts", "--json")} == {"here", "there"},
        15,
        "both hosts up",
    )
    argv = here.tachi_argv("fleet", "ls", "--watch", *(["--direct"] if path == "direct" else []))
    view = pexpect.spawn(argv[0], argv[1:], env=here.env, dimensions=(40, 160), timeout=15)
    try:
        view.expect("no live sessions in the fleet")  # the view is up, empty
        made = there.new("sleep", "300", name="watched-job")
        view.expect("watched-job")  # appeared live, on another host's row
        row = view.before.decode(errors="replace").rsplit("\n", 1)[-1]
        assert row.split()[:2] == ["there", made["id"][:8]], row
        there.run("close", made["id"], check=True)
        view.expect("no live sessions in the fleet", timeout=15)  # gone, live too
        view.sendintr()
        view.expect(pexpect.EOF, timeout=10)
    finally:
        view.close(force=True)
    assert view.exitstatus in (0, 130), view.exitstatus
