"""A burst of output is held in the daemon while it lasts, then recorded whole.

These drive ``RecorderProcess`` on a real event loop with its real worker
process and read the files it writes; the daemon test at the end checks that
the memory a held burst took is given back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import memory_kib, until
from tachi.core import recorder_process
from tachi.core.recorder_process import ProcessSink, RecorderProcess
from tachi.playback import read_cast
from tachi.testing import DaemonProcess

FACTORY = "tachi.builtins.asciicast:AsciicastRecorder"
OPEN_ARGS = {"width": 80, "height": 24, "timestamp_ns": 0, "env": {}, "title": None}
#: A frame big enough to start a burst.
BULK = b"x" * recorder_process.HOLD_FRAME


def output_events(path: Path) -> list[str]:
    return [e.data for e in read_cast(path)[1] if e.code == "o"]


async def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def recording(path: Path) -> tuple[RecorderProcess, ProcessSink]:
    """A recorder process (the worker starts on first use) and a recording in it."""
    process = RecorderProcess()
    return process, process.open(FACTORY, path, **OPEN_ARGS)


async def header_size(path: Path) -> int:
    """The size of ``path`` once the worker has written the recording's header."""
    await wait_for(lambda: path.exists() and path.stat().st_size > 0)
    return path.stat().st_size


async def burst(sink, frames: int, period: float = 0.02, start: int = 0) -> None:
    """``frames`` bulk output frames, one each ``period`` (a flood coalesced)."""
    for i in range(start, start + frames):
        sink.output_parts([b"%06d" % i, BULK], float(i))
        await asyncio.sleep(period)


def test_a_burst_reaches_the_worker_once_it_pauses_whole_and_in_order(tmp_path):
    path = tmp_path / "burst.cast"

    async def main() -> list[int]:
        _, sink = recording(path)
        header = await header_size(path)
        sizes = []
        for i in range(15):  # 0.3 s of flood, well inside HOLD_SECONDS
            await burst(sink, 1, start=i)
            sizes.append(path.stat().st_size - header)
        await wait_for(lambda: path.stat().st_size > header + 15 * len(BULK))
        sink.close()
        return sizes

    sizes = asyncio.run(main())
    assert sizes == [0] * 15  # nothing reached the worker while the flood lasted
    events = output_events(path)
    assert [e[:6] for e in events] == [f"{i:06d}" for i in range(15)]
    assert all(e[6:] == BULK.decode() for e in events)


def written_during_a_burst(path: Path, frames: int) -> int:
    """Bytes of ``path`` the worker wrote while a burst of ``frames`` lasted."""

    async def main() -> int:
        _, sink = recording(path)
        header = await header_size(path)
        await burst(sink, frames)
        during = path.stat().st_size - header
        sink.close()
        return during

    return asyncio.run(main())


def test_a_burst_is_held_no_longer_than_hold_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_process, "HOLD_SECONDS", 0.2)
    path = tmp_path / "long.cast"
    during = written_during_a_burst(path, 30)  # 0.6 s: three times the hold
    # The frames after the first 0.2 s streamed to the worker while the flood went on.
    assert during >= 10 * len(BULK)
    assert [e[:6] for e in output_events(path)] == [f"{i:06d}" for i in range(30)]


def test_a_burst_holds_no_more_than_hold_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_process, "HOLD_BYTES", 4 * len(BULK))
    assert written_during_a_burst(tmp_path / "big.cast", 12) >= 6 * len(BULK)


