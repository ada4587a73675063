"""The listener's connections feed a FrameInbox as websockets parses each
message (``FrameConnection``): a keystroke reaches the session inside the
protocol's callback, as on the Unix socket, instead of waiting in websockets'
queue for the connection's task to ``recv()`` it on the loop's next turn.
Real websockets server and client on 127.0.0.1; what takes the keystrokes is a
recorder standing where ``tachi.daemon.connection.Connection`` binds."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from tachi_websocket.server import ONE_FRAME, TEXT_REFUSED, FrameConnection
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from tachi import protocol
from tachi.daemon.limits import ConnectionLimits
from tachi.errors import ProtocolError


class Keystrokes:
    """Takes STDIN frames the way ``Connection.stdin_now`` does, noting whether
    each came in a protocol callback (no task running) or from a task."""

    def __init__(self) -> None:
        self.taken: list[tuple[bytes, bool]] = []
        self.arrived = asyncio.Event()

    def stdin_now(self, frame: protocol.Frame) -> bool:
        if frame.channel != protocol.STDIN:
            return False  # requests go through the connection's loop
        self.taken.append((frame.payload, asyncio.current_task() is None))
        self.arrived.set()
        return True


async def _serve_one(
    client_sends: list[bytes | str],
) -> tuple[Keystrokes, list[protocol.Frame], BaseException | None]:
    """Serve one connection whose client sends ``client_sends`` and closes;
    returns the keystrokes taken, the frames the connection's loop got from the
    inbox, and how that loop ended (``None``: the end of the stream)."""
    keys = Keystrokes()
    pulled: list[protocol.Frame] = []
    ended: list[BaseException | None] = []
    done = asyncio.Event()

    async def handler(ws: Any) -> None:
        assert isinstance(ws, FrameConnection)
        ws.inbox.bind(keys)
        try:
            while (frame := await ws.inbox.next()) is not None:
                pulled.append(frame)
            ended.append(None)
        except ProtocolError as exc:
            ended.append(exc)
        done.set()

    factory = functools.partial(
        FrameConnection, limits=ConnectionLimits(), max_payload=protocol.MAX_PAYLOAD
    )

    async def run() -> None:
        async with serve(handler, "127.0.0.1", 0, create_connection=factory) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
                for message in client_sends:
                    await ws.send(message)
            await done.wait()

    # Closing handshakes included: a listener that stopped reading at a bad
    # message held its end of the connection for 10 s (close_timeout).
    await asyncio.wait_for(run(), 5)
    return keys, pulled, ended[0]


HELLO = protocol.encode_control({"id": 1, "op": "hello", "args": {}})


async def test_a_keystroke_is_applied_in_the_protocol_callback_not_on_a_later_turn():
    keys = Keystrokes()
    pulled: list[protocol.Frame] = []

    async def handler(ws: Any) -> None:
        ws.inbox.bind(keys)
        pulled.append(await ws.inbox.next())  # the request, through the loop
        await ws.send(b"welcome")  # nothing is queued now: keys may go straight in
        await asyncio.wait_for(keys.arrived.wait(), 10)
        await ws.close()

    factory = functools.partial(
        FrameConnection, limits=ConnectionLimits(), max_payload=protocol.MAX_PAYLOAD
    )
    async with serve(handler, "127.0.0.1", 0, create_connection=factory) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            await client.send(HELLO)
            assert await asyncio.wait_for(client.recv(), 10) == b"welcome"
            await client.send(protocol.encode(protocol.STDIN, b"a"))
            await asyncio.wait_for(client.wait_closed(), 10)
    assert [f.payload for f in pulled] == [HELLO[protocol.HEADER.size :]]
    assert keys.taken == [(b"a", True)]  # in data_received: no task ran it


async def test_frames_reach_the_connection_in_order_and_the_end_of_the_stream_ends_it():
    frames = [HELLO, protocol.encode_control({"id": 2, "op": "ls", "args": {}})]
    keys, pulled, ended = await _serve_one(frames)
    assert [protocol.encode(f.channel, f.payload) for f in pulled] == frames
    assert ended is None
    assert keys.taken == []


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("a text message", TEXT_REFUSED),
        (b"\x00\x01", "shorter than a frame header"),
        (HELLO + HELLO, ONE_FRAME),  # two frames in one message
        (HELLO[:-1], ONE_FRAME),  # a frame cut short
        (protocol.HEADER.pack(9, 1) + b"x", "channel"),  # no such channel
    ],
)
async def test_a_message_that_is_not_one_frame_ends_the_connection_after_what_came_before(
    bad: bytes | str, reason: str
):
    keys, pulled, ended = await _serve_one([HELLO, bad, protocol.encode(protocol.STDIN, b"x")])
    assert [protocol.encode(f.channel, f.payload) for f in pulled] == [HELLO]
    assert isinstance(ended, ProtocolError) and reason in str(ended)
    assert keys.taken == []  # nothing after the bad message is taken
