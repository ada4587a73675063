"""What one connection may cost the daemon (issue 26 F4, issue 33; docs/protocol.md
"Limits"): a peer that pipelines requests and never reads its replies is no
longer read from; the daemon's memory stays bounded and everyone else is served.
A caller's regular expression runs in linear time (F6).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import audit_records, memory_kib, until, wait_match
from tachi import protocol
from tachi.errors import PermissionDenied
from tachi.testing import DaemonProcess

#: What the daemon may grow by while one peer holds 10,000 unread requests:
#: [limits] requests (64) replies of ~170 KiB, 2 x client_buffer, socket buffers.
GROWTH_BOUND_KIB = 48 * 1024


def raw_peer(path: Path) -> socket.socket:
    """A greeted protocol connection on the daemon's Unix socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    sock.sendall(protocol.encode_control({"id": 0, "op": "hello", "args": {"version": 1}}))
    decoder = protocol.FrameDecoder()
    while not (frames := decoder.feed(sock.recv(65536))):
        pass
    assert json.loads(frames[0].payload)["ok"]
    return sock


def pipeline(sock: socket.socket, requests: list[bytes], stall: float = 3.0) -> int:
    """Send ``requests`` back to back without reading anything; stop once the
    daemon has taken nothing for ``stall`` seconds. Returns how many went out."""
    data = memoryview(b"".join(requests))
    sent, last_progress = 0, time.monotonic()
    sock.setblocking(False)
    while sent < len(data) and time.monotonic() - last_progress < stall:
        try:
            sent += sock.send(data[sent : sent + 65536])
            last_progress = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    per_request = len(data) // len(requests)
    return sent // per_request


def history_session(daemon: DaemonProcess) -> str:
    """A session whose scrollback is full: each capture --history is ~170 KiB."""
    s = daemon.new("sh", "-c", "for i in $(seq 2000); do printf '%078d\\n' $i; done; exec cat")
    wait_match(daemon, s["id"], r"^0+2000$", timeout=30)
    return s["id"]


def ls_answers_quickly(daemon: DaemonProcess) -> float:
    started = time.monotonic()
    result = daemon.run("ls", timeout=30)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


@contextlib.contextmanager
def greedy_peer(daemon: DaemonProcess) -> Iterator[socket.socket]:
    """A raw peer (see :func:`raw_peer`) for the block to pipeline on. When the
    block ends, its replies still unread, the daemon answers ``ls`` within 5 s and
    has grown by less than ``GROWTH_BOUND_KIB``; once the peer is gone, it still
    answers ``ls`` within 5 s."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    before = memory_kib(pid)["VmRSS"]
    peer = raw_peer(daemon.socket)
    try:
        yield peer
        assert ls_answers_quickly(daemon) < 5
        grown = memory_kib(pid)["VmRSS"] - before
        assert grown < GROWTH_BOUND_KIB, f"the daemon grew by {grown // 1024} MiB"
    finally:
        peer.close()
    # Everyone else was served all along, and still is.
    assert ls_answers_quickly(daemon) < 5


def requests(op: str, args: dict[str, object], count: int) -> list[bytes]:
    return [protocol.encode_control({"id": n, "op": op, "args": args}) for n in range(1, count + 1)]


@pytest.mark.timeout(180)
def test_a_peer_that_pipelines_captures_and_never_reads_costs_a_bounded_amount(
    tachi_daemon: DaemonProcess,
) -> None:
    sid = history_session(tachi_daemon)
    with greedy_peer(tachi_daemon) as peer:  # checks memory and ls as it ends
        taken = pipeline(peer, requests("session.capture", {"session": sid, "history": -1}, 10_000))
        # The daemon stopped reading: the rest wait on the peer's side.
        assert taken < 10_000


@pytest.mark.timeout(180)
def test_a_peer_that_pipelines_waits_runs_a_bounded_number_of_them(
    tachi_daemon: DaemonProcess,
) -> None:
    s = tachi_daemon.new("cat")
    with greedy_peer(tachi_daemon) as peer:  # checks memory and ls as it ends
        waits = requests("session.wait", {"session": s["id"], "match": "never-seen"}, 10_000)
        taken = pipeline(peer, waits)
        assert taken < 10_000
        # Each wait that runs keeps the output it has seen (to match across
        # chunks): 64 of them, not 10,000, see these 40 KB (input and its echo).
        tachi_daemon.run("send", s["id"], ("x" * 999 + "\n") * 19 + "sent-all\n", check=True)
        wait_match(tachi_daemon, s["id"], "^sent-all")


@pytest.mark.timeout(120)
def test_a_hostile_pattern_neither_freezes_the_daemon_nor_outlives_its_timeout(
    tachi_daemon: DaemonProcess,
) -> None:
    # 400 KB of output for the pattern to chew on, then the wait.
    s = tachi_daemon.new("sh", "-c", "head -c 400000 /dev/zero | tr '\\0' a; exec cat")
    until(lambda: len(tachi_daemon.run("capture", s["id"]).stdout) > 1000, timeout=30)
    started = time.monotonic()
    waiting = tachi_daemon.run(
        "wait", s["id"], "--match", r"(?:[\s\S]+)+Q", "--timeout", "3", timeout=60
    )
    assert time.monotonic() - started < 20
    assert waiting.returncode != 0 and "timed out" in waiting.stderr
    assert ls_answers_quickly(tachi_daemon) < 5


def test_patterns_re2_cannot_run_are_refused_naming_the_construct(
    tachi_daemon: DaemonProcess,
) -> None:
    s = tachi_daemon.new("cat")
    refused = tachi_daemon.run("wait", s["id"], "--match", r"(a)\1", "--timeout", "1")
    assert refused.returncode != 0 and "backreference" in refused.stderr
    refused = tachi_daemon.run("wait", s["id"], "--match", r"x(?=y)", "--timeout", "1")
    assert "lookahead" in refused.stderr


def _shared_daemon(tmp_path, connections: int) -> tuple[DaemonProcess, str, str]:
    """A daemon with ``[limits] connections``, a session, and an observer's token for it."""
    home = tmp_path / "d"
    home.mkdir()
    daemon = DaemonProcess(home, config=f"[limits]\nconnections = {connections}\n")
    daemon.start()
    sid = daemon.new("sh")["id"]
    with daemon.client() as owner:
        token = owner.share(sid, "observer").token
    return daemon, sid, token


