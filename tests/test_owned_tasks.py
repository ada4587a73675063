"""Every task the daemon starts has an owner that awaits it, and nothing blocks
its event loop: a stop with work in flight ends cleanly, on record, and a
scripted workload under asyncio's debug mode has no slow callback."""

from __future__ import annotations

import json
import re
import subprocess
import time

from helpers import until
from tachi.testing import DaemonProcess


def audit_actions(daemon: DaemonProcess) -> list[dict]:
    path = daemon.state_dir / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spawn(daemon: DaemonProcess, *args: str) -> subprocess.Popen[bytes]:
    """``tachi ARGS`` left running (a client connected while the daemon stops)."""
    return subprocess.Popen(
        daemon.tachi_argv(*args),
        env=daemon.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_stop_with_an_exec_running_and_clients_connected_ends_cleanly(tachi_home):
    """The exec's supervisor, owned by its connection, reports the killed
    command's end before the audit log closes: no ``AuditWriteError``, no
    traceback, and the exit is on record before ``daemon.stop``."""
    daemon = DaemonProcess(tachi_home)
    daemon.start()
    procs = []
    try:
        session = daemon.new("sh")
        procs.append(spawn(daemon, "exec", "--", "sleep", "300"))
        procs.append(spawn(daemon, "events"))
        idle = daemon.client()
        idle.list()
        until(lambda: any(r["action"] == "exec.start" for r in audit_actions(daemon)))
        procs.append(spawn(daemon, "wait", session["id"], "--match", "nope", "--timeout", "60"))
        time.sleep(0.3)  # lets the wait reach the daemon; its outcome is not asserted

        stopped = daemon.run("daemon", "stop", check=True)
        assert "stopped" in stopped.stdout + stopped.stderr
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=20) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()

    log = daemon.log.read_text()
    assert "Traceback" not in log, log
    assert "AuditWriteError" not in log, log
    records = audit_actions(daemon)
    actions = [r["action"] for r in records]
    assert actions[-1] == "daemon.stop"
    exits = [r for r in records if r["action"] == "exec.exit"]
    assert exits and exits[-1]["details"]["exitCode"] == 137, actions  # killed with SIGKILL


SLOW = re.compile(r"Executing .* took [0-9.]+ seconds")


def test_a_scripted_workload_never_blocks_the_event_loop(tachi_home, tmp_path):
    """asyncio's debug mode logs every callback or task step that holds the loop
    longer than ``slow_callback_duration`` (0.1 s, its default): none may,
    once the daemon serves (its start, before any client, is one long step).
    On asyncio's loop: uvloop has no debug mode."""
    daemon = DaemonProcess(
        tachi_home, extra_env={"TACHI_EVENT_LOOP": "asyncio", "PYTHONASYNCIODEBUG": "1"}
    )
    daemon.start()
    try:
        sid = daemon.new("sh")["id"]
        other = daemon.new("sh")["id"]
        for i in range(20):
            daemon.run("send", sid, f"echo line-{i}\n", check=True)
        daemon.run("wait", sid, "--match", "line-19", "--timeout", "10", check=True)
        daemon.run("capture", sid, "--history", check=True)
        daemon.run("ls", check=True)
        daemon.run("run", other, "--", "seq 1 2000", check=True, timeout=60)
        daemon.run("exec", "--", "echo", "plain", check=True)
        # 256 KiB through a terminal while the other session echoes keys.
        data = (b"0123456789abcdef" * 4 + b"\n") * (256 * 1024 // 65)
        (tmp_path / "in").write_bytes(data)
        with open(tmp_path / "in", "rb") as stdin:
            pty = subprocess.run(
                daemon.tachi_argv("exec", "--pty", "--", "sh", "-c", "stty -echo; wc -c"),
                env=daemon.env, stdin=stdin, capture_output=True, timeout=120,
            )  # fmt: skip
        assert pty.returncode == 0, pty.stderr
        for i in range(5):
            daemon.run("send", other, f"echo key-{i}\n", check=True)
        daemon.run("wait", other, "--match", "key-4", "--timeout", "10", check=True)
    finally:
        daemon.stop()
    log = daemon.log.read_text()
    serving = log[log.index("transport unix started") :]
    # Debug mode was on: it logs each subprocess it starts (the plain exec).
    assert "execute program 'echo'" in serving
    assert not SLOW.findall(serving), "\n".join(SLOW.findall(serving))
