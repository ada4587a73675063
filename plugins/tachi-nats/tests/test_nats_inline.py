"""The NATS transport's hot path: ``tachi attach`` speaks its virtual
connection on its own thread (``NatsStream``), and nats-py's shortcuts that the
daemon and the stream's set-up use (``FastClient``). A real nats-server, a real
daemon that only dials out to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pexpect
import pytest
from nats_support import NatsServer, wait_until

from tachi import protocol
from tachi.testing import DaemonProcess


@dataclass
class Host:
    daemon: DaemonProcess
    nats: NatsServer
    token: str
    fingerprint: str

    @property
    def url(self) -> str:
        return f"{self.nats.url}/inline-1"


def _listener(daemon: DaemonProcess) -> dict[str, Any]:
    status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
    return next((x for x in status["listeners"] if x["transport"] == "nats"), {})


@pytest.fixture
def host(nats_server: NatsServer, fleet_daemons: Any) -> Iterator[Host]:
    daemon = fleet_daemons(nats_server.url, "inline-1", "heartbeat = 1\n")
    wait_until(lambda: _listener(daemon).get("connected"), 10, "the daemon serving through NATS")
    token = json.loads(daemon.run("token", "create", "--json", check=True).stdout)["token"]
    yield Host(daemon, nats_server, token, _listener(daemon)["fingerprint"])


def _open(host: Host) -> Any:
    """What ``tachi attach`` gets for ``--host nats://…``: the options it asks with."""
    from tachi_nats.relay_client import open_connection

    options = {"inline": True, "interactive": True, "fingerprint": host.fingerprint}
    return open_connection(host.url, {**options, "timeout": 10})


