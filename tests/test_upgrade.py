"""``tachi daemon upgrade`` (issue 28): move a running daemon and its session
keeper to newly installed code without losing a session, or change nothing.

The "installed code" is a copy of the tachi package on PYTHONPATH (ahead of
the editable install), whose version and keeper code the test changes, as
``pip install -U`` would; the real tree is never touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import capture, surviving_daemon, until, wait_match
from tachi.keeper import keeper_socket
from tachi.testing import DaemonProcess

TACHI = Path(__file__).resolve().parent.parent / "tachi"


@pytest.fixture
def installed(tmp_path):
    """A copy of the tachi package, importable first."""
    site = tmp_path / "site"
    shutil.copytree(TACHI, site / "tachi", ignore=shutil.ignore_patterns("__pycache__"))
    return site


@pytest.fixture
def daemon(tachi_home, installed):
    with surviving_daemon(tachi_home, extra_env={"PYTHONPATH": str(installed)}) as d:
        yield d


def keeper_ping(daemon: DaemonProcess) -> dict:
    from tachi.core.keeper_link import keeper_request

    return keeper_request(daemon.socket, {"op": "ping"})


def status(daemon: DaemonProcess) -> dict:
    return json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)


def pids(daemon: DaemonProcess) -> list[int]:
    listed = json.loads(daemon.run("ls", "--json", check=True).stdout)
    return sorted(w["pid"] for s in listed for w in s["windows"])


def test_upgrade_moves_daemon_and_keeper_to_the_new_code_keeping_every_session(daemon, installed):
    shell = daemon.new("bash", "--norc", "--noprofile", "-i")
    sleeper = daemon.new("sleep", "300")
    before = pids(daemon)
    assert before == sorted([shell["windows"][0]["pid"], sleeper["windows"][0]["pid"]])
    daemon.run("send", shell["id"], r"echo before-$((20+1))\r", check=True)
    wait_match(daemon, shell["id"], "before-21")
    old = status(daemon)
    assert old["version"] == "0.1.0"
    keeper = keeper_ping(daemon)
    assert keeper["code"] == keeper["disk"]

    # "pip install -U": a new version, and new keeper code.
    init = installed / "tachi" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.2.0"'))
    with (installed / "tachi" / "keeper" / "__main__.py").open("a") as f:
        f.write("\n# 0.2.0\n")
    assert keeper_ping(daemon)["code"] != keeper_ping(daemon)["disk"]

    result = daemon.run("daemon", "upgrade", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "0.1.0 -> 0.2.0" in result.stderr and "2 sessions kept" in result.stderr
    assert "re-executed" in result.stderr and " ms without service" in result.stderr

    new = status(daemon)
    assert new["version"] == "0.2.0" and new["pid"] != old["pid"]
    # The keeper is the same process (still the sessions' parent) on the new code.
    after = keeper_ping(daemon)
    assert after["pid"] == keeper["pid"] and after["code"] == after["disk"] != keeper["code"]
    assert pids(daemon) == before
    assert "before-21" in capture(daemon, shell["id"])
    daemon.run("send", shell["id"], r"echo after-$((40+2))\r", check=True)
    wait_match(daemon, shell["id"], "after-42")
    # The re-executed keeper still spawns and reaps.
    fresh = daemon.new("sh", "-c", "exit 5")
    until(lambda: json.loads(daemon.run("get", fresh["id"], "--json").stdout)["state"] == "closed")
    got = json.loads(daemon.run("get", fresh["id"], "--json").stdout)
    assert got["exitCode"] == 5


def test_an_upgrade_to_code_that_does_not_start_changes_nothing(daemon, installed):
    s = daemon.new("sleep", "300")
    old = status(daemon)
    keeper = keeper_ping(daemon)
    broken = installed / "tachi" / "daemon" / "session_ops.py"
    broken.write_text(broken.read_text() + "\nraise RuntimeError('a broken release')\n")
    with (installed / "tachi" / "keeper" / "__main__.py").open("a") as f:
        f.write("\n# changed too\n")

    result = daemon.run("daemon", "upgrade", timeout=120)
    assert result.returncode == 1
    assert "nothing was changed" in result.stderr and "a broken release" in result.stderr
    # The same daemon serves, the keeper runs its old code, the session is there.
    assert status(daemon)["pid"] == old["pid"]
    assert keeper_ping(daemon)["code"] == keeper["code"]
    assert pids(daemon) == [s["windows"][0]["pid"]]
    assert Path(keeper_socket(daemon.socket)).exists()
