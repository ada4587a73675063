"""Per-connection limits on the WebSocket transport (issue 26 F4): a peer that
pipelines 10,000 requests and never reads is no longer read from; the daemon
stays within its bound and other clients are served (docs/protocol.md "Limits")."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from ws_support import Remote, hello

from tachi import protocol

#: [limits] requests (64) replies of ~170 KiB, 2 x client_buffer, the WebSocket
#: library's own read-ahead and socket buffers.
GROWTH_BOUND_KIB = 64 * 1024


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _noise() -> str:
    return os.urandom(2000).hex()


class Pipeliner(threading.Thread):
    """Sends requests one message each, never reading; counts what went out."""

    def __init__(self, ws: object, messages: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.ws, self.messages, self.sent = ws, messages, 0

    def run(self) -> None:
        try:
            for message in self.messages:
                self.ws.send(message)  # type: ignore[attr-defined]
                self.sent += 1
        except (ConnectionClosed, OSError):
            pass


def _stalled(sender: Pipeliner, stall: float = 3.0, limit: float = 60.0) -> int:
    """Wait until ``sender`` finished or made no progress for ``stall`` seconds."""
    deadline, last, seen = time.monotonic() + limit, time.monotonic(), -1
    while sender.is_alive() and time.monotonic() < deadline:
        if sender.sent != seen:
            seen, last = sender.sent, time.monotonic()
        elif time.monotonic() - last > stall:
            break
        time.sleep(0.1)
    return sender.sent


@pytest.mark.timeout(180)
@pytest.mark.xdist_group("heavy")
def test_a_websocket_peer_that_pipelines_captures_and_never_reads_is_bounded(remote: Remote):
    daemon = remote.daemon
    assert daemon.proc is not None
    s = daemon.new("sh", "-c", "for i in $(seq 2000); do printf '%078d\\n' $i; done; exec cat")
    waited = daemon.run("wait", s["id"], "--match", r"^0+2000$", "--timeout", "30")
    assert waited.returncode == 0, waited.stderr
    before = _rss_kib(daemon.proc.pid)
    # Uncompressed: replies cost the daemon their full size.
    with remote.raw(compression=None) as ws:
        try:
            assert hello(ws, remote.token)["ok"]
            # 4 KB each (random), in an argument the operation ignores: 40 MB in
            # all, more than loopback TCP buffers hold, so a daemon that reads them
            # all is seen.
            args = {"session": s["id"], "history": -1}
            messages = [
                protocol.encode_control(
                    {"id": n, "op": "session.capture", "args": {**args, "pad": _noise()}}
                )
                for n in range(2, 10_002)
            ]
            sender = Pipeliner(ws, messages)
            sender.start()
            sent = _stalled(sender)
            # The daemon stopped reading this peer before all 10,000 went out.
            assert sent < 10_000
            started = time.monotonic()
            listed = remote.run("ls")
            assert listed.returncode == 0, listed.stderr
            assert time.monotonic() - started < 10
            grown = _rss_kib(daemon.proc.pid) - before
            assert grown < GROWTH_BOUND_KIB, f"the daemon grew by {grown // 1024} MiB"
        finally:
            # Cut, as a vanished peer would: a polite close would wait behind the
            # sender, which waits for a daemon that no longer reads it.
            ws.socket.shutdown(socket.SHUT_RDWR)
    assert remote.run("ls").returncode == 0