def _call(stream: Any, request_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """One request and its reply, read as attach reads: select, then take what came."""
    stream.sendall(protocol.encode_control({"id": request_id, "op": op, "args": args}))
    decoder = protocol.FrameDecoder(max_payload=protocol.MAX_PAYLOAD * 4)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not stream.pending():
            select.select([stream], [], [], 0.5)
        try:
            data = stream.recv(256 * 1024, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        assert data, "the connection ended"
        for frame in decoder.feed(data):
            if frame.channel == protocol.CONTROL:
                message = protocol.decode_control(frame.payload)
                if message.get("id") == request_id:
                    return message
    raise AssertionError(f"no reply to {op}")


def _hello(stream: Any, host: Host) -> None:
    reply = _call(stream, 1, "hello", {"version": protocol.VERSION, "token": host.token})
    assert reply["ok"], reply


def test_attach_speaks_nats_on_its_own_thread_with_no_bridge(host: Host):
    """No socketpair and no bridge thread between attach and NATS: what attach
    selects on is its TCP connection to the NATS server itself."""
    from tachi_nats.relay_client import NatsStream

    stream = _open(host)
    try:
        assert isinstance(stream, NatsStream)
        with socket.socket(fileno=os.dup(stream.fileno())) as sock:
            assert sock.family in (socket.AF_INET, socket.AF_INET6)
            assert sock.getpeername()[1] == host.nats.port
        assert not [t for t in threading.enumerate() if t.name == "tachi-nats-bridge"]
        _hello(stream, host)
        assert _call(stream, 2, "session.list", {})["ok"]
    finally:
        stream.close()
    assert wait_until(lambda: _listener(host.daemon)["connections"] == 0, 5, "goodbye seen")


def test_an_idle_attach_keeps_its_connection_through_nats(host: Host):
    """The daemon drops a client it has not heard from for three heartbeats
    (3 s here): the stream's watchdog sends the heartbeat while attach only
    waits for output."""
    stream = _open(host)
    try:
        _hello(stream, host)
        quiet_until = time.monotonic() + 4.5
        while (left := quiet_until - time.monotonic()) > 0:
            if select.select([stream], [], [], left)[0]:
                # A PING is nothing for the caller (BlockingIOError); an end is b"".
                with contextlib.suppress(BlockingIOError):
                    assert stream.recv(65536, socket.MSG_DONTWAIT), "dropped while idle"
        assert _call(stream, 2, "session.list", {})["ok"]
    finally:
        stream.close()


def test_a_daemon_gone_silent_ends_the_attach_within_three_heartbeats(host: Host):
    """A daemon that stops answering (stopped, its host cut off behind NATS)
    shows as the end of the connection, so attach reconnects, instead of a
    terminal that waits forever."""
    stream = _open(host)
    pid = host.daemon.proc.pid
    try:
        _hello(stream, host)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        ended = None
        while time.monotonic() - started < 8:
            select.select([stream], [], [], 0.5)
            try:
                if stream.recv(65536, socket.MSG_DONTWAIT) == b"":
                    ended = time.monotonic() - started
                    break
            except BlockingIOError:
                continue
        assert ended is not None and ended < 3 * 1 + 2, ended
    finally:
        os.kill(pid, signal.SIGCONT)
        stream.close()


def test_output_larger_than_the_window_reaches_an_attached_terminal(host: Host):
    """The stream acknowledges what attach takes: 1.3 MB of output, five
    windows' worth, arrives whole."""
    session = host.daemon.new("bash", "--norc")
    argv = host.daemon.tachi_argv("--host", host.url, "--fingerprint", host.fingerprint)
    env = {**host.daemon.env, "TACHI_TOKEN": host.token}
    child = pexpect.spawn(
        argv[0], [*argv[1:], "attach", session["id"]], env=env, dimensions=(30, 90), timeout=30
    )
    try:
        time.sleep(0.5)
        child.send("seq 1 200000; echo end-$((6*7))\r")
        child.expect("end-42")  # a window never acknowledged would stall at 256 KiB
        child.send("\x1cd")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


# -- nats-py's shortcuts ---------------------------------------------------------------


def test_a_direct_subscription_takes_its_messages_in_order_as_they_arrive(
    nats_server: NatsServer,
):
    """Handed over as asyncio delivers the bytes (not from nats-py's reader
    task, nor the subscription's callback), in order, through a reconnect."""
    import traceback

    import nats
    from tachi_nats.nats_io import _client_class

    async def main() -> tuple[list[bytes], list[bool], int]:
        nc = _client_class()()
        await nc.connect(nats_server.url, reconnect_time_wait=0.2, max_reconnect_attempts=50)
        got: list[bytes] = []
        from_reader_task: list[bool] = []
        called_back = 0

        async def callback(msg: Any) -> None:
            nonlocal called_back
            called_back += 1

        def handler(subject: bytes, data: bytes) -> None:
            assert subject == b"inline.test"
            got.append(data)
            from_reader_task.append(any(f.name == "_read_loop" for f in traceback.extract_stack()))

        sub = await nc.subscribe("inline.test", cb=callback)
        nc.direct(sub, handler)
        await nc.flush()
        other = await nats.connect(nats_server.url)
        for i in range(200):
            await other.publish("inline.test", b"m%d" % i)
        await other.flush()
        await other.close()
        deadline = time.monotonic() + 10
        while len(got) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Through a NATS restart: the new connection's reader is taken over too.
        nats_server.stop()
        nats_server.start()
        while not (nc.stats["reconnects"] and nc.is_connected):
            assert time.monotonic() < deadline + 10, "no reconnect"
            await asyncio.sleep(0.05)
        await nc.flush(5)
        other = await nats.connect(nats_server.url)
        await other.publish("inline.test", b"after")
        await other.flush()
        await other.close()
        while len(got) < 201 and time.monotonic() < deadline + 20:
            await asyncio.sleep(0.05)
        await nc.close()
        return got, from_reader_task, called_back

    got, from_reader_task, called_back = asyncio.run(main())
    assert got == [b"m%d" % i for i in range(200)] + [b"after"]
    assert called_back == 0
    assert not any(from_reader_task)


def test_write_now_never_overtakes_a_queued_publish(nats_server: NatsServer):
    """A PUB written at once must not pass one nats-py still holds for its
    flusher: ``write_now`` declines then, and the order on the wire holds."""
    from tachi_nats.nats_io import _client_class

    async def main() -> tuple[list[bytes], list[bool]]:
        import nats

        reader = await nats.connect(nats_server.url)
        got: list[bytes] = []

        async def keep(msg: Any) -> None:
            got.append(msg.data)

        await reader.subscribe("order.test", cb=keep)
        await reader.flush()
        nc = _client_class()()
        await nc.connect(nats_server.url)
        written = []
        for i in range(50):
            await nc.publish("order.test", b"queued-%d" % i)  # waits for the flusher
            written.append(nc.write_now("order.test", b"now-%d" % i))
            if not written[-1]:
                await nc.publish("order.test", b"now-%d" % i)
        await nc.flush()
        deadline = time.monotonic() + 10
        while len(got) < 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await nc.close()
        await reader.close()
        return got, written

    got, written = asyncio.run(main())
    expected = [m for i in range(50) for m in (b"queued-%d" % i, b"now-%d" % i)]
    assert got == expected
    assert not any(written)  # each time, the queued one had not gone out yet


def test_a_message_larger_than_a_daemon_sends_ends_the_stream_unheld():
    """The relay says how large each MSG is; an inline stream holds a message
    whole before it opens it. One larger than any the daemon sends (a sealed
    MAX_MESSAGE) ends the stream with the reason, instead of being buffered
    while the relay streams it in."""
    from types import SimpleNamespace

    from tachi_nats.relay_client import _MSG_LIMIT, NatsStream

    setup = SimpleNamespace(reason=None)
    stream = NatsStream(setup, None, "up", 5.0, 7)  # type: ignore[arg-type]
    with stream._lock:
        # Within the limit, for another subscription: taken whole and skipped.
        stream._rbuf += b"MSG other 8 %d\r\n%s\r\n" % (_MSG_LIMIT, b"y" * _MSG_LIMIT)
        stream._parse()
        assert not stream._eof and not stream._rbuf and stream._need is None
        stream._rbuf += b"MSG down 7 %d\r\n" % (1 << 30) + b"x" * 1000
        stream._parse()
    assert stream._eof
    assert setup.reason == f"NATS announced a message of {1 << 30} bytes"
