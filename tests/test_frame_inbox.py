"""FrameInbox: frames a protocol pushes, keystrokes applied in the callback,
everything else queued for the connection's loop without reordering."""

from __future__ import annotations

import asyncio

import pytest

from tachi import protocol
from tachi.daemon.inbox import QUEUE_HIGH, QUEUE_LOW, FrameInbox
from tachi.errors import ProtocolError


class _Taker:
    """Stands in for ``Connection.stdin_now``: takes STDIN frames while ``open``."""

    def __init__(self) -> None:
        self.open = True
        self.taken: list[bytes] = []

    def stdin_now(self, frame: protocol.Frame) -> bool:
        if frame.channel != protocol.STDIN or not self.open:
            return False
        self.taken.append(frame.payload)
        return True


def _inbox() -> tuple[FrameInbox, _Taker, list[str]]:
    calls: list[str] = []
    inbox = FrameInbox(lambda: calls.append("pause"), lambda: calls.append("resume"))
    taker = _Taker()
    inbox.bind(taker)  # type: ignore[arg-type]
    return inbox, taker, calls


async def test_keystrokes_are_applied_inside_feed_and_requests_queued():
    inbox, taker, _ = _inbox()
    hello = protocol.encode_control({"op": "hello"})
    inbox.feed(
        protocol.encode(protocol.STDIN, b"a") + hello + protocol.encode(protocol.STDIN, b"b")
    )
    # "a" went straight through; "b" came after a queued request, so it waits
    # behind it rather than overtaking it.
    assert taker.taken == [b"a"]
    first, second = await inbox.next(), await inbox.next()
    assert first is not None and first.channel == protocol.CONTROL
    assert second == protocol.Frame(protocol.STDIN, b"b")


async def test_a_refused_keystroke_holds_back_the_ones_after_it():
    inbox, taker, _ = _inbox()
    taker.open = False  # e.g. the program is behind on its input
    inbox.feed(protocol.encode(protocol.STDIN, b"1"))
    taker.open = True
    inbox.feed(protocol.encode(protocol.STDIN, b"2"))
    assert taker.taken == []
    assert [(await inbox.next()).payload for _ in range(2)] == [b"1", b"2"]  # type: ignore[union-attr]
    inbox.feed(protocol.encode(protocol.STDIN, b"3"))
    assert taker.taken == [b"3"]  # the queue is empty again: straight through


async def test_reading_pauses_when_the_queue_is_long_and_resumes_when_drained():
    inbox, _, calls = _inbox()
    request = protocol.encode_control({"op": "session.list"})
    inbox.feed(request * QUEUE_HIGH)
    assert calls == ["pause"]
    for _ in range(QUEUE_HIGH - QUEUE_LOW):
        await inbox.next()
    assert calls == ["pause", "resume"]


async def test_a_malformed_frame_stops_reading_and_ends_the_loop_with_an_error():
    inbox, _, calls = _inbox()
    inbox.feed(bytes([9, 0, 0, 0, 1, 0]))  # channel 9 does not exist
    assert calls == ["pause"]
    with pytest.raises(ProtocolError, match="unknown channel"):
        await inbox.next()


async def test_end_of_stream_inside_a_frame_is_an_error_and_between_frames_is_not():
    inbox, _, _ = _inbox()
    inbox.feed(protocol.encode_control({"op": "x"})[:-1])
    inbox.feed_eof()
    with pytest.raises(ProtocolError, match="inside a frame"):
        await inbox.next()
    clean, _, _ = _inbox()
    clean.feed_eof()
    assert await clean.next() is None


async def test_next_waits_for_a_frame_that_arrives_later():
    inbox, _, _ = _inbox()
    waiting = asyncio.ensure_future(inbox.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.feed(protocol.encode_control({"op": "later"}))
    frame = await asyncio.wait_for(waiting, 5)
    assert frame is not None and protocol.decode_control(frame.payload) == {"op": "later"}


async def test_a_keystroke_taken_in_feed_does_not_wake_the_connections_task():
    # The connection's loop waits in next(); a keystroke written straight to the
    # PTY gives it nothing to do, so it must stay asleep (a wake-up per key cost
    # a turn of the event loop on every echo).
    inbox, taker, _ = _inbox()
    waiting = asyncio.ensure_future(inbox.next())
    await asyncio.sleep(0)
    wakes = 0
    waiter = inbox._waiter
    for key in b"hello":
        inbox.feed(protocol.encode(protocol.STDIN, bytes([key])))
        if inbox._waiter is not waiter or (waiter is not None and waiter.done()):
            wakes += 1
    assert taker.taken == [bytes([k]) for k in b"hello"] and wakes == 0
    inbox.feed(protocol.encode_control({"op": "hello"}))  # a request does wake it
    frame = await asyncio.wait_for(waiting, 5)
    assert frame is not None and frame.channel == protocol.CONTROL
