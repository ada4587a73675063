"""An installed third-party audit sink whose collector is slow loses nothing at
``tachi daemon stop``: every record written before the daemon went down, its own
``daemon.stop`` included, reaches it (the issue: 7 of 9 were lost). Past the
flush deadline (5 s) the daemon stops anyway and says what it did not ship."""

from __future__ import annotations

import json
import time
from pathlib import Path

from helpers import installed_plugin
from tachi.testing import DaemonProcess

#: A shipper written from docs/plugins.md: each record costs its collector
#: ``DELAY`` seconds; what it has received is appended to ``COLLECTED``.
SLOW_SINK = """
import json, time
from tachi.hookspecs import hookimpl

COLLECTED = {collected!r}
DELAY = {delay!r}

@hookimpl
def tachi_audit_event(event):
    time.sleep(DELAY)  # the collector takes its time to answer
    with open(COLLECTED, "a") as f:
        f.write(json.dumps(event) + "\\n")
"""


def _daemon(tachi_home: Path, tmp_path: Path, delay: float) -> tuple[DaemonProcess, Path]:
    collected = tmp_path / "collector.jsonl"
    source = SLOW_SINK.format(collected=str(collected), delay=delay)
    env = installed_plugin(tmp_path / "site", "slowsink", source)
    daemon = DaemonProcess(tachi_home, extra_env={**env, "TACHI_LOAD_PLUGINS": "slowsink"})
    daemon.start()
    return daemon, collected


def _stop_with_the_cli(daemon: DaemonProcess, timeout: float) -> float:
    """``tachi daemon stop``, then wait for the daemon's process to end; returns
    how long that took."""
    began = time.monotonic()
    daemon.run("daemon", "stop", check=True)
    assert daemon.proc is not None
    daemon.proc.wait(timeout)
    return time.monotonic() - began


def _written(daemon: DaemonProcess) -> list[dict]:
    with (daemon.state_dir / "audit" / "audit.jsonl").open() as f:
        return [json.loads(line) for line in f]


def test_a_slow_collector_receives_every_record_written_before_daemon_stop(tachi_home, tmp_path):
    daemon, collected = _daemon(tachi_home, tmp_path, delay=0.2)
    try:
        for n in range(3):
            daemon.run("new", "-d", "--name", f"job-{n}", "--", "sleep", "300", check=True)
        # The collector is behind by now: records are still queued when stop comes.
        _stop_with_the_cli(daemon, timeout=20)
    finally:
        daemon.stop()
    written = _written(daemon)
    # Enough to lag, few enough to drain in the 5 s stop allows at 0.2 s each.
    assert 6 <= len(written) <= 20, [r["action"] for r in written]
    assert written[-1]["action"] == "daemon.stop"
    shipped = [json.loads(line) for line in collected.read_text().splitlines()]
    assert [r["seq"] for r in shipped] == [r["seq"] for r in written], "records were lost"
    assert shipped == written
    assert "gave up waiting" not in daemon.log.read_text()


def test_past_the_flush_deadline_the_daemon_stops_and_logs_what_it_did_not_ship(
    tachi_home, tmp_path
):
    # 2 s per record: the 5 s at stop cannot ship them all.
    daemon, collected = _daemon(tachi_home, tmp_path, delay=2.0)
    try:
        for n in range(3):
            daemon.run("new", "-d", "--name", f"job-{n}", "--", "sleep", "300", check=True)
        took = _stop_with_the_cli(daemon, timeout=30)
    finally:
        daemon.stop()
    written = _written(daemon)
    assert written[-1]["action"] == "daemon.stop"
    # It did not wait for the collector beyond its deadline (the records took
    # far longer than that to ship), and the log names the plugin.
    assert len(written) >= 6 and took < len(written) * 2.0 - 5, (took, len(written))
    line = next(x for x in daemon.log.read_text().splitlines() if "gave up waiting" in x)
    assert "slowsink" in line and "calls not made" in line
    shipped = collected.read_text().splitlines() if collected.exists() else []
    assert 0 < len(shipped) < len(written)
