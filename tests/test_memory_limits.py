"""No request can take the daemon down by memory: sizes are bounded, and when
screen memory runs out one session is refused while the others live on."""

from __future__ import annotations

import json

import pytest

from helpers import get
from tachi.config import _from_raw
from tachi.core.screen_budget import ScreenBudget, window_cost
from tachi.errors import Conflict, InvalidRequest
from tachi.testing import DaemonProcess

FLOOD = ["sh", "-c", "base64 -w 997 /dev/urandom | head -c 3000000; exec sleep 300"]


def test_a_huge_size_is_refused_and_the_daemon_lives_on(tachi_daemon):
    survivor = tachi_daemon.new("sleep", "300")
    for flags in (["--rows", "65535", "--cols", "65535"], ["--rows", "24", "--cols", "1001"]):
        refused = tachi_daemon.run("new", "-d", *flags, "--", "true")
        assert refused.returncode == 2
        assert refused.stderr.startswith("tachi: ") and refused.stderr.count("\n") == 1
    resize = tachi_daemon.run("resize", survivor["id"], "--rows", "501", "--cols", "80")
    assert resize.returncode == 2 and "1<=x<=500" in resize.stderr  # the CLI says the limit
    with tachi_daemon.client() as client, pytest.raises(InvalidRequest, match="between 1 and 500"):
        client.call("session.resize", session=survivor["id"], size={"rows": 501, "cols": 80})
    assert get(tachi_daemon, survivor["id"])["state"] == "suspended"
    assert tachi_daemon.proc is not None and tachi_daemon.proc.poll() is None


def test_out_of_memory_refuses_one_session_not_all(tachi_home):
    # Like `prlimit --as=300M tachid`: without the screen budget the emulator's
    # allocator aborts the whole daemon at about the tenth window.
    daemon = DaemonProcess(tachi_home, address_space=300 << 20)
    daemon.start()
    try:
        made = []
        for _ in range(30):
            result = daemon.run(
                "new", "-d", "--json", "--rows", "500", "--cols", "1000", "--", *FLOOD
            )
            if result.returncode != 0:
                break
            made.append(json.loads(result.stdout)["id"])
        else:
            raise AssertionError("30 maximum-size windows fit in 300 MB?")
        assert made, result.stderr
        assert result.returncode == 1
        assert "not enough memory for a window of 1000x500" in result.stderr
        assert result.stderr.count("\n") == 1
        # Every earlier session is alive and its screen readable.
        for sid in made:
            assert get(daemon, sid)["state"] != "closed"
            assert daemon.run("capture", sid).returncode == 0
        # A small session still fits; closing a big one frees its share.
        assert daemon.run("new", "-d", "--rows", "24", "--cols", "80", "--", "true").returncode == 0
        daemon.run("close", made[0], check=True)
        again = None
        for _ in range(50):
            again = daemon.run("new", "-d", "--rows", "500", "--cols", "1000", "--", *FLOOD)
            if again.returncode == 0:
                break
        assert again is not None and again.returncode == 0, again.stderr
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.stop()


def test_the_budget_is_all_or_nothing():
    small = window_cost(500, 250, 0)
    budget = ScreenBudget(limit=small * 3)
    budget.reserve(["a", "b"], 500, 250, 0)
    try:
        budget.reserve(["a", "b"], 1000, 500, 0)
    except Conflict as exc:
        assert "2 windows of 1000x500" in str(exc)
    else:
        raise AssertionError("a resize past the budget was allowed")
    assert budget.used == small * 2  # unchanged
    budget.release("a")
    budget.reserve(["c", "d"], 500, 250, 0)
    assert budget.used == small * 3


def test_screen_memory_setting():
    assert _from_raw({"limits": {"screen_memory": "512MiB"}}).screen_memory == 512 << 20
    assert _from_raw({"limits": {"screen_memory": "2G"}}).screen_memory == 2 << 30
    for bad in ("lots", "12k", -1):
        try:
            _from_raw({"limits": {"screen_memory": bad}})
        except ValueError as exc:
            assert "limits.screen_memory" in str(exc)
        else:
            raise AssertionError(f"accepted {bad!r}")
