"""The plugin, installed for real and loaded by a real daemon through its entry point."""

from __future__ import annotations

import json
import socket

from tachi.testing import DaemonProcess


def test_audit_records_reach_a_syslog_collector(tachi_home):
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(10)
    port = collector.getsockname()[1]
    daemon = DaemonProcess(
        tachi_home,
        extra_env={"TACHI_LOAD_PLUGINS": "syslog", "TACHI_SYSLOG_ADDRESS": f"127.0.0.1:{port}"},
    )
    daemon.start()
    try:
        listed = json.loads(daemon.run("plugins", "--json", check=True).stdout)
        (plugin,) = [p for p in listed if p["distribution"] == "tachi-syslog"]
        assert plugin["hooks"] == ["tachi_audit_event"] and not plugin["builtin"]
        session = daemon.new("sleep", "300")
        messages = []
        while not any("session.create" in m for m in messages):
            messages.append(collector.recv(65536).decode())
        line = next(m for m in messages if "session.create" in m)
        assert line.startswith("<")  # syslog priority
        record = json.loads(line[line.index("{") :])
        assert record["session"] == session["id"] and len(record["hash"]) == 64
    finally:
        daemon.stop()
        collector.close()


def test_without_syslog_the_failure_is_reported_once_not_per_record(tachi_home):
    # A host with no syslog daemon: the socket path does not exist.
    daemon = DaemonProcess(
        tachi_home,
        extra_env={
            "TACHI_LOAD_PLUGINS": "syslog",
            "TACHI_SYSLOG_ADDRESS": str(tachi_home / "no-such-dev-log"),
        },
    )
    daemon.start()
    try:
        s = daemon.new("sleep", "300")
        for i in range(40):  # 40 audited actions, within the first back-off pauses
            daemon.run("resize", s["id"], "--rows", str(20 + i % 5), "--cols", "80", check=True)
        assert daemon.run("audit", "verify").returncode == 0  # the log itself is complete
    finally:
        daemon.stop()
    log = daemon.log.read_text()
    assert "Traceback" not in log and "Logging error" not in log
    failures = [line for line in log.splitlines() if "plugin syslog failed" in line]
    assert len(failures) == 1, log
    assert "no-such-dev-log" in failures[0] and "back-off" in failures[0]
