"""Open files: the daemon raises its own limit, keeps a reserve, refuses one
session with a clear error when it runs short, and keeps serving everyone."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import until
from tachi.errors import Conflict
from tachi.models import SessionRequest
from tachi.testing import DaemonProcess


def test_out_of_descriptors_refuses_a_session_and_the_daemon_keeps_serving(tachi_home):
    # Like `prlimit -n160 tachid`: without the reserve, sessions were made until
    # the PTY could not be opened ("out of pty devices"), and from then on the
    # daemon could not accept a connection: `tachi ls` hung.
    daemon = DaemonProcess(tachi_home, open_files=(160, 160))
    daemon.start()
    try:
        made: list[str] = []
        refusal: Conflict | None = None
        with daemon.client() as client:
            for _ in range(200):
                try:
                    made.append(client.create(SessionRequest(command=["cat"])).id)
                except Conflict as exc:
                    refusal = exc
                    break
        assert refusal is not None, "200 sessions in 160 descriptors?"
        assert "open files in use" in str(refusal) and "ulimit -n" in str(refusal)
        assert len(made) > 10
        listed = daemon.run("ls", "--json", timeout=10)
        assert listed.returncode == 0
        assert {s["id"] for s in json.loads(listed.stdout)} == set(made)
        # The sessions made before still work, and closing some makes room again.
        assert daemon.run("send", made[0], "still-here\\n").returncode == 0
        until(lambda: "still-here" in daemon.run("capture", made[0]).stdout, timeout=10)
        for sid in made[:4]:
            assert daemon.run("close", sid).returncode == 0
        again = daemon.run("new", "-d", "--", "sleep", "60")
        assert again.returncode == 0, again.stderr
    finally:
        daemon.stop()


def test_the_daemon_raises_its_own_limit_and_children_get_the_original(tachi_home):
    daemon = DaemonProcess(tachi_home, open_files=(256, 4096))
    daemon.start()
    try:
        assert daemon.proc is not None
        limits = Path(f"/proc/{daemon.proc.pid}/limits").read_text()
        assert re.search(r"Max open files\s+4096\s+4096", limits), limits
        s = daemon.new("sh", "-c", "echo limit=$(ulimit -n); exec sleep 300")
        until(lambda: "limit=256" in daemon.run("capture", s["id"]).stdout, timeout=10)
    finally:
        daemon.stop()
