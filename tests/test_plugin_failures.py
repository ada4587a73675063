"""A third-party plugin can neither take the daemon down nor open it up.

Each scenario installs a real plugin (a distribution with a ``tachi`` entry
point), starts a real daemon that loads it, and drives it with the real CLI: a
plugin that raises, answers nonsense, refuses the daemon's own user or blocks
is named in the log, its failure or refusal is audited, and the daemon's own
user still gets in and can stop the daemon.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import installed_plugin
from tachi.audit import read_records
from tachi.testing import DaemonProcess


@contextlib.contextmanager
def daemon_with(home: Path, site: Path, plugins: dict[str, str]) -> Iterator[DaemonProcess]:
    """A real daemon that loads the given installed plugins (name -> source)."""
    env: dict[str, str] = {}
    for name, source in plugins.items():
        env = installed_plugin(site, name, source)
    daemon = DaemonProcess(home, extra_env={**env, "TACHI_LOAD_PLUGINS": ",".join(plugins)})
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def audit_records(daemon: DaemonProcess) -> list[dict]:
    return list(read_records(daemon.state_dir / "audit" / "audit.jsonl"))


def log_lines(daemon: DaemonProcess, *needles: str) -> list[str]:
    return [line for line in daemon.log.read_text().splitlines() if all(n in line for n in needles)]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def stopped_by_the_cli(daemon: DaemonProcess) -> subprocess.CompletedProcess[str]:
    result = daemon.run("daemon", "stop")
    assert daemon.proc is not None
    daemon.proc.wait(10)
    return result


RAISES = """
import tachi

@tachi.hookimpl(tryfirst=True)
def tachi_authenticate(peer):
    raise RuntimeError("identity provider unreachable")
"""

GARBAGE = """
import tachi

@tachi.hookimpl(tryfirst=True)
def tachi_authenticate(peer):
    return "root"
"""

REFUSES = """
import tachi
from tachi.errors import PermissionDenied

@tachi.hookimpl(tryfirst=True)
def tachi_authenticate(peer):
    raise PermissionDenied("nobody gets in today")
"""


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (RAISES, "RuntimeError: identity provider unreachable"),
        (GARBAGE, "returned 'root', not a Principal or None"),
        (REFUSES, "nobody gets in today"),
    ],
    ids=["raises", "garbage", "refuses"],
)
def test_a_broken_authenticator_never_locks_the_daemons_own_user_out(
    tachi_home, tmp_path, source, why
):
    with daemon_with(tachi_home, tmp_path / "site", {"gatekeeper": source}) as daemon:
        for _ in range(3):
            listed = daemon.run("ls")
            assert listed.returncode == 0, listed.stderr
        session = daemon.new("sleep", "60")
        assert session["userId"] == pwd.getpwuid(os.getuid()).pw_name
        if source is REFUSES:
            overridden = [
                r
                for r in audit_records(daemon)
                if r["action"] == "auth" and (r.get("details") or {}).get("plugin") == "gatekeeper"
            ]
            assert overridden and why in overridden[0]["reason"]
        else:
            # One line in the log, naming the plugin and the hook, however many
            # connections it failed.
            lines = log_lines(daemon, "plugin gatekeeper failed in tachi_authenticate")
            assert len(lines) == 1 and why in lines[0]
            failures = [r for r in audit_records(daemon) if r["action"] == "plugin.error"]
            assert failures and failures[0]["details"] == {
                "plugin": "gatekeeper",
                "hook": "tachi_authenticate",
            }
        stop = stopped_by_the_cli(daemon)
        assert stop.returncode == 0, stop.stderr
        assert "tachid stopped (1 session closed)" in stop.stderr


ROBOTS = """
import tachi
from tachi.core.principal import Principal

@tachi.hookimpl
def tachi_authenticate(peer):
    return Principal(user="robot-7", uid=None, source=peer.source, kind="robot")

@tachi.hookimpl
def tachi_authorize(principal, action, session):
    return True if principal.kind == "robot" else None
"""


def test_a_garbage_answer_does_not_hide_another_plugins_answer(tachi_home, tmp_path):
    plugins = {"garbage": GARBAGE, "robots": ROBOTS}
    with daemon_with(tachi_home, tmp_path / "site", plugins) as daemon:
        session = daemon.new("sleep", "60")
        assert session["userId"] == "robot-7"
        assert len(log_lines(daemon, "plugin garbage failed in tachi_authenticate")) == 1


FRIDAYS = """
import tachi
from tachi.errors import PermissionDenied

@tachi.hookimpl
def tachi_authorize(principal, action, session):
    if action == "session.signal":
        raise PermissionDenied("no signals on Fridays")
    return None
"""


def test_a_plugins_denial_is_audited_with_its_reason_and_its_name(tachi_home, tmp_path):
    with daemon_with(tachi_home, tmp_path / "site", {"fridays": FRIDAYS}) as daemon:
        session = daemon.new("sleep", "60")
        result = daemon.run("signal", session["id"], "INT")
        assert result.returncode == 4 and "no signals on Fridays" in result.stderr
        denied = [
            r
            for r in audit_records(daemon)
            if r["action"] == "session.signal" and r["result"] == "denied"
        ]
        assert len(denied) == 1
        assert denied[0]["reason"] == "no signals on Fridays"
        assert denied[0]["details"] == {"plugin": "fridays", "principalKind": "unix"}
        assert denied[0]["session"] == session["id"]


BROKEN_POLICY = """
import tachi

