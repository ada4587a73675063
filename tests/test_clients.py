"""The Python API (seed: SessionManager, SessionConn) and slow clients."""

from __future__ import annotations

import json
import socket
import time

import pytest

import tachi
from helpers import SHELL, get, memory_kib, until
from tachi import protocol
from tachi.models import PTYConfig, SessionFilter, SessionRequest, SessionState


def test_client_api_implements_the_seed_session_manager(tachi_daemon):
    with tachi_daemon.client() as client:
        s = client.create(
            SessionRequest(command=SHELL, name="api", pty=PTYConfig(rows=25, cols=90))
        )
        assert client.get("api").id == s.id
        assert [x.id for x in client.list(SessionFilter(state=SessionState.SUSPENDED))] == [s.id]
        with client.attach(s.id, size=PTYConfig(rows=20, cols=70)) as conn:
            assert client.get(s.id).state == SessionState.ACTIVE
            conn.write(b"stty size\r")
            conn.read_until(b"20 70")
            # The keys sent right after the resize see the new size.
            conn.resize(31, 91)
            conn.write(b"stty size\r")
            conn.read_until(b"31 91")
        until(lambda: client.get(s.id).state == SessionState.SUSPENDED)
        client.resize(s.id, PTYConfig(rows=10, cols=40))
        assert client.get(s.id).pty.rows == 10
        assert client.send_signal(s.id, "INT") == "SIGINT"
        assert client.detach(s.id) == 0
        closed = client.close(s.id)
        assert closed.state == SessionState.CLOSED


def test_session_conn_wait_returns_the_exit_code(tachi_daemon):
    with tachi_daemon.client() as client:
        s = client.create(SessionRequest(command=["bash", "-c", "sleep 0.3; exit 4"]))
        conn = client.attach(s.id)
        assert conn.wait(timeout=10) == 4


async def test_async_client_twin(tachi_daemon):
    async with await tachi.AsyncClient.connect(tachi_daemon.socket, autostart=False) as client:
        s = await client.create(SessionRequest(command=SHELL))
        conn = await client.attach(s.id)
        await conn.write(b"echo async-$((5+5))\r")
        seen = b""
        while b"async-10" not in seen:
            seen += await conn.read()
        await conn.close()
        await client.send(s.id, "exit 2\n")
        assert (await client.wait(s.id, exit=True, timeout=10))["exitCode"] == 2


def test_read_until_matches_across_chunks_and_bounds_the_whole_wait(tachi_daemon):
    with tachi_daemon.client() as client:
        s = client.create(SessionRequest(command=SHELL))
        with client.attach(s.id) as conn:
            # Two writes 0.3 s apart: the pattern spans two chunks, and the
            # typed command line (echoed) never holds it.
            conn.write(b"printf 'ab''cd'; sleep 0.3; printf 'ef''gh\\n'\r")
            seen = conn.read_until(b"abcdefgh")
            assert b"abcdefgh" in seen
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=r"never-printed.*within 0.5 s"):
                conn.read_until("never-printed", timeout=0.5)
            assert time.monotonic() - started < 5  # bounded, not once per read
            conn.write(b"echo still-$((6*7))\r")
            assert b"still-42" in conn.read_until(b"still-42")
            conn.write(b"exit 3\r")
            with pytest.raises(EOFError, match="attachment ended"):
                conn.read_until(b"never-printed", timeout=30)
            assert conn.exit_code == 3


async def test_async_read_until(tachi_daemon):
    async with await tachi.AsyncClient.connect(tachi_daemon.socket, autostart=False) as client:
        s = await client.create(SessionRequest(command=SHELL))
        conn = await client.attach(s.id)
        await conn.write(b"printf 'as''ync'; sleep 0.3; printf 'ok''\\n'\r")
        assert b"asyncok" in await conn.read_until(b"asyncok")
        with pytest.raises(TimeoutError, match="never-printed"):
            await conn.read_until(b"never-printed", timeout=0.5)
        await conn.write(b"exit 4\r")
        with pytest.raises(EOFError):
            await conn.read_until(b"never-printed", timeout=30)
        assert conn.exit_code == 4
        await conn.close()