def test_one_share_link_opens_a_bounded_number_of_connections(tmp_path):
    """Each connection may hold replies and waits up to its own bound; one grant
    (a share link, say) may hold [limits] connections of them at once, and is
    refused past that, audited. The daemon's own user is never counted."""
    daemon, sid, token = _shared_daemon(tmp_path, connections=3)
    try:
        held = [daemon.client(token=token) for _ in range(3)]
        with pytest.raises(PermissionDenied, match=r"too many connections .*at most 3"):
            daemon.client(token=token)
        # The owner is not counted, however many it has open.
        mine = [daemon.client() for _ in range(5)]
        assert all(c.get(sid).id == sid for c in mine)
        # One closed, one more may come in.
        held.pop().disconnect()
        again = until(lambda: _connects(daemon, token), timeout=10)
        assert again.get(sid).id == sid
        for c in [*held, *mine, again]:
            c.disconnect()
        refused = [r for r in audit_records(daemon) if r["action"] == "connection.open"]
        assert refused and refused[0]["result"] == "denied"
        assert "too many connections" in refused[0]["reason"]
    finally:
        daemon.stop()


def _connects(daemon: DaemonProcess, token: str):
    try:
        return daemon.client(token=token)
    except PermissionDenied:
        return None


def test_refused_connections_are_audited_without_flooding_the_log(tmp_path):
    """A peer past [limits] connections that reconnects in a loop is refused
    every time, but audited once a second at most, each record counting the
    refusals it stands for: the log grows with time, not with its attempts."""
    daemon, _sid, token = _shared_daemon(tmp_path, connections=1)
    try:
        held = daemon.client(token=token)
        started = time.monotonic()
        for _ in range(40):
            with pytest.raises(PermissionDenied, match="too many connections"):
                daemon.client(token=token)
        seconds = time.monotonic() - started
        held.disconnect()
        records = [r for r in audit_records(daemon) if r["action"] == "connection.open"]
        assert records and all(r["result"] == "denied" for r in records)
        assert len(records) <= int(seconds) + 1 < 40, (len(records), seconds)
        assert records[0]["details"]["refused"] == 1
    finally:
        daemon.stop()
