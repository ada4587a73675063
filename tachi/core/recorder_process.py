"""The daemon's side of the recorder process (``tachi.core.recorder_worker``).

:class:`RecorderProcess` starts the worker on first use and hands out
:class:`ProcessSink` objects, which look like a recorder's sink to
``tachi.core.recording`` but only queue frames for the worker: the event loop
pays a pipe write per event, not the encoding and the disk. A recorder runs
there when it names a ``worker_factory`` (``"module:callable"`` that makes it
again in the worker); others keep writing in the daemon.

A burst of output is held back while it lasts: the worker's CPU, spent while a
flood runs, is taken from the flood on a small machine (whatever its
scheduling priority), so a burst's frames wait in the daemon (they are already
in memory: holding them costs no copy) and go to the worker once the output
pauses for ``QUIET_SECONDS``. A burst is held for at most ``HOLD_SECONDS`` and
``HOLD_BYTES``; past either, the frames stream to the worker as they come until
the output next pauses, so a recording lags a sustained flood by no more than
the worker's pace. Any other frame (a marker, a resize, a ``SYNC`` for a
reader, a ``CLOSE``) sends what is held first, keeping the events in order.

Nothing is dropped: frames the pipe cannot take yet wait in memory, written as
the worker reads, up to ``MAX_QUEUED`` bytes. Past that (a disk so slow the
worker cannot keep up) the recordings fail with an error, as on a full disk;
the sessions go on.

What waits in the daemon is lost if it is killed; what is in the pipe is not
(the worker outlives it and writes it). So each sink knows how far the output
it was given is *handed over* (:attr:`ProcessSink.handed_seq`: the window
offset just past the last output frame wholly in the pipe); the daemon keeps a
window's journal from there (tachi.core.survival) and stops reading a window
whose recording falls too far behind (tachi.core.recording), so the next
daemon can write what the dead one never handed over.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import logging
import os
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tachi.core import recorder_worker as wire
from tachi.core.helper_process import spawn_module

log = logging.getLogger("tachi.recording")
#: Frames held for a worker that is behind, before its recordings fail.
MAX_QUEUED = 128 * 1024 * 1024
#: An output frame this large (the output of one coalescing period, 20 ms) starts
#: holding a burst: 256 KiB in 20 ms is 12.5 MiB/s, far above what anyone reads.
HOLD_FRAME = 256 * 1024
#: The longest a burst is held, from its first frame: what a daemon killed with
#: SIGKILL in a flood can lose of its recordings (the session loses nothing).
HOLD_SECONDS = 1.0
#: The most a burst holds in memory.
HOLD_BYTES = 64 * 1024 * 1024
#: Output pausing this long ends a burst (longer than the 20 ms coalescing).
QUIET_SECONDS = 0.1
#: A larger pipe than the default 64 KiB: one flush of a flood fits at once.
PIPE_SIZE = 1 << 20
#: How long stopping a recording waits for the worker to finish its file.
CLOSE_TIMEOUT = 15.0
#: How long reading a recording in progress waits for the worker to catch up.
SYNC_TIMEOUT = 5.0
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: Pieces per writev (the kernel takes up to 1024).
_IOV_MAX = 64


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (found in the process itself), or ``None`` on a C
    library without it."""
    with contextlib.suppress(OSError, AttributeError):
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    return None


def give_back_memory() -> None:
    """Return the C heap's free pages to the system (0.1 ms). A burst held in
    memory is thousands of PTY reads, freed once written; glibc keeps the pages
    they leave (a 48 MiB burst left the daemon's RSS 64 MB higher for good)."""
    if (trim := _malloc_trim()) is not None:
        trim(0)


