"""The recorder process: writes recordings for the daemon, off its event loop.

Encoding output (JSON escaping, for asciicast) and writing it to disk cost the
daemon's only thread a few milliseconds per megabyte, and a slow or full disk
would stall every session. So the daemon sends each recording's events down a
pipe to this process (``python -m tachi.core.recorder_worker``), which owns the
sinks. One worker serves every recording of a daemon.

Frames to the worker: ``kind (1 B) | handle (uint32) | t (double) | length
(uint32) | window (int32) | seq (int64) | payload``; an ``OUTPUT`` frame names
the window its bytes come from and that window's output offset just past them
(-1, -1 when it does not). ``OPEN``'s payload is JSON: the recorder
(``"module:callable"``) and the arguments of its ``open``. Replies are JSON
lines: ``{"handle", "event": "error", "message"}`` when a sink fails (it is
dropped; later frames for it are ignored; a recorder's own exception is named
with its type and the recorder) and ``{"handle", "event": "closed", "sha256",
"size"}`` once ``CLOSE`` has finished the file (the digest of the file as
closed, for the audit log); ``{"handle", "event": "synced"}`` once
everything sent before ``SYNC`` is in the file (the file exists from ``OPEN``).
At end of input (the daemon stopped or died) every open sink is closed, so
what was sent is on disk.

**Where a recording is up to** (docs/survival.md, "Recordings"). For every
recording it writes, the worker keeps a small state file next to it
(:func:`state_path`): after each event, the file's size and the window and
output offset of the last output written (one ``pwrite``, here, off the
daemon's path). It holds an exclusive ``flock`` on that file for as long as it
writes the recording. A daemon that goes on with a recording after a crash
waits for that lock (the previous worker still drains what the dead daemon
sent it), then knows exactly which output the file holds: it appends from
there, so nothing is written twice and nothing is skipped. The state file goes
when the recording is stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import signal
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HEADER = struct.Struct("!BIdIiq")
OPEN, OUTPUT, INPUT, RESIZE, MARKER, CLOSE, SYNC = range(1, 8)

#: The state file: magic, the recording's size, window, output offset.
_STATE = struct.Struct("<8sqiq")
_STATE_MAGIC = b"TRECSEQ1"
#: How long going on with a recording waits for the previous writer to finish it.
PREVIOUS_WRITER_SECONDS = 20.0


@dataclass
class RecordedUpTo:
    """What a recording file holds: its ``size`` when the last event was
    written (-1: unknown), and the output of ``window`` up to offset ``seq``
    (-1, -1: none yet)."""

    size: int
    window: int
    seq: int


def state_path(path: Path) -> Path:
    """The state file of the recording at ``path`` (hidden, beside it)."""
    return path.with_name(f".{path.name}.seq")


def lock_state(path: Path, timeout: float = PREVIOUS_WRITER_SECONDS) -> int:
    """Open (creating) the state file of the recording at ``path`` and take its
    exclusive lock, waiting up to ``timeout`` seconds for a writer that still
    holds it (a recorder process whose daemon died, draining what it was sent).
    Returns the descriptor, which holds the lock until closed. Raises
    ``TimeoutError`` if the writer did not finish in time, ``OSError`` else."""
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(state_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"the previous recorder of {path} is still writing it"
                        ) from None
                    time.sleep(0.01)
            if os.fstat(fd).st_nlink:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed by its writer as we waited: take the new one


def read_state(fd: int) -> RecordedUpTo | None:
    """What the state file open at ``fd`` says (``None`` if empty or not one)."""
    data = os.pread(fd, _STATE.size, 0)
    if len(data) < _STATE.size:
        return None
    magic, size, window, seq = _STATE.unpack(data)
    return RecordedUpTo(size, window, seq) if magic == _STATE_MAGIC else None


def write_state(fd: int, state: RecordedUpTo) -> None:
    """Say where the recording is up to (one ``pwrite`` of 28 bytes, in place)."""
    os.pwrite(fd, _STATE.pack(_STATE_MAGIC, state.size, state.window, state.seq), 0)


def recorded_up_to(path: Path, timeout: float = PREVIOUS_WRITER_SECONDS) -> RecordedUpTo | None:
    """Wait (bounded, see :func:`lock_state`) until no recorder process writes
    the recording at ``path`` any more, then return where it is up to, or
    ``None`` if no state file says. Raises ``TimeoutError``/``OSError``."""
    if not state_path(path).exists():
        return None
    fd = lock_state(path, timeout)
    try:
        return read_state(fd)
    finally:
        os.close(fd)


def forget_state(path: Path) -> None:
    """Remove the state file of a recording that is finished."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path(path))


class _Written:
    """A recording open in the worker: its state file (locked) and what it says."""

    def __init__(self, path: Path, fd: int, state: RecordedUpTo) -> None:
        self.path = path
        self.fd = fd
        self.state = state

    def wrote(self, sink: Any, window: int = -1, seq: int = -1) -> None:
        """An event is in the file: record the file's size (and the output offset)."""
        if seq >= 0:
            self.state.window, self.state.seq = window, seq
        size = getattr(sink, "size", -1)
        self.state.size = size if isinstance(size, int) else -1
        write_state(self.fd, self.state)

    def close(self, *, finished: bool) -> None:
        """Let go of the lock; a ``finished`` recording needs its state no more."""
        if finished:
            forget_state(self.path)
        os.close(self.fd)


