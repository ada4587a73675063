"""The WebSocket wire is frame-level: each frame the daemon writes goes out as
one binary message, byte for byte, in order, on a real WebSocket connection."""

from __future__ import annotations

import asyncio

from tachi_websocket.server import MessageWire
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tachi import protocol

FRAMES = [
    protocol.encode_control({"id": 1, "ok": True, "result": {}}),
    protocol.encode_output(0, 0, b"x" * protocol.MAX_OUTPUT_CHUNK),
    protocol.encode(protocol.STDOUT, b""),  # an empty payload is a frame too
    protocol.encode_control({"event": "session.event", "type": "closed"}),
]


async def test_each_frame_written_is_one_message_as_it_is():
    written = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        wire = MessageWire(ws)
        for frame in FRAMES:
            wire.write(frame)
        # Written at once to an idle connection, queued behind what waits
        # otherwise: either way counted until the transport has sent it.
        assert 0 <= wire.buffered() <= sum(map(len, FRAMES))
        await wire.finish()
        written.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            received = [await asyncio.wait_for(client.recv(), 10) for _ in FRAMES]
        await asyncio.wait_for(written.wait(), 10)
    assert received == FRAMES


async def test_an_echo_to_a_peer_that_keeps_up_leaves_without_a_task_switch():
    """A keystroke's echo is one small message: written to the connection in
    the daemon's own step, not handed to the sending task for its next turn."""
    outcome: list[bool] = []

    async def handler(ws: ServerConnection) -> None:
        wire = MessageWire(ws)
        await asyncio.sleep(0)  # the sending task has started and waits
        wire.write(protocol.encode_output(0, 0, b"x"))
        outcome.append(not wire._queue)  # nothing left for the task
        await wire.finish()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            assert await asyncio.wait_for(client.recv(), 10) == protocol.encode_output(0, 0, b"x")
    assert outcome == [True]