class ProcessSink:
    """A recording sink whose writing happens in the worker. ``on_error(exc)`` is
    called (once) when the worker reports that this recording failed."""

    def __init__(self, process: RecorderProcess, handle: int) -> None:
        self._process = process
        self.handle = handle
        self.on_error: Callable[[OSError], None] | None = None
        self.error: str | None = None
        self.closed = False
        #: The worker has finished the file (its reply to ``CLOSE``).
        self.finished = False
        #: (hex SHA-256, size) of the file as the worker closed it, if it could read it.
        self.digest: tuple[str, int] | None = None
        self._sync_waiters: list[asyncio.Future[None]] = []
        #: The output of window ``handed_window`` up to offset ``handed_seq`` is
        #: in the worker's pipe or written (survives this daemon); -1: none.
        self.handed_window = -1
        self.handed_seq = -1
        #: Called when more output is handed over (set while a window waits for it).
        self.on_handed: Callable[[], None] | None = None

    def output(self, data: bytes, t: float, window: int = -1, seq: int = -1) -> None:
        """Output; ``seq`` is the offset in ``window``'s output just past it."""
        if self.error is None and not self.closed:
            self._process.send_parts(wire.OUTPUT, self.handle, t, [data], window, seq)

    def output_parts(self, parts: list[bytes], t: float, window: int = -1, seq: int = -1) -> None:
        """``output`` of ``b"".join(parts)``, without joining them here: the
        daemon's thread copies a flood once, into the pipe."""
        if self.error is None and not self.closed:
            self._process.send_parts(wire.OUTPUT, self.handle, t, parts, window, seq)

    def input(self, data: bytes, t: float) -> None:
        self._send(wire.INPUT, t, data)

    def resize(self, cols: int, rows: int, t: float) -> None:
        self._send(wire.RESIZE, t, f"{cols},{rows}".encode())

    def marker(self, label: str, t: float) -> None:
        self._send(wire.MARKER, t, label.encode())

    async def synced(self, timeout: float = SYNC_TIMEOUT) -> None:
        """Return once the worker has written everything sent so far (or after
        ``timeout`` seconds, or at once if this recording failed)."""
        if self.error is not None or self.closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._sync_waiters.append(waiter)
        self._process.send(wire.SYNC, self.handle, 0.0, b"")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), timeout)

    def wake_synced(self) -> None:
        """The worker answered a ``SYNC`` (replies come in order: the oldest one)."""
        if self._sync_waiters:
            waiter = self._sync_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """Finish the file; returns once the worker has. Raises ``OSError`` with
        the recording's error, if it had one."""
        if self.closed:
            return
        self.closed = True
        if self.error is None:
            self._process.close_sink(self)
        self._process.forget(self)
        if self.error is not None:
            raise OSError(errno.EIO, self.error)

    def _send(self, kind: int, t: float, payload: bytes) -> None:
        if self.error is None and not self.closed:
            self._process.send(kind, self.handle, t, payload)

    def failed(self, message: str) -> None:
        if self.error is not None:
            return
        self.error = message
        while self._sync_waiters:  # no answer will come for them
            self.wake_synced()
        if self.on_error is not None:
            self.on_error(OSError(errno.EIO, message))


