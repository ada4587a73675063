"""tachi-gzcast: a recorder that writes asciicast v2 lines gzipped, and reads them
back (``export``) so that ``tachi play`` and ``tachi record export`` work.

Select it with ``[recording] format = "gzcast"`` in config.toml."""

from __future__ import annotations

import gzip
import json
import shutil
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import tachi


class Sink:
    """One recording: each event is one JSON line, flushed to the file at once
    (a sync flush), so a crash loses at most the event being written."""

    def __init__(self, path: Path, width: int, height: int, timestamp_ns: int) -> None:
        self.file = gzip.open(path, "wb")  # noqa: SIM115 (open until close())
        self._write(
            {
                "version": 2,
                "width": width,
                "height": height,
                "timestamp": timestamp_ns // 1_000_000_000,
            }
        )

    def _write(self, value: Any) -> None:
        self.file.write(json.dumps(value).encode() + b"\n")
        self.file.flush(zlib.Z_SYNC_FLUSH)

    def output(self, data: bytes, t: float) -> None:
        self._write([round(t, 6), "o", data.decode("utf-8", "replace")])

    def input(self, data: bytes, t: float) -> None:
        self._write([round(t, 6), "i", data.decode("utf-8", "replace")])

    def resize(self, cols: int, rows: int, t: float) -> None:
        self._write([round(t, 6), "r", f"{cols}x{rows}"])

    def marker(self, label: str, t: float) -> None:
        self._write([round(t, 6), "m", label])

    def close(self) -> None:
        self.file.close()


class Recorder:
    format = "gzcast"
    extension = ".cast.gz"

    def open(self, path: Path, *, width: int, height: int, timestamp_ns: int, **_: Any) -> Sink:
        return Sink(path, width, height, timestamp_ns)

    def export(self, path: Path, out: BinaryIO) -> None:
        """The reader: the recording as asciicast v2 (tachi checks that it parses)."""
        with gzip.open(path, "rb") as f:
            shutil.copyfileobj(f, out)


@tachi.hookimpl
def tachi_recorders(register: Any) -> None:
    register(Recorder())