def test_a_stuck_client_slows_nobody_and_is_resynchronised(tachi_daemon):
    s = tachi_daemon.new(
        "bash",
        "--norc",
        "-c",
        "read; head -c 40000000 /dev/zero | base64 -w 200; echo END-OF-FLOOD; sleep 60",
    )
    # A client that attaches and then never reads.
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(tachi_daemon.socket))
    stuck.sendall(protocol.encode_control({"id": 1, "op": "hello", "args": {"version": 1}}))
    stuck.sendall(
        protocol.encode_control({"id": 2, "op": "session.attach", "args": {"session": s["id"]}})
    )
    with tachi_daemon.client() as client:
        conn = client.attach(s["id"], read_only=True)
        client.send(s["id"], "\n")
        started = time.monotonic()
        seen = bytearray()
        while b"END-OF-FLOOD" not in seen[-4096:]:
            chunk = conn.read(timeout=30)
            assert chunk, "the reading client stalled"
            seen += chunk
        elapsed = time.monotonic() - started
        conn.close()
    assert elapsed < 30
    pid = tachi_daemon.proc.pid
    rss_kib = memory_kib(pid)["VmRSS"]
    assert rss_kib < 200 * 1024, f"daemon RSS {rss_kib} KiB with a stuck client"
    # Once the stuck client reads again, it gets a fresh screen, not 40 MB of history.
    stuck.settimeout(5)
    decoder = protocol.FrameDecoder(max_payload=1 << 24)
    events, total = [], 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        e.get("event") == "screen" and "END-OF-FLOOD" in e["data"] for e in events
    ):
        data = stuck.recv(1 << 20)
        total += len(data)
        for frame in decoder.feed(data):
            if frame.channel == protocol.CONTROL:
                events.append(json.loads(frame.payload))
    assert any(e.get("event") == "screen" and "END-OF-FLOOD" in e["data"] for e in events)
    assert total < 20_000_000, f"stuck client was sent {total} bytes"
    stuck.close()
    assert get(tachi_daemon, s["id"])["state"] != "closed"


def test_reattach_resumes_exactly_where_the_client_left(tachi_daemon):
    s = tachi_daemon.new("cat")
    with tachi_daemon.client() as client:
        conn = client.attach(s["id"])
        client.send(s["id"], "before-gap\n")
        seen = b""
        while b"before-gap\r\n" * 2 not in seen:  # the echo and cat's copy
            seen += conn.read(timeout=5)
        position = conn.position
        conn.close()
        client.send(s["id"], "during-gap\n")
        tachi_daemon.run("wait", s["id"], "--match", "during-gap\\n.*during-gap", check=True)
        again = client.attach(s["id"], resume=position)
        missed = again.read(timeout=5)
        # No snapshot, just the bytes produced while away.
        assert missed == b"during-gap\r\nduring-gap\r\n"
        again.close()
        # An offset the daemon no longer holds gets a full redraw instead.
        stale = client.attach(s["id"], resume=(position[0], -1))
        assert stale.read(timeout=5).startswith(b"\x1b[?1049l")
        stale.close()


def test_the_first_screen_is_never_stranded_after_the_attach_reply(tachi_daemon):
    # The screen often arrives in the same read as the reply; it must be handed
    # on (pending) rather than left in the decoder where a select()-driven
    # client like `tachi attach` would not look until new output arrives.
    import select

    from tachi.client.wire import WireConnection

    s = tachi_daemon.new("sleep", "300")
    for _ in range(150):
        wire = WireConnection(tachi_daemon.socket, autostart=False)
        wire.call("session.attach", {"session": s["id"]})
        ready = bool(wire.pending) or bool(select.select([wire.fileno()], [], [], 2)[0])
        wire.close()
        assert ready, "the first screen was left where nobody reads it"
