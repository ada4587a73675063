"""Resize and signals reach the program as a terminal would deliver them."""

from __future__ import annotations

import pytest

from helpers import SHELL, get, wait_match


def test_resize_is_seen_by_stty_size(tachi_daemon):
    s = tachi_daemon.new(*SHELL, rows=24, cols=80)
    tachi_daemon.run("send", s["id"], r"stty size\n", check=True)
    wait_match(tachi_daemon, s["id"], r"^24 80$")
    tachi_daemon.run(
        "resize",
        s["id"],
        "--rows",
        "33",
        "--cols",
        "111",
        "--xpixel",
        "888",
        "--ypixel",
        "660",
        check=True,
    )
    tachi_daemon.run("send", s["id"], r"stty size\n", check=True)
    wait_match(tachi_daemon, s["id"], r"^33 111$")
    pty = get(tachi_daemon, s["id"])["pty"]
    assert (pty["rows"], pty["cols"], pty["xPixel"], pty["yPixel"]) == (33, 111, 888, 660)


def test_resize_delivers_sigwinch_to_a_program_that_traps_it(tachi_daemon):
    script = "trap 'echo \"WINCH $(stty size)\"' WINCH; echo ready; while :; do sleep 0.05; done"
    s = tachi_daemon.new("bash", "--norc", "-c", script)
    wait_match(tachi_daemon, s["id"], "ready")
    tachi_daemon.run("resize", s["id"], "--rows", "20", "--cols", "70", check=True)
    wait_match(tachi_daemon, s["id"], "WINCH 20 70")


@pytest.mark.parametrize("sig", ["INT", "SIGINT", "2"])
def test_sigint_reaches_a_trapping_program(tachi_daemon, sig):
    s = tachi_daemon.new(
        "bash", "--norc", "-c", "trap 'echo GOT-INT' INT; echo ready; while :; do sleep 0.05; done"
    )
    wait_match(tachi_daemon, s["id"], "ready")
    tachi_daemon.run("signal", s["id"], sig, check=True)
    wait_match(tachi_daemon, s["id"], "GOT-INT")


def test_signal_goes_to_the_foreground_process_group(tachi_daemon):
    # Like Ctrl-C: the foreground `sleep` dies, the interactive shell survives.
    s = tachi_daemon.new(*SHELL)
    tachi_daemon.run("send", s["id"], r"sleep 300\n", check=True)
    wait_match(tachi_daemon, s["id"], "sleep 300")
    tachi_daemon.run("signal", s["id"], "INT", check=True)
    tachi_daemon.run("send", s["id"], r"echo after=$?\n", check=True)
    wait_match(tachi_daemon, s["id"], "after=130")
    assert get(tachi_daemon, s["id"])["state"] != "closed"


def test_unknown_signal_is_refused_clearly(tachi_daemon):
    s = tachi_daemon.new("sleep", "300")
    result = tachi_daemon.run("signal", s["id"], "SIGBOGUS")
    assert result.returncode == 2 and "unknown signal 'SIGBOGUS'" in result.stderr