@pytest.fixture
def output_never_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pause in these tests is long enough to end a burst."""
    monkeypatch.setattr(recorder_process, "QUIET_SECONDS", 30.0)


def test_any_other_event_sends_what_is_held_first(tmp_path, output_never_pauses):
    # Only the other events can end the hold here.
    path = tmp_path / "order.cast"

    async def main() -> None:
        _, sink = recording(path)
        await burst(sink, 3)
        sink.marker("in the middle", 3.0)
        sink.resize(100, 30, 3.5)
        await burst(sink, 3, start=4)
        await sink.synced(timeout=5)  # a reader of the recording in progress sees all of it
        assert [e[:6] for e in output_events(path)] == [f"{i:06d}" for i in (0, 1, 2, 4, 5, 6)]
        sink.close()

    asyncio.run(main())
    events = read_cast(path)[1]
    codes = [(e.code, e.data[:6] if e.code == "o" else e.data) for e in events]
    assert codes == [
        ("o", "000000"), ("o", "000001"), ("o", "000002"),
        ("m", "in the middle"), ("r", "100x30"),
        ("o", "000004"), ("o", "000005"), ("o", "000006"),
    ]  # fmt: skip


def test_stopping_in_the_middle_of_a_burst_writes_all_of_it(tmp_path, output_never_pauses):
    # A daemon shutting down while a burst is held loses none of it: only SIGKILL may.
    path = tmp_path / "stop.cast"

    async def main() -> None:
        process, sink = recording(path)
        await burst(sink, 8)
        assert process._queue  # still held when the daemon stops
        process.stop()

    asyncio.run(main())
    assert [e[:6] for e in output_events(path)] == [f"{i:06d}" for i in range(8)]


def test_small_output_is_never_held(tmp_path):
    path = tmp_path / "small.cast"

    async def main() -> None:
        process, sink = recording(path)
        for i in range(20):  # typing-speed output, for longer than QUIET_SECONDS
            sink.output_parts([b"line %d\r\n" % i], float(i))
            assert not process._queue  # in the pipe at once, not held
            assert process._quiet_timer is None  # and nothing watches for its pauses
            await asyncio.sleep(0.01)
        sink.close()

    asyncio.run(main())
    assert output_events(path) == [f"line {i}\r\n" for i in range(20)]


@pytest.mark.timeout(120)
# A 48 MiB flood is held only if it arrives fast enough (12.5 MiB/s): beside the
# other heavy tests, not beside four workers' worth of other load.
@pytest.mark.xdist_group("heavy")
def test_the_daemon_gives_back_the_memory_a_held_burst_took(tachi_home, tmp_path):
    # 48 MiB of output in a recorded session, held whole: the daemon's RSS rises
    # by about that, and glibc keeps the freed pages unless they are given back.
    # Without a session keeper: with one, a window's recording is never more
    # than half an output journal (4 MiB) behind (docs/survival.md, "Recordings").
    tachi_daemon = DaemonProcess(tachi_home)
    tachi_daemon.env["TACHI_KEEPER"] = "off"
    tachi_daemon.start()
    try:
        _held_burst_is_given_back(tachi_daemon, tmp_path)
    finally:
        tachi_daemon.stop()


def _held_burst_is_given_back(tachi_daemon: DaemonProcess, tmp_path: Path) -> None:
    data = tmp_path / "flood.txt"
    data.write_bytes((b"0123456789abcdef" * 4 + b"\n") * (48 * 2**20 // 65))
    assert tachi_daemon.proc is not None
    pid = tachi_daemon.proc.pid
    s = tachi_daemon.new("bash", "--norc", "-c", f"cat {data}; echo FLOOD-DONE; sleep 600")
    until(lambda: "FLOOD-DONE" in tachi_daemon.run("capture", s["id"]).stdout, timeout=60)
    before = memory_kib(pid)["VmRSS"]
    # On a busy machine a flood can come too slowly to be held (nothing to give
    # back then): up to three recorded floods, until one was held.
    for _ in range(3):
        r = tachi_daemon.new(
            "bash", "--norc", "-c", f"cat {data}; echo FLOOD-DONE; sleep 600", record=True
        )
        until(lambda r=r: "FLOOD-DONE" in tachi_daemon.run("capture", r["id"]).stdout, 60)
        recs = json.loads(tachi_daemon.run("record", "ls", "--json", check=True).stdout)
        rec = next(x for x in recs if x["sessionId"] == r["id"])
        until(lambda rec=rec: Path(rec["path"]).stat().st_size > 48 * 2**20, timeout=60)
        status = until(lambda: (st := memory_kib(pid)) and st["VmRSS"] < before + 24 * 1024 and st)
        if status["VmHWM"] > before + 24 * 1024:  # a high-water mark: held once is enough
            break
    assert status["VmHWM"] > before + 24 * 1024, "the burst was not held: nothing to give back"
