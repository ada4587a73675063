"""Listeners on a running daemon (issue 29) and after a crash (issue 28).

A WebSocket listener is added to, removed from and reloaded into a daemon that
runs a session, over real connections on 127.0.0.1: the session keeps its
process and its output all along. A daemon that was listening and is killed
with SIGKILL comes back, started by ``tachi ls``, listening where it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect
from ws_support import Remote, hello

from tachi.testing import DaemonProcess

PLUGINS = {"TACHI_LOAD_PLUGINS": "websocket"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon(tachi_home: Path) -> Iterator[DaemonProcess]:
    """A daemon with the WebSocket plugin loaded and no listener; stopped by the
    CLI afterwards (it reaches a daemon that ``tachi ls`` started, too)."""
    d = DaemonProcess(tachi_home, extra_env=PLUGINS)
    d.start()
    try:
        yield d
    finally:
        d.run("daemon", "stop", timeout=30)
        d.stop()


def answers(url: str, token: str) -> bool:
    """Whether a tachi daemon answers the hello of a WebSocket client at ``url``
    with this token; ``False`` if the connection is refused."""
    ctx = None
    if url.startswith("wss"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        ws = connect(url + "/ws", ssl=ctx, proxy=None, open_timeout=10)
    except ConnectionRefusedError:
        return False
    with ws:
        reply = hello(ws, token)
    assert reply.get("ok"), reply
    return True


def token(d: DaemonProcess) -> str:
    return str(json.loads(d.run("token", "create", "--json", check=True).stdout)["token"])


def listeners(d: DaemonProcess) -> list[dict]:
    out = d.run("daemon", "listeners", "--json", check=True).stdout
    return [x for x in json.loads(out) if x["transport"] == "websocket"]


def session_pid(d: DaemonProcess, sid: str) -> int:
    got = json.loads(d.run("get", sid, "--json", check=True).stdout)
    return int(got["windows"][0]["pid"])


def wait_for(d: DaemonProcess, sid: str, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = d.run("capture", sid, check=True).stdout
        if text in screen:
            return screen
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not on the screen of {sid}:\n{screen}")


def echo(d: DaemonProcess, sid: str, word: str) -> None:
    d.run("send", sid, f"{word}\\n", check=True)
    wait_for(d, sid, word)


def test_a_listener_added_to_a_running_daemon_serves_and_goes_without_touching_a_session(
    daemon: DaemonProcess,
) -> None:
    s = daemon.new("cat", name="busy")
    pid = session_pid(daemon, s["id"])
    echo(daemon, s["id"], "before-listen")
    port = free_port()

    added = daemon.run("daemon", "listen", f"127.0.0.1:{port}")
    assert added.returncode == 0, added.stderr
    assert added.stderr.startswith(f"listening on wss://127.0.0.1:{port} (certificate SHA256:")
    (listener,) = listeners(daemon)
    assert listener["source"] == "added" and listener["url"] == f"wss://127.0.0.1:{port}"

    # The remote CLI reaches the session through the new listener.
    remote = Remote(daemon, listener["url"], listener["fingerprint"], token(daemon))
    sent = remote.run("send", s["id"], "through-websocket\\n")
    assert sent.returncode == 0, sent.stderr
    wait_for(daemon, s["id"], "through-websocket")
    # A share link now points at it.
    shared = daemon.run("share", s["id"], "--role", "observer", "--json", check=True).stdout
    assert f"https://127.0.0.1:{port}/s/{s['id']}" in shared

    removed = daemon.run("daemon", "unlisten", f"127.0.0.1:{port}")
    assert removed.returncode == 0, removed.stderr
    assert f"stopped listening on wss://127.0.0.1:{port}" in removed.stderr
    assert not answers(listener["url"], remote.token)
    assert listeners(daemon) == []
    again = daemon.run("daemon", "unlisten", f"127.0.0.1:{port}")
    assert again.returncode != 0 and f"no listener on 127.0.0.1:{port}" in again.stderr

    # The session never noticed: the same process, its output, still typing.
    assert session_pid(daemon, s["id"]) == pid
    echo(daemon, s["id"], "after-unlisten")
    screen = daemon.run("capture", s["id"], check=True).stdout
    assert screen.index("before-listen") < screen.index("through-websocket")
    assert screen.index("through-websocket") < screen.index("after-unlisten")


def test_daemon_start_listen_on_a_running_daemon_adds_the_listener(daemon: DaemonProcess) -> None:
    s = daemon.new("cat")
    pid = session_pid(daemon, s["id"])
    port = free_port()
    started = daemon.run("daemon", "start", "--listen", f"127.0.0.1:{port}")
    assert started.returncode == 0, started.stderr
    assert "already running" in started.stderr
    assert f"listening on wss://127.0.0.1:{port}" in started.stderr
    assert answers(f"wss://127.0.0.1:{port}", token(daemon))
    assert session_pid(daemon, s["id"]) == pid


def test_reload_makes_the_listeners_those_of_the_config_and_a_bad_config_changes_nothing(
    daemon: DaemonProcess,
) -> None:
    config = daemon.home / "config.toml"
    s = daemon.new("cat")
    pid = session_pid(daemon, s["id"])
    tok = token(daemon)
    one, two, kept = free_port(), free_port(), free_port()

    config.write_text(f'[transports.websocket]\nlisten = "127.0.0.1:{one}"\n')
    loaded = daemon.run("daemon", "reload")
    assert loaded.returncode == 0, loaded.stderr
    assert f"listening on ws://127.0.0.1:{one}" in loaded.stderr
    assert answers(f"ws://127.0.0.1:{one}", tok)
    assert [x["source"] for x in listeners(daemon)] == ["config"]
    assert daemon.run("daemon", "listen", f"127.0.0.1:{kept}").returncode == 0

    # Moved in the file: the old address stops, the new one serves.
    config.write_text(f'[transports.websocket]\nlisten = "127.0.0.1:{two}"\n')
    moved = daemon.run("daemon", "reload")
    assert moved.returncode == 0, moved.stderr
    assert f"stopped listening on ws://127.0.0.1:{one}" in moved.stderr
    assert not answers(f"ws://127.0.0.1:{one}", tok)
    assert answers(f"ws://127.0.0.1:{two}", tok)

    # A file that does not parse, a bad setting, a plugin nobody loaded, an
    # address taken: one line each, and nothing changed.
    before = listeners(daemon)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken:
        for text, expect in [
            ("[transports.websocket\n", "invalid TOML"),
            (f'[transports.websocket]\nlisten = "127.0.0.1:{one}"\ntls = "maybe"\n', "tls"),
            ('[transports.nosuch]\nlisten = "127.0.0.1:1"\n', "no loaded plugin"),
            (
                f'[transports.websocket]\nlisten = "127.0.0.1:{taken.getsockname()[1]}"\n',
                "cannot listen",
            ),
        ]:
            config.write_text(text)
            bad = daemon.run("daemon", "reload")
            assert bad.returncode in (1, 2), (text, bad.stderr)
            assert expect in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
            assert listeners(daemon) == before
    assert answers(f"ws://127.0.0.1:{two}", tok)
    assert not answers(f"ws://127.0.0.1:{one}", tok)

    # Gone from the file: the config's listener stops, the added one stays.
    config.write_text("")
    emptied = daemon.run("daemon", "reload")
    assert emptied.returncode == 0, emptied.stderr
    assert not answers(f"ws://127.0.0.1:{two}", tok)
    assert answers(f"wss://127.0.0.1:{kept}", tok)
    assert [x["source"] for x in listeners(daemon)] == ["added"]
    assert session_pid(daemon, s["id"]) == pid
    echo(daemon, s["id"], "still-here")
    audit = (daemon.state_dir / "audit" / "audit.jsonl").read_text()
    records = [json.loads(line) for line in audit.splitlines()]
    reloads = [r for r in records if r["action"] == "daemon.reload"]
    assert [r["result"] for r in reloads] == ["allowed", "allowed", *["error"] * 4, "allowed"]


def _kill(pid: int) -> None:
    fd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([fd], [], [], 10)[0], f"tachid {pid} did not die"
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["start --listen", "daemon listen"])
def test_a_listener_comes_back_after_kill_9_and_an_auto_start(tachi_home: Path, how: str) -> None:
    d = DaemonProcess(tachi_home, extra_env=PLUGINS)
    port = free_port()
    url = f"wss://127.0.0.1:{port}"
    try:
        if how == "start --listen":
            started = d.run("daemon", "start", "--listen", f"127.0.0.1:{port}")
            assert started.returncode == 0, started.stderr
        else:
            d.run("daemon", "start", check=True)
            d.run("daemon", "listen", f"127.0.0.1:{port}", check=True)
        s = d.new("cat")
        pid = session_pid(d, s["id"])
        tok = token(d)
        assert answers(url, tok)
        status = json.loads(d.run("daemon", "status", "--json", check=True).stdout)

        _kill(status["pid"])
        assert not answers(url, tok)
        listed = d.run("ls", "--json", timeout=60)  # starts a daemon, which adopts
        assert listed.returncode == 0, listed.stderr
        assert [x["id"] for x in json.loads(listed.stdout)] == [s["id"]]

        assert answers(url, tok)
        (listener,) = listeners(d)
        assert listener["url"] == url and listener["source"] == "added"
        assert session_pid(d, s["id"]) == pid
        echo(d, s["id"], "after-crash")
    finally:
        d.run("daemon", "stop", timeout=30)
        with contextlib.suppress(Exception):
            d.end_keeper()


def test_a_clean_stop_forgets_added_listeners(tachi_home: Path) -> None:
    d = DaemonProcess(tachi_home, extra_env=PLUGINS)
    port = free_port()
    try:
        d.run("daemon", "start", "--listen", f"127.0.0.1:{port}", check=True)
        d.run("daemon", "stop", check=True)
        d.run("daemon", "start", check=True)
        assert listeners(d) == []
    finally:
        d.run("daemon", "stop", timeout=30)


def test_restart_keeps_added_and_config_listeners_once_each(daemon: DaemonProcess) -> None:
    added, configured = free_port(), free_port()
    (daemon.home / "config.toml").write_text(
        f'[transports.websocket]\nlisten = "127.0.0.1:{configured}"\n'
    )
    daemon.run("daemon", "reload", check=True)
    daemon.run("daemon", "listen", f"127.0.0.1:{added}", check=True)
    s = daemon.new("cat")
    pid = session_pid(daemon, s["id"])
    restarted = daemon.run("daemon", "restart", timeout=60)
    assert restarted.returncode == 0, restarted.stderr
    tok = token(daemon)
    assert answers(f"wss://127.0.0.1:{added}", tok)
    assert answers(f"ws://127.0.0.1:{configured}", tok)
    assert sorted((x["url"], x["source"]) for x in listeners(daemon)) == sorted(
        [(f"wss://127.0.0.1:{added}", "added"), (f"ws://127.0.0.1:{configured}", "config")]
    )
    assert session_pid(daemon, s["id"]) == pid


def test_a_listener_that_cannot_start_after_a_crash_loses_no_session(tachi_home: Path) -> None:
    port = free_port()
    d = DaemonProcess(
        tachi_home,
        extra_env=PLUGINS,
        config=f'[transports.websocket]\nlisten = "127.0.0.1:{port}"\n',
    )
    d.start()
    try:
        s = d.new("cat")
        pid = session_pid(d, s["id"])
        d.kill()
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with squatter:  # someone took the port while no daemon ran
            refused = d.run("ls", timeout=60)
            assert refused.returncode == 1 and "cannot listen" in refused.stderr
            assert Path(f"/proc/{pid}").exists()
        listed = d.run("ls", "--json", timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert [x["id"] for x in json.loads(listed.stdout)] == [s["id"]]
        assert session_pid(d, s["id"]) == pid
        echo(d, s["id"], "kept-by-the-keeper")
        assert answers(f"ws://127.0.0.1:{port}", token(d))
    finally:
        d.run("daemon", "stop", timeout=30)
        d.stop()
