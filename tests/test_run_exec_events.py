"""Driving terminals from programs: `tachi run` (exit codes, via shell integration
or a sentinel), `tachi exec` (streams, stdin, signals, exit codes, rights) and
`tachi events` (ordering, slow subscribers), against a real daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pexpect
import pytest

from helpers import capture, events_json, events_until_closed, shell_session, until, wait_match
from tachi.testing import DaemonProcess

SHELLS = ["bash", "zsh", "fish"]


def _shell(daemon: DaemonProcess, name: str) -> str:
    """A session running ``name`` with its prompt drawn."""
    sid = shell_session(daemon, name)
    wait_match(daemon, sid, "my-prompt")
    return sid


@pytest.mark.parametrize("shell", SHELLS)
def test_run_exit_codes_in_each_shell(tachi_daemon, shell):
    sid = _shell(tachi_daemon, shell)
    ok = tachi_daemon.run("run", sid, "--", "echo", "hello-$((6*7))" if shell != "fish" else "hi")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == ("hello-42\n" if shell != "fish" else "hi\n")
    assert tachi_daemon.run("run", sid, "--", "false").returncode == 1
    killed = tachi_daemon.run("run", sid, "--", "sh -c 'kill -INT $$'")
    assert killed.returncode == 130
    slow = tachi_daemon.run("run", sid, "--timeout", "0.5", "--", "sleep 3")
    assert slow.returncode == 124 and "still running" in slow.stderr
    # The user's prompt is untouched: the integration prints invisible marks only.
    assert "my-prompt$" in capture(tachi_daemon, sid)


def test_run_uses_the_shells_marks_when_integrated(tachi_daemon):
    sid = _shell(tachi_daemon, "bash")
    result = json.loads(tachi_daemon.run("run", sid, "--json", "--", "true", check=True).stdout)
    result = json.loads(tachi_daemon.run("run", sid, "--json", "--", "echo x", check=True).stdout)
    assert result["output"] == "x\n" and result["exitCode"] == 0
    # Integrated: nothing but the command itself was typed.
    assert "tachi-" not in capture(tachi_daemon, sid).splitlines()[-2]


def test_run_in_a_shell_without_integration_uses_a_sentinel(tachi_daemon):
    s = tachi_daemon.new("sh")
    time.sleep(0.3)
    result = tachi_daemon.run("run", s["id"], "--json", "--", "echo from-sh; (exit 3)")
    assert result.returncode == 3
    assert json.loads(result.stdout)["output"] == "from-sh\n"


def test_run_output_longer_than_the_screen_is_complete(tachi_daemon):
    sid = _shell(tachi_daemon, "bash")
    result = tachi_daemon.run("run", sid, "--", "seq 1 5000", check=True)
    assert result.stdout.split() == [str(i) for i in range(1, 5001)]


def test_concurrent_runs_queue_in_order(tachi_daemon):
    sid = _shell(tachi_daemon, "bash")
    argv = [sys.executable, "-m", "tachi", "run", sid, "--"]
    first = subprocess.Popen(
        [*argv, "sleep 1; echo one"], env=tachi_daemon.env, stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.2)
    second = subprocess.Popen(
        [*argv, "echo two"], env=tachi_daemon.env, stdout=subprocess.PIPE, text=True
    )
    assert second.communicate(timeout=20)[0] == "two\n"
    assert first.communicate(timeout=20)[0] == "one\n"
    screen = capture(tachi_daemon, sid)
    assert screen.index("one") < screen.index("echo two")


def test_exec_streams_stdout_and_stderr_apart_with_the_exit_code(tachi_daemon):
    result = tachi_daemon.run("exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    piped = tachi_daemon.run("exec", "--", "wc", "-l", input="a\nb\nc\n")
    assert piped.returncode == 0 and piped.stdout.strip() == "3"  # stdin's end reached wc
    merged = tachi_daemon.run("exec", "--pty", "--", "sh", "-c", "tty; echo e >&2")
    assert merged.stdout.startswith("/dev/pts/") and "e" in merged.stdout
    timed = tachi_daemon.run("exec", "--timeout", "0.5", "--", "sleep", "5")
    assert timed.returncode == 124
    missing = tachi_daemon.run("exec", "--", "/no/such/program")
    assert missing.returncode == 2 and missing.stderr.startswith("tachi: cannot start")
    audit = json.loads(tachi_daemon.run("audit", "--json", check=True).stdout)
    starts = [r for r in audit if r["action"] == "exec.start"]
    exits = [r["details"]["exitCode"] for r in audit if r["action"] == "exec.exit"]
    assert starts[0]["details"]["command"] == ["sh", "-c", "echo out; echo err >&2; exit 3"]
    assert exits[:2] == [3, 0]


def test_exec_forwards_ctrl_c(tachi_daemon):
    argv = tachi_daemon.tachi_argv(
        "exec", "--", "sh", "-c", "trap 'echo got-int; exit 42' INT; echo ready; sleep 30"
    )
    child = pexpect.spawn(argv[0], argv[1:], env=tachi_daemon.env, timeout=15)
    child.expect("ready")
    time.sleep(0.2)  # as a person would: Ctrl-C comes after the output, not with it
    child.kill(signal.SIGINT)
    child.expect("got-int")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 42


def test_an_observer_may_not_exec_and_is_audited(tachi_daemon):
    s = tachi_daemon.new("sleep", "60")
    grant = json.loads(
        tachi_daemon.run("share", s["id"], "--role", "observer", "--json", check=True).stdout
    )
    result = tachi_daemon.run("exec", "--", "id", env={"TACHI_TOKEN": grant["token"]})
    assert result.returncode == 4
    audit = json.loads(tachi_daemon.run("audit", "--json", check=True).stdout)
    assert any(r["action"] == "exec" and r["result"] == "denied" for r in audit)


def test_events_arrive_in_order(tachi_daemon):
    with events_json(tachi_daemon) as proc:
        sid = _shell(tachi_daemon, "bash")
        for i in range(20):
            tachi_daemon.run("run", sid, "--", f"(exit {i % 3})", check=False)
        tachi_daemon.run("close", sid, check=True)
        events = events_until_closed(proc, 20)
    types = [e["type"] for e in events]
    assert types[0] == "created" and types[-1] == "closed"
    finished = [e["exitCode"] for e in events if e["type"] == "command-finished"]
    assert finished[-20:] == [i % 3 for i in range(20)]
    times = [e["time"] for e in events]
    assert times == sorted(times)


@pytest.mark.xdist_group("heavy")
def test_a_slow_event_subscriber_is_dropped_without_slowing_the_daemon(tachi_daemon):
    from tachi.client.wire import WireConnection

    flood = tachi_daemon.new("bash", "--norc", "-c", "read x; seq 1 400000; sleep 60")
    wire = WireConnection(tachi_daemon.socket, autostart=False)
    try:
        wire.call("events.subscribe", {"session": flood["id"], "output": True})
        tachi_daemon.run("send", flood["id"], "\\n", check=True)
        # Never read while ~2.6 MB of output go by: the daemon carries on.
        until(lambda: "400000" in capture(tachi_daemon, flood["id"]), timeout=30)
        dropped = False
        deadline = time.monotonic() + 20
        while not dropped and time.monotonic() < deadline:
            frame = wire.next_frame(timeout=5)
            if frame is not None and frame.channel == 2:
                dropped = json.loads(frame.payload).get("event") == "events.dropped"
        assert dropped
    finally:
        wire.close()
    assert tachi_daemon.run("ls", check=True).returncode == 0


def test_exec_can_be_recorded_for_asciinema(tachi_daemon, tmp_path):
    result = tachi_daemon.run("exec", "--record", "--", "sh", "-c", "echo rec-$((6*7))")
    assert result.returncode == 0 and result.stdout == "rec-42\n"
    (rec,) = json.loads(tachi_daemon.run("record", "ls", "--json", check=True).stdout)
    assert rec["sessionId"].startswith("exec-") and not rec["active"]
    out = tmp_path / "exec.cast"
    tachi_daemon.run("record", "export", rec["id"], "-o", str(out), check=True)
    played = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "asciinema"), "cat", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert played.returncode == 0 and "rec-42" in played.stdout
