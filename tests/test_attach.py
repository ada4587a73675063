"""`tachi attach` in a real terminal (pexpect): screen restore, typing, detach, sharing a view."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from helpers import SHELL, capture, get, spawn_attach, until, wait_match

PREFIX = "\x1c"  # Ctrl-\


def test_attach_shows_the_existing_screen_then_typing_works(tachi_daemon):
    s = tachi_daemon.new(*SHELL, name="earlier")
    tachi_daemon.run(
        "send", s["id"], r"printf '\\033[1;31mEARLIER\\033[0m-%s\\n' output\n", check=True
    )
    wait_match(tachi_daemon, s["id"], "EARLIER-output")

    child = spawn_attach(tachi_daemon, s["id"])
    # The snapshot comes with its colour: bold red as SGR parameters.
    child.expect(r"\x1b\[[0-9;]*31[0-9;]*mEARLIER")
    assert get(tachi_daemon, s["id"])["state"] == "active"
    child.send("echo typed-$((40+2))\r")
    child.expect("typed-42")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "[detached from session earlier]" in child.before.decode()  # its name, as given
    assert until(lambda: get(tachi_daemon, s["id"])["state"] == "suspended")


def test_prefix_twice_sends_the_prefix_through(tachi_daemon):
    s = tachi_daemon.new("cat", "-v")
    child = spawn_attach(tachi_daemon, s["id"])
    time.sleep(0.3)
    child.send(PREFIX + PREFIX + "x\r")
    child.expect(r"\^\\x")
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)


def _stty_script(daemon, session: str, outdir) -> list[str]:
    attach = " ".join(daemon.tachi_argv("attach", session))
    script = (
        f"stty -g > {outdir}/before; {attach}; echo rc=$? > {outdir}/rc; stty -g > {outdir}/after"
    )
    return ["bash", "--norc", "-c", script]


@pytest.mark.parametrize(
    "how", ["detach", "SIGTERM", "SIGHUP", "SIGINT", "session-exit", "daemon-gone"]
)
def test_terminal_is_restored_on_every_exit_path(tachi_daemon, tmp_path, how):
    s = tachi_daemon.new(*SHELL)
    argv = _stty_script(tachi_daemon, s["id"], tmp_path)
    child = pexpect.spawn(argv[0], argv[1:], env=tachi_daemon.env, dimensions=(30, 100), timeout=15)
    try:
        child.expect(r"\$|#", timeout=30)
    except pexpect.TIMEOUT:
        # Seen rarely in fresh CI runs under load: say what the daemon saw.
        info = get(tachi_daemon, s["id"])
        raise AssertionError(
            f"attach drew nothing in 30 s; daemon sees {info['clients']} client(s), "
            f"state {info['state']}; daemon log:\n{tachi_daemon.log.read_text()[-2000:]}"
        ) from None
    until(lambda: get(tachi_daemon, s["id"])["state"] == "active")
    if how == "detach":
        child.send(PREFIX + "d")
        expected = "rc=0"
    elif how == "session-exit":
        child.send("exit 3\r")
        expected = "rc=3"
    elif how == "daemon-gone":
        # Keeper first: with it alive, attach reconnects (tests/test_survival_attach.py).
        with tachi_daemon.client() as client:
            os.kill(client.status()["keeper"]["pid"], signal.SIGKILL)
        tachi_daemon.kill()
        expected = "rc=1"
    else:
        pattern = f"-m tachi attach {s['id']}$"  # not the bash -c that wraps it
        out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
        pid = int(out.split()[0])
        sig = getattr(signal, how)
        os.kill(pid, sig)
        expected = f"rc={128 + sig}"
    child.expect(pexpect.EOF)
    assert (tmp_path / "rc").read_text().strip() == expected
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()


def test_two_clients_see_the_same_output(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    one = spawn_attach(tachi_daemon, s["id"])
    two = spawn_attach(tachi_daemon, s["id"])
    until(lambda: get(tachi_daemon, s["id"])["clients"] == 2)
    one.send("echo from-one-$((1+1))\r")
    one.expect("from-one-2")
    two.expect("from-one-2")
    tachi_daemon.run("send", s["id"], r"echo from-script-$((2+1))\n", check=True)
    one.expect("from-script-3")
    two.expect("from-script-3")
    for child in (one, two):
        child.send(PREFIX + "d")
        child.expect(pexpect.EOF)


def test_read_only_clients_keystrokes_never_arrive(tachi_daemon):
    s = tachi_daemon.new(*SHELL, rows=30, cols=100)
    watcher = spawn_attach(tachi_daemon, s["id"], "--read-only", rows=50, cols=200)
    until(lambda: get(tachi_daemon, s["id"])["clients"] == 1)
    watcher.send("echo SHOULD-NOT-RUN\r")
    time.sleep(0.5)
    tachi_daemon.run("send", s["id"], r"echo sync-$((3*3))\n", check=True)
    watcher.expect("sync-9")  # the observer still sees output live
    screen = capture(tachi_daemon, s["id"])
    assert "SHOULD-NOT-RUN" not in screen
    # ... and never changes the size.
    pty = get(tachi_daemon, s["id"])["pty"]
    assert (pty["rows"], pty["cols"]) == (30, 100)
    watcher.send(PREFIX + "d")
    watcher.expect(pexpect.EOF)


def test_full_screen_program_comes_back_right(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    tachi_daemon.run("send", s["id"], r"echo before-vim\n", check=True)
    wait_match(tachi_daemon, s["id"], "^before-vim")
    tachi_daemon.run("send", s["id"], r"vim -u NONE -N\n", check=True)
    wait_match(tachi_daemon, s["id"], r"^~\s*$")
    child = spawn_attach(tachi_daemon, s["id"])
    child.expect(r"\x1b\[\?1047h|\x1b\[\?1049h")  # the snapshot enters the alternate screen
    child.send(PREFIX + "d")
    child.expect(pexpect.EOF)
    tachi_daemon.run("send", s["id"], r"\e:q!\n", check=True)
    wait_match(tachi_daemon, s["id"], "before-vim")
    screen = capture(tachi_daemon, s["id"])
    assert "before-vim" in screen and "~" not in screen


def test_attach_exit_status_follows_the_session(tachi_daemon):
    s = tachi_daemon.new(*SHELL)
    child = spawn_attach(tachi_daemon, s["id"])
    child.expect(r"[$#] ")
    child.send("exit 5\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5
    assert "exited with code 5" in child.before.decode()


def test_attach_without_a_terminal_is_a_clear_error(tachi_daemon):
    s = tachi_daemon.new("sleep", "300")
    result = subprocess.run(
        tachi_daemon.tachi_argv("attach", s["id"]),
        env=tachi_daemon.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1 and "needs a terminal" in result.stderr


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", None])
def test_keys_typed_while_attach_starts_reach_the_session_on_either_loop(tachi_home, loop):
    # The keys are typed before the client has put the terminal in raw mode:
    # they must be kept (TCSANOW), not flushed. On uvloop, whose transports are
    # not asyncio.Transport subclasses, the Unix socket's protocol once reset
    # every connection.
    from tachi.testing import DaemonProcess

    daemon = DaemonProcess(tachi_home, {"TACHI_EVENT_LOOP": loop} if loop else {})
    if loop is None:
        daemon.env.pop("TACHI_EVENT_LOOP", None)  # the default
    daemon.start()
    try:
        assert daemon.proc is not None
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        assert ("uvloop" in maps) == (loop != "asyncio")  # uvloop unless told otherwise
        s = daemon.new(*SHELL)
        child = spawn_attach(daemon, s["id"])
        child.send("echo typed-a''head\r")
        child.expect("typed-ahead")
        child.send("\x1cd")
        child.expect(pexpect.EOF)
    finally:
        daemon.stop()