class RecorderProcess:
    """One worker process for all of a daemon's recordings."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._queue: list[bytes] = []
        self._queued = 0
        self._writing = False
        #: A burst's frames are in ``_queue``, not being written (see the module).
        self._holding = False
        self._hold_until = 0.0
        #: This burst was held as long as allowed: stream it until it pauses.
        self._hold_spent = False
        #: A burst was held since the queue was last empty: trim the heap when it is.
        self._held = False
        self._last_output = 0.0
        self._quiet_timer: asyncio.TimerHandle | None = None
        self._lines = b""
        self._sinks: dict[int, ProcessSink] = {}
        self._next = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Bytes of frames accepted, and written to the pipe, since the worker started.
        self._accepted = 0
        self._piped = 0
        #: Output frames not yet wholly in the pipe: (end position, handle, window, seq).
        self._unhanded: collections.deque[tuple[int, int, int, int]] = collections.deque()

    # -- opening -----------------------------------------------------------------
    def open(self, factory: str, path: Path, **args: Any) -> ProcessSink:
        """A sink for a new recording at ``path`` made by ``factory``'s recorder.
        Raises ``OSError`` if the worker cannot be started."""
        self._start()
        handle, self._next = self._next, self._next + 1
        sink = ProcessSink(self, handle)
        self._sinks[handle] = sink
        payload = json.dumps({"recorder": factory, "path": str(path), **args}).encode()
        self.send(wire.OPEN, handle, 0.0, payload)
        return sink

    def _start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is not None:
            self._gone(f"the recorder process exited ({self._proc.returncode})")
        self._loop = asyncio.get_running_loop()
        self._proc = spawn_module("tachi.core.recorder_worker")
        assert self._proc.stdin is not None and self._proc.stdout is not None
        to_worker, from_worker = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(to_worker, _F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(to_worker, False)
        os.set_blocking(from_worker, False)
        self._queue, self._queued, self._writing, self._lines = [], 0, False, b""
        self._holding, self._hold_spent = False, False
        self._accepted, self._piped = 0, 0
        self._unhanded.clear()
        self._loop.add_reader(from_worker, self._read_replies)

    # -- frames to the worker -------------------------------------------------------
    def send(self, kind: int, handle: int, t: float, payload: bytes) -> None:
        self.send_parts(kind, handle, t, [payload])

    def send_parts(
        self,
        kind: int,
        handle: int,
        t: float,
        payload: list[bytes],
        window: int = -1,
        seq: int = -1,
    ) -> None:
        """Send one frame whose payload is ``payload`` joined (output of
        ``window`` up to offset ``seq``, if given)."""
        if self._proc is None:
            return
        size = sum(map(len, payload))
        parts = [wire.HEADER.pack(kind, handle, t, size, window, seq), *(p for p in payload if p)]
        self._accepted += wire.HEADER.size + size
        if seq >= 0:
            self._unhanded.append((self._accepted, handle, window, seq))
        if kind == wire.OUTPUT and self._hold(size):
            self._enqueue(parts)
            return
        if self._holding:
            self._release()  # whatever this frame is, it goes after the held ones
        if not self._queue:
            # The usual case: the pipe takes the whole frame at once, uncopied.
            left = self._write(parts)
            if left is None or not left:
                return
            parts = left
        self._enqueue(parts)
        self._start_writing()

    def _enqueue(self, parts: list[bytes]) -> None:
        self._queue += parts
        self._queued += sum(map(len, parts))
        if self._queued > MAX_QUEUED:
            self._gone(f"the recorder fell {self._queued >> 20} MiB behind (is the disk slow?)")

    # -- holding a burst ------------------------------------------------------------
    def _hold(self, size: int) -> bool:
        """Whether an output frame of ``size`` bytes is held (see the module)."""
        if self._loop is None:
            return False
        # Output between bursts (all of an interactive session's) pays no clock
        # read and no timer: pauses only matter during a burst or its streamed tail.
        if not (self._holding or self._hold_spent) and size < HOLD_FRAME:
            return False
        now = time.monotonic()
        self._last_output = now
        if self._quiet_timer is None:
            self._quiet_timer = self._loop.call_later(QUIET_SECONDS, self._check_quiet)
        if self._holding:
            if now < self._hold_until and self._queued + size <= HOLD_BYTES:
                return True
            self._hold_spent = True
            self._release()
            return False
        if self._hold_spent:
            return False
        self._holding, self._hold_until, self._held = True, now + HOLD_SECONDS, True
        self._stop_writing()
        return True

    def _check_quiet(self) -> None:
        """Timer: has the output paused for ``QUIET_SECONDS``? Then the burst is over."""
        assert self._loop is not None
        self._quiet_timer = None
        idle = time.monotonic() - self._last_output
        if idle < QUIET_SECONDS:
            self._quiet_timer = self._loop.call_later(QUIET_SECONDS - idle, self._check_quiet)
            return
        self._hold_spent = False
        if self._holding:
            self._release()

    def catch_up(self) -> None:
        """A window waits for its recording to be handed over: stop holding the
        burst (it streams to the worker as the pipe takes it)."""
        if self._holding:
            self._hold_spent = True
            self._release()

    def _release(self) -> None:
        """Stop holding: write the held frames as the pipe takes them."""
        self._holding = False
        if self._queue:
            self._start_writing()

    def _start_writing(self) -> None:
        if not self._writing and self._loop and self._proc and self._proc.stdin:
            self._writing = True
            self._loop.add_writer(self._proc.stdin.fileno(), self._flush)

    def _write(self, parts: list[bytes]) -> list[bytes] | None:
        """Write what the pipe takes now; returns what is left of ``parts``, or
        ``None`` if the worker is gone."""
        assert self._proc is not None and self._proc.stdin is not None
        try:
            written = os.writev(self._proc.stdin.fileno(), parts[:_IOV_MAX])
        except BlockingIOError:
            return parts
        except OSError:
            self._gone("the recorder process went away")
            return None
        self._piped += written
        if self._unhanded and self._unhanded[0][0] <= self._piped:
            self._handed()
        while parts and written >= len(parts[0]):
            written -= len(parts[0])
            parts = parts[1:]
        if parts and written:
            parts = [parts[0][written:], *parts[1:]]
        return parts

    def _handed(self) -> None:
        """Output frames are wholly in the pipe now: tell their sinks."""
        woken = []
        while self._unhanded and self._unhanded[0][0] <= self._piped:
            _, handle, window, seq = self._unhanded.popleft()
            sink = self._sinks.get(handle)
            if sink is not None:
                sink.handed_window, sink.handed_seq = window, seq
                if sink.on_handed is not None:
                    woken.append(sink)
        for sink in woken:
            if sink.on_handed is not None:
                sink.on_handed()

    def _flush(self) -> None:
        head = self._queue[:_IOV_MAX]
        left = self._write(head)
        if left is None:
            return
        self._queued -= sum(map(len, head)) - sum(map(len, left))
        self._queue = left + self._queue[_IOV_MAX:]
        if not self._queue:
            self._stop_writing()
            if self._held:
                self._held = False
                give_back_memory()

    def _stop_writing(self) -> None:
        if self._writing and self._loop is not None and self._proc and self._proc.stdin:
            self._loop.remove_writer(self._proc.stdin.fileno())
        self._writing = False

    def _unwatch(self) -> None:
        """Stop the event loop watching the worker's pipes."""
        self._stop_writing()
        self._holding = False
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        if self._loop is not None and self._proc is not None and self._proc.stdout is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._proc.stdout.fileno())

    # -- replies ----------------------------------------------------------------------
    def _read_replies(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            data = os.read(self._proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            code = self._proc.poll()
            self._gone(f"the recorder process exited ({code})")
            return
        self._lines += data
        *lines, self._lines = self._lines.split(b"\n")
        for line in lines:
            self._reply(line)

    def _reply(self, line: bytes) -> None:
        try:
            reply = json.loads(line)
        except ValueError:
            log.error("the recorder process said %r", line[:200])
            return
        handle = reply.get("handle")
        if reply.get("event") == "closed":
            sink = self._sinks.get(handle)
            if sink is not None:
                sink.finished = True
                if isinstance(reply.get("sha256"), str) and isinstance(reply.get("size"), int):
                    sink.digest = (reply["sha256"], reply["size"])
                if reply.get("message"):
                    sink.error = sink.error or str(reply["message"])
        elif reply.get("event") == "synced":
            sink = self._sinks.get(handle)
            if sink is not None:
                sink.wake_synced()
        elif reply.get("event") == "error":
            sink = self._sinks.get(handle)
            if sink is not None:
                sink.failed(str(reply.get("message")))

    # -- closing ------------------------------------------------------------------------
    def close_sink(self, sink: ProcessSink) -> None:
        """Send ``CLOSE`` and wait (blocking, bounded) until the worker has finished
        that file: whoever stops a recording reads its size next."""
        self.send(wire.CLOSE, sink.handle, 0.0, b"")
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while not sink.finished and sink.error is None:
            if self._proc is None or time.monotonic() > deadline:
                sink.error = sink.error or "the recorder process did not finish the file"
                break
            assert self._proc.stdin is not None and self._proc.stdout is not None
            writers = [self._proc.stdin.fileno()] if self._queue else []
            readable, writable, _ = select.select(
                [self._proc.stdout.fileno()], writers, [], max(0.0, deadline - time.monotonic())
            )
            if writable:
                self._flush()
            if readable:
                self._read_replies()

    def forget(self, sink: ProcessSink) -> None:
        """A sink is closed: no reply for it is awaited any more."""
        self._sinks.pop(sink.handle, None)

    def _gone(self, message: str) -> None:
        """The worker died or cannot keep up: every recording it had fails."""
        self._unwatch()
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(1)
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
        self._queue, self._queued = [], 0
        self._unhanded.clear()
        sinks, self._sinks = self._sinks, {}
        for sink in sinks.values():
            sink.failed(message)

    def stop(self) -> None:
        """End the worker after it has written everything (daemon shutdown)."""
        proc = self._proc
        if proc is None:
            return
        deadline = time.monotonic() + CLOSE_TIMEOUT
        assert proc.stdin is not None
        while self._queue and time.monotonic() < deadline:
            select.select([], [proc.stdin.fileno()], [], 0.5)
            self._flush()
            if self._proc is None:
                return
        self._unwatch()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None
