"""What a ``tachi run`` costs on its way (issue 27: as fast as the fastest
agent harness, bench/harness.py). No test here asserts how long anything
takes: each checks that a cost which sat on every run's path is gone."""

from __future__ import annotations

import re
import select
import shutil
import threading
from pathlib import Path

import tachi
from helpers import shell_session
from tachi.client.wire import WireConnection
from tachi.errors import TimedOut
from tachi.models import SessionRequest
from tachi.protocol import decode_control
from tachi.testing import inprocess_daemon

T = 20.0


def _bash(home: Path) -> SessionRequest:
    home.mkdir(exist_ok=True)
    (home / ".bashrc").write_text("PS1='my-prompt$ '\n")
    bash = shutil.which("bash")
    assert bash
    return SessionRequest(command=[bash], env={"HOME": str(home)})


def _patterns_naming(ident: str) -> list[object]:
    """Patterns in ``re``'s cache that hold ``ident``."""
    caches = [getattr(re, name, {}) for name in ("_cache", "_cache2")]
    return [
        key
        for cache in caches
        for key in list(cache)
        if isinstance(key, tuple) and len(key) > 1 and ident in repr(key[1])
    ]


async def test_runs_find_their_marks_without_a_pattern_of_their_own(tachi_home):
    """A run's start and end marks are found with patterns compiled once: a
    pattern per run (its id in it) missed ``re``'s cache every time and cost
    the daemon more than the rest of the run."""
    async with (
        inprocess_daemon(tachi_home) as daemon,
        await tachi.AsyncClient.connect(daemon.config.socket, autostart=False) as client,
    ):
        s = await client.create(_bash(tachi_home / "home"))
        ids = []
        for n in range(3):
            r = await client.run(s.id, f"echo run {n}", timeout=T)
            assert (r.output, r.exit_code) == (f"run {n}\n", 0)
            ids.append(r.run)
        assert all(ids) and len(set(ids)) == 3
        assert [p for ident in ids for p in _patterns_naming(ident)] == []


async def test_an_audit_record_no_plugin_ships_wakes_no_thread(tachi_home):
    """With no plugin implementing ``tachi_audit_event``, audited requests (a
    run among them) start no shipper thread: handing each record to one cost
    the daemon the GIL on every run's reply. A plugin that does implement it
    still gets every record."""
    name = "tachi-tachi_audit_event"
    before = {t.ident for t in threading.enumerate() if t.name == name}
    async with (
        inprocess_daemon(tachi_home) as daemon,
        await tachi.AsyncClient.connect(daemon.config.socket, autostart=False) as client,
    ):
        s = await client.create(_bash(tachi_home / "home"))
        r = await client.run(s.id, "echo audited", timeout=T)
        assert r.output == "audited\n"
        await client.close(s.id)
        started = {t.ident for t in threading.enumerate() if t.name == name} - before
        assert started == set()
        # Nor is each record copied for a listener nobody has.
        assert daemon.audit_log.on_event is None

    class Shipper:
        def __init__(self) -> None:
            self.actions: list[str] = []

        @tachi.hookimpl
        def tachi_audit_event(self, event):
            self.actions.append(event["action"])

    shipper = Shipper()
    async with (
        inprocess_daemon(tachi_home / "second", [shipper]) as daemon,
        await tachi.AsyncClient.connect(daemon.config.socket, autostart=False) as client,
    ):
        s = await client.create(_bash(tachi_home / "home"))
        await client.run(s.id, "true", timeout=T)
        await client.close(s.id)
    assert {"session.create", "session.run"} <= set(shipper.actions), shipper.actions


def test_a_silent_run_wakes_its_caller_only_at_the_end(tachi_daemon):
    """``run.started`` goes with the first output or the result, not when the
    line is typed: a caller woken for it while the command runs took a core
    from the shell and the daemon. Its order is kept: ``run.started`` first,
    then the output, then the reply; a run that times out still names itself."""
    sid = shell_session(tachi_daemon)
    with tachi_daemon.client() as client:
        client.run(sid, "true", timeout=T)  # the shell is up and integrated
    wire = WireConnection(tachi_daemon.socket, autostart=False)
    try:
        rid = wire.send_request(
            "session.run", {"session": sid, "command": "sleep 1; echo late", "stream": "s"}
        )
        # Nothing can come before the command ends, a second from now.
        readable, _, _ = select.select([wire.sock], [], [], 0.6)
        assert readable == []
        kinds = []
        while True:
            frame = wire.recv_frame(T)
            assert frame is not None
            message = decode_control(frame.payload)
            kinds.append(message.get("event") or ("reply" if message.get("id") == rid else "?"))
            if kinds[-1] == "reply":
                assert message["ok"] and message["result"]["exitCode"] == 0
                break
        assert kinds[0] == "run.started" and kinds[-1] == "reply", kinds
        assert set(kinds[1:-1]) == {"run.output"}, kinds
    finally:
        wire.close()
    with tachi_daemon.client() as client:
        try:
            client.run(sid, "sleep 5", timeout=0.5)
        except TimedOut as exc:
            assert exc.run and exc.run.startswith("tachi-")
            assert client.run_wait(exc.run, timeout=T).exit_code == 0
        else:
            raise AssertionError("a 5 s command finished within 0.5 s")


async def test_a_run_s_last_events_and_its_reply_go_out_in_one_write(tachi_home, monkeypatch):
    """A streamed run that ends sends its ``run.started`` (held for the first
    output or the end), what output is left and its reply in one write on a
    stream transport: the caller wakes once for them, not once for each."""
    from tachi.builtins import unix_socket
    from tachi.protocol import FrameDecoder

    writes: list[bytes] = []
    original = unix_socket.FrameProtocol.write

    def write(self: unix_socket.FrameProtocol, data: bytes) -> None:
        writes.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(unix_socket.FrameProtocol, "write", write)
    async with (
        inprocess_daemon(tachi_home / "d") as daemon,
        await tachi.AsyncClient.connect(daemon.config.socket, autostart=False) as client,
    ):
        s = await client.create(_bash(tachi_home / "home"))
        for command in ("true", "echo out"):
            writes.clear()
            result = await client.run(s.id, command, timeout=T)
            assert result.exit_code == 0
            last = [decode_control(f.payload) for f in FrameDecoder().feed(writes[-1])]
            kinds = [m.get("event") or ("reply" if "ok" in m else "?") for m in last]
            assert kinds[0] == "run.started" or "run.started" not in kinds, kinds
            assert kinds[-1] == "reply", kinds
            if command == "true":  # nothing came before the end: all of it in one write
                assert kinds == ["run.started", "reply"], kinds
        await client.close(s.id)