@tachi.hookimpl
def tachi_authorize(principal, action, session):
    raise KeyError(action)
"""


def test_a_failing_authorizer_denies_but_the_owner_can_still_stop_the_daemon(tachi_home, tmp_path):
    with daemon_with(tachi_home, tmp_path / "site", {"broken": BROKEN_POLICY}) as daemon:
        for _ in range(3):
            listed = daemon.run("new", "-d", "--", "sleep", "60")
            assert listed.returncode == 4, listed.stderr  # fails closed
            assert "internal" not in listed.stderr
        assert len(log_lines(daemon, "plugin broken failed in tachi_authorize", "KeyError")) == 1
        denied = [r for r in audit_records(daemon) if r["action"] == "session.create"]
        assert len(denied) == 3 and all(r["result"] == "denied" for r in denied)
        assert denied[0]["details"] == {"plugin": "broken", "principalKind": "unix"}
        assert "plugin broken failed" in denied[0]["reason"]
        stop = stopped_by_the_cli(daemon)
        assert stop.returncode == 0, stop.stderr
        overridden = [r for r in audit_records(daemon) if r["action"] == "daemon.stop"]
        assert overridden[0]["result"] == "allowed" and "overridden" in overridden[0]["reason"]


SLOW_POLICY = """
import time
import tachi

@tachi.hookimpl
def tachi_authorize(principal, action, session):
    if action == "session.signal":
        time.sleep(1.5)
        return True
    return None
"""


def test_an_authorizer_over_its_deadline_denies_and_is_named(tachi_home, tmp_path):
    with daemon_with(tachi_home, tmp_path / "site", {"sluggish": SLOW_POLICY}) as daemon:
        session = daemon.new("sleep", "60")
        result = daemon.run("signal", session["id"], "INT")
        assert result.returncode == 4, result.stderr
        lines = log_lines(daemon, "plugin sluggish failed in tachi_authorize", "deadline")
        assert len(lines) == 1
        denied = [r for r in audit_records(daemon) if r["action"] == "session.signal"]
        assert denied[0]["result"] == "denied"
        assert denied[0]["details"] == {"plugin": "sluggish", "principalKind": "unix"}


BLOCKING_SINK = """
import os
import time
import tachi

@tachi.hookimpl
def tachi_audit_event(event):
    if event["action"] != "session.create":
        return
    marks = os.environ["BLOCKING_SINK_DIR"]
    open(os.path.join(marks, "blocked"), "w").close()
    # Slow whatever happens next: a release that came within the 100 ms after
    # which a slow hook is logged would leave nothing to log (the test failed so).
    time.sleep(0.5)
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(marks, "release")) and time.monotonic() < deadline:
        time.sleep(0.02)
"""


def test_a_blocking_audit_sink_does_not_freeze_the_daemon(tachi_home, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    site = tmp_path / "site"
    env = installed_plugin(site, "shipper", BLOCKING_SINK)
    daemon = DaemonProcess(
        tachi_home,
        extra_env={**env, "TACHI_LOAD_PLUGINS": "shipper", "BLOCKING_SINK_DIR": str(marks)},
    )
    daemon.start()
    try:
        # The session is created while the sink blocks on its record...
        new = daemon.run("new", "-d", "--json", "--", "sleep", "60", timeout=10)
        assert new.returncode == 0, new.stderr
        assert wait_for((marks / "blocked").exists)
        # ...and another client is served while it still does.
        listed = daemon.run("ls", "--json", timeout=10)
        assert listed.returncode == 0 and '"sleep"' in listed.stdout
        assert not (marks / "release").exists()
        (marks / "release").touch()
        assert wait_for(lambda: log_lines(daemon, "plugin shipper took", "tachi_audit_event"))
    finally:
        (marks / "release").touch()
        daemon.stop()


FAKE_DAEMON = """
import socket, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(8)
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.close()  # alive, but answers nobody
"""


def test_daemon_stop_never_says_not_running_while_the_daemon_is_alive(tachi_home):
    socket_path = tachi_home / "s.sock"
    alive = subprocess.Popen(
        [sys.executable, "-c", FAKE_DAEMON, str(socket_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert alive.stdout is not None and alive.stdout.readline() == "listening\n"
        result = subprocess.run(
            [sys.executable, "-m", "tachi", "daemon", "stop", "--timeout", "5"],
            env={**os.environ, "TACHI_HOME": str(tachi_home), "TACHI_SOCKET": str(socket_path)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "not running" not in result.stderr
        # What failed: the connection was closed (or reset) before any answer.
        assert re.search(
            rf"\(pid {alive.pid}\) is running but did not answer: .*connection", result.stderr
        )
        assert alive.wait(5) == -15  # stopped as tachid is on SIGTERM
        assert result.returncode == 0 and "tachid stopped" in result.stderr
    finally:
        if alive.poll() is None:
            alive.kill()
            alive.wait(5)
