"""The recorder process: writes recordings for the daemon, off its event loop.

Encoding output (JSON escaping, for asciicast) and writing it to disk cost the
daemon's only thread a few milliseconds per megabyte, and a slow or full disk
would stall every session. So the daemon sends each recording's events down a
pipe to this process (``python -m tachi.core.recorder_worker``), which owns the
sinks. One worker serves every recording of a daemon.

Frames to the worker: ``kind (1 B) | handle (uint32) | t (double) | length
(uint32) | payload``. ``OPEN``'s payload is JSON: the recorder
(``"module:callable"``) and the arguments of its ``open``. Replies are JSON
lines: ``{"handle", "event": "error", "message"}`` when a sink fails (it is
dropped; later frames for it are ignored; a recorder's own exception is named
with its type and the recorder) and ``{"handle", "event": "closed", "sha256",
"size"}`` once ``CLOSE`` has finished the file (the digest of the file as
closed, for the audit log); ``{"handle", "event": "synced"}`` once
everything sent before ``SYNC`` is in the file (the file exists from ``OPEN``).
At end of input (the daemon stopped or died) every open sink is closed, so
what was sent is on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import signal
import struct
import sys
from pathlib import Path
from typing import IO, Any

HEADER = struct.Struct("!BIdI")
OPEN, OUTPUT, INPUT, RESIZE, MARKER, CLOSE, SYNC = range(1, 8)


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
    out.write(json.dumps(reply) + "\n")
    out.flush()


def serve(stream: IO[bytes], out: IO[str]) -> None:
    sinks: dict[int, Any] = {}
    recorders: dict[str, Any] = {}
    opened: dict[int, tuple[str, Path]] = {}  # handle -> (recorder, path)
    while (head := _read_exactly(stream, HEADER.size)) is not None:
        kind, handle, t, length = HEADER.unpack(head)
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
                if args.pop("resume", False):  # a recording an adopted session goes on with
                    sinks[handle] = recorders[spec].resume(path, **args)
                else:
                    sinks[handle] = recorders[spec].open(path, **args)
            elif kind == OUTPUT:
                sinks[handle].output(payload, t)
            elif kind == INPUT:
                sinks[handle].input(payload, t)
            elif kind == RESIZE:
                cols, rows = payload.split(b",")
                sinks[handle].resize(int(cols), int(rows), t)
            elif kind == MARKER:
                sinks[handle].marker(payload.decode(), t)
        except Exception as exc:  # a failing sink is reported, never the end of the others
            sink = sinks.pop(handle, None)
            spec = opened.pop(handle, ("?", None))[0]
            _reply(out, handle, "error", failure_text(exc, spec))
            if sink is not None:
                # Its file stays as far as it got; the sink may hold it open.
                with contextlib.suppress(Exception):
                    sink.close()
    for sink in sinks.values():
        with contextlib.suppress(Exception):
            sink.close()


def main() -> None:
    # The daemon decides when recordings end; a Ctrl-C meant for it (tachid in
    # the foreground) must not cut the files short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout)


if __name__ == "__main__":
    main()
