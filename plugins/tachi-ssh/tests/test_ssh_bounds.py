"""Per-connection limits on the SSH transport (issue 26 F4, issue 33): a peer
on the ``tachi`` subsystem that pipelines 10,000 requests and never reads its
replies is no longer read from; the daemon stays within its bound and other
clients are served (docs/protocol.md "Limits"). The same bound as on the Unix
socket and the WebSocket: the limits are the connection's, not the transport's.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from ssh_support import OWNER, SSHDaemon, ssh_daemon

from tachi import protocol
from tachi.library_warnings import hide_unless_asked

hide_unless_asked()  # asyncssh's import warns about DSA under this cryptography
import asyncssh  # noqa: E402

__all__ = ["ssh_daemon"]

#: [limits] requests (64) replies of ~170 KiB, 2 x client_buffer, asyncssh's
#: channel window and buffers, and socket buffers (as the WebSocket test).
GROWTH_BOUND_KIB = 64 * 1024
#: How long a send may wait before the peer counts as no longer read from.
STALL_SECONDS = 3.0


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def _hello(writer: asyncssh.SSHWriter, reader: asyncssh.SSHReader) -> dict:
    writer.write(
        protocol.encode_control({"id": 1, "op": "hello", "args": {"version": protocol.VERSION}})
    )
    decoder = protocol.FrameDecoder()
    async with asyncio.timeout(10):
        while True:
            for frame in decoder.feed(await reader.read(65536)):
                message = protocol.decode_control(frame.payload)
                if message.get("id") == 1:
                    return message


async def _pipeline(ssh: SSHDaemon, session: str) -> tuple[int, float, int]:
    """Send 10,000 captures on one subsystem channel, reading nothing after the
    hello; once sending stalls, time an ``ls`` by another client. Returns (sent,
    the ls's seconds, the daemon's growth in KiB)."""
    daemon = ssh.daemon
    assert daemon.proc is not None
    before = _rss_kib(daemon.proc.pid)
    async with asyncssh.connect(
        "127.0.0.1",
        port=ssh.port,
        username=OWNER,
        client_keys=[str(ssh.keys["owner"])],
        known_hosts=str(ssh.known_hosts),
    ) as conn:
        writer, reader, _ = await conn.open_session(subsystem="tachi", encoding=None)
        assert (await _hello(writer, reader))["ok"]
        # 4 KB each (random), in an argument the operation ignores: 40 MB in all,
        # far more than the SSH window and socket buffers hold.
        args = {"session": session, "history": -1}
        sent = 0
        for n in range(2, 10_002):
            pad = os.urandom(2000).hex()
            frame = {"id": n, "op": "session.capture", "args": {**args, "pad": pad}}
            writer.write(protocol.encode_control(frame))
            try:
                await asyncio.wait_for(writer.drain(), STALL_SECONDS)
            except TimeoutError:
                break
            sent += 1
        started = time.monotonic()
        listed = await asyncio.to_thread(daemon.run, "ls")
        took = time.monotonic() - started
        assert listed.returncode == 0, listed.stderr
        grown = _rss_kib(daemon.proc.pid) - before
        conn.abort()  # as a vanished peer: a polite close would wait behind the sender
    return sent, took, grown


@pytest.mark.timeout(180)
@pytest.mark.xdist_group("heavy")
def test_an_ssh_peer_that_pipelines_captures_and_never_reads_is_bounded(ssh_daemon):
    daemon = ssh_daemon.daemon
    s = daemon.new("sh", "-c", "for i in $(seq 2000); do printf '%078d\\n' $i; done; exec cat")
    waited = daemon.run("wait", s["id"], "--match", r"^0+2000$", "--timeout", "30")
    assert waited.returncode == 0, waited.stderr

    sent, took, grown = asyncio.run(_pipeline(ssh_daemon, s["id"]))

    # The daemon stopped reading this peer before all 10,000 went out.
    assert sent < 10_000
    assert took < 10, f"another client's ls took {took:.1f} s"
    assert grown < GROWTH_BOUND_KIB, f"the daemon grew by {grown // 1024} MiB"
    assert daemon.run("ls").returncode == 0