def _open_state(path: Path, *, resume: bool) -> _Written:
    """Lock the state file of a recording about to be written. Going on with one,
    first cut what the file holds past the last event the state file counted
    (a writer killed between the two), so what it says is exact."""
    fd = lock_state(path)
    try:
        state = read_state(fd) if resume else None
        if state is None:
            state = RecordedUpTo(-1, -1, -1)
        elif state.size > 0:
            with contextlib.suppress(OSError), open(path, "rb+") as f:
                if f.seek(0, os.SEEK_END) > state.size:
                    f.truncate(state.size)
    except BaseException:
        os.close(fd)
        raise
    return _Written(path, fd, state)


def load_recorder(spec: str) -> Any:
    """``"module:callable"`` → the recorder that callable returns."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


def file_digest(path: Path) -> tuple[str, int]:
    """(hex SHA-256, size) of the file at ``path``, read in blocks. Raises ``OSError``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def failure_text(exc: BaseException, recorder: str) -> str:
    """One line saying why a sink failed: an ``OSError``'s reason (a full disk
    is the disk's fault), else the exception's type and message and the recorder
    that raised it (a bug in a plugin is named as one)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{message} (raised by the recorder {recorder})"


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def _reply(out: IO[str], handle: int, event: str, message: str | None = None, **extra: Any) -> None:
    reply: dict[str, Any] = {"handle": handle, "event": event, **extra}
    if message is not None:
        reply["message"] = message
    # A daemon that died hears nothing; what it sent is still written.
    with contextlib.suppress(BrokenPipeError):
        out.write(json.dumps(reply) + "\n")
        out.flush()


def serve(stream: IO[bytes], out: IO[str]) -> None:
    sinks: dict[int, Any] = {}
    recorders: dict[str, Any] = {}
    opened: dict[int, tuple[str, Path]] = {}  # handle -> (recorder, path)
    written: dict[int, _Written] = {}
    while (head := _read_exactly(stream, HEADER.size)) is not None:
        kind, handle, t, length, window, seq = HEADER.unpack(head)
        payload = _read_exactly(stream, length) if length else b""
        if payload is None:
            break
        if kind == CLOSE:
            sink = sinks.pop(handle, None)
            spec, path = opened.pop(handle, ("?", None))
            error = None
            if sink is not None:
                try:
                    sink.close()
                except Exception as exc:
                    error = failure_text(exc, spec)
            if handle in written:
                with contextlib.suppress(OSError):
                    written.pop(handle).close(finished=True)
            extra: dict[str, Any] = {}
            if path is not None:
                with contextlib.suppress(OSError):
                    extra["sha256"], extra["size"] = file_digest(path)
            _reply(out, handle, "closed", error, **extra)
            continue
        if kind == SYNC:
            _reply(out, handle, "synced")
            continue
        if kind != OPEN and handle not in sinks:
            continue  # failed earlier: its error was reported
        try:
            if kind == OPEN:
                args = json.loads(payload)
                spec = args.pop("recorder")
                path = Path(args.pop("path"))
                opened[handle] = (spec, path)
                if spec not in recorders:
                    recorders[spec] = load_recorder(spec)
                resume = args.pop("resume", False)
                if resume:  # a recording an adopted session goes on with
                    # Once the previous writer has let go of it (see the module).
                    written[handle] = _open_state(path, resume=True)
                    sinks[handle] = recorders[spec].resume(path, **args)
                else:
                    sinks[handle] = recorders[spec].open(path, **args)
                    written[handle] = _open_state(path, resume=False)
                written[handle].wrote(sinks[handle])
                continue
            elif kind == OUTPUT:
                sinks[handle].output(payload, t)
            elif kind == INPUT:
                sinks[handle].input(payload, t)
            elif kind == RESIZE:
                cols, rows = payload.split(b",")
                sinks[handle].resize(int(cols), int(rows), t)
            elif kind == MARKER:
                sinks[handle].marker(payload.decode(), t)
            if handle in written:
                written[handle].wrote(sinks[handle], window, seq)
        except Exception as exc:  # a failing sink is reported, never the end of the others
            sink = sinks.pop(handle, None)
            spec = opened.pop(handle, ("?", None))[0]
            _reply(out, handle, "error", failure_text(exc, spec))
            if sink is not None:
                # Its file stays as far as it got; the sink may hold it open.
                with contextlib.suppress(Exception):
                    sink.close()
            if handle in written:  # a failed recording is not gone on with
                with contextlib.suppress(OSError):
                    written.pop(handle).close(finished=True)
    # The daemon stopped or died: finish every file, and keep saying where each
    # is up to (the next daemon goes on from there) until the lock goes with us.
    for handle, sink in sinks.items():
        with contextlib.suppress(Exception):
            sink.close()
            if handle in written:
                written[handle].wrote(sink)


def main() -> None:
    # The daemon decides when recordings end; a Ctrl-C meant for it (tachid in
    # the foreground) must not cut the files short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout)


if __name__ == "__main__":
    main()
