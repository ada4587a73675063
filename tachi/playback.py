"""Reading asciicast files, repairing crash-cut ones, and playing them in real time."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tachi.errors import InvalidRequest


@dataclass(slots=True)
class CastHeader:
    version: int
    width: int
    height: int
    timestamp: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    title: str | None = None
    idle_time_limit: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CastEvent:
    time: float
    code: str
    data: str


def read_cast(path: Path) -> tuple[CastHeader, list[CastEvent]]:
    """Parse an asciicast v2 (or v3) file.

    An unparsable *last* line is ignored: that is what a crash mid-write leaves.
    Anything else malformed raises ``ValueError`` naming the line.
    """
    # Lines end in "\n" alone: splitlines() would also cut at U+2028, U+0085 and
    # the like, which JSON strings carry unescaped.
    lines = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: empty file")
    try:
        raw = json.loads(lines[0])
    except json.JSONDecodeError:
        raise ValueError(f"{path}:1: not an asciicast header") from None
    if not isinstance(raw, dict) or raw.get("version") not in (2, 3):
        raise ValueError(f"{path}:1: not an asciicast v2/v3 header")
    term = raw.get("term") or {}
    header = CastHeader(
        version=raw["version"],
        width=int(raw.get("width") or term.get("cols") or 80),
        height=int(raw.get("height") or term.get("rows") or 24),
        timestamp=raw.get("timestamp"),
        env=dict(raw.get("env") or {}),
        title=raw.get("title"),
        idle_time_limit=raw.get("idle_time_limit"),
        raw=raw,
    )
    events: list[CastEvent] = []
    clock = 0.0
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            t, code, data = json.loads(line)
        except (json.JSONDecodeError, ValueError, TypeError):
            if number == len(lines):
                break  # cut short by a crash
            raise ValueError(f"{path}:{number}: not an asciicast event") from None
        # v3 stores the interval since the previous event; v2 the time since start.
        clock = clock + float(t) if header.version == 3 else float(t)
        events.append(CastEvent(clock, str(code), str(data)))
    return header, events


def repair_cast(path: Path) -> bool:
    """Cut a partial last line (left by a crash) so every tool reads the file.

    Returns whether anything was cut."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        os.fsync(f.fileno())
    return True


#: A cut recording's tail is looked for in its last this many bytes.
_TAIL = 1 << 20


def end_on_a_whole_event(path: Path) -> bool:
    """Make a copy of a recording that was cut mid-event (a full disk, a crash)
    end on its last whole event, followed by a marker saying it was cut there,
    so every asciicast tool reads it. Returns whether it was cut.

    Only the tail is read, so this is cheap on recordings of any size."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL)
        f.seek(start)
        tail = f.read()
        body = tail[:-1] if tail.endswith(b"\n") else tail
        line_start = body.rfind(b"\n")  # where the last line begins (-1: in the tail's start)
        if not body or _is_event(body[line_start + 1 :]):
            if body and not tail.endswith(b"\n"):
                f.write(b"\n")  # a whole event that only lacks its newline
            return False
        if line_start < 0:
            return False  # no whole line in the tail: not ours to judge
        when = _event_time(body[:line_start].rsplit(b"\n", 1)[-1])
        f.truncate(start + line_start + 1)
        f.seek(start + line_start + 1)
        marker = [when, "m", "the recording was cut here (its file ended mid-event)"]
        f.write(json.dumps(marker).encode() + b"\n")
    return True


def _is_event(line: bytes) -> bool:
    try:
        value = json.loads(line)
    except ValueError:
        return False
    return isinstance(value, list | dict)  # an event, or the header of an empty recording


def _event_time(line: bytes) -> float:
    try:
        value = json.loads(line)
        return float(value[0]) if isinstance(value, list) else 0.0
    except (ValueError, TypeError, IndexError):
        return 0.0


def cast_summary(path: Path) -> dict[str, Any]:
    header, events = read_cast(path)
    return {
        "width": header.width,
        "height": header.height,
        "duration": events[-1].time if events else 0.0,
        "events": len(events),
        "size": os.path.getsize(path),
    }


def load_cast(path: Path) -> tuple[CastHeader, list[CastEvent]]:
    """:func:`read_cast` for user-named files: raises ``InvalidRequest`` (one line)
    for a file that is not a recording, ``OSError`` if it can't be read."""
    try:
        return read_cast(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path} is not an asciicast recording ({exc})") from None


def play(
    path: Path,
    out: BinaryIO,
    *,
    speed: float = 1.0,
    idle_limit: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Write the recording's output to ``out`` in real time (see :func:`play_events`).

    Raises ``InvalidRequest`` if ``path`` is not a recording.
    """
    header, events = load_cast(path)
    play_events(header, events, out, speed=speed, idle_limit=idle_limit, sleep=sleep)


def play_events(
    header: CastHeader,
    events: list[CastEvent],
    out: BinaryIO,
    *,
    speed: float = 1.0,
    idle_limit: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Write a parsed recording's output to ``out`` in real time.

    Delays are divided by ``speed`` and capped at ``idle_limit`` (or the file's
    ``idle_time_limit``). Resize events cannot resize the viewer's terminal and
    are skipped. ``KeyboardInterrupt`` propagates to the caller.
    """
    cap = idle_limit if idle_limit is not None else header.idle_time_limit
    previous = 0.0
    for event in events:
        if event.code != "o":
            continue
        delay = event.time - previous
        previous = event.time
        if cap is not None:
            delay = min(delay, cap)
        if delay > 0:
            sleep(delay / speed)
        out.write(event.data.encode())
        out.flush()


def installed_recorders() -> dict[str, Any]:
    """Every recorder installed here (``tachi_recorders``), by format."""
    from tachi.hooks import Hooks
    from tachi.plugins import make_plugin_manager

    return Hooks(make_plugin_manager(hooks=("tachi_recorders",))).recorders()


def reader_for(fmt: str, recorders: dict[str, Any] | None = None) -> Any:
    """The installed recorder that can turn recordings in format ``fmt`` into
    asciicast v2 (its ``export(path, out)``).

    Raises ``InvalidRequest`` (one line) when no recorder of that format is
    installed here, or it has no ``export``: tachi cannot read its files."""
    recorder = (installed_recorders() if recorders is None else recorders).get(fmt)
    if recorder is None:
        raise InvalidRequest(
            f"recordings in format {fmt!r} cannot be read here: no recorder of that"
            " format is installed (install the plugin that recorded it)"
        )
    if not callable(getattr(recorder, "export", None)):
        raise InvalidRequest(
            f"recordings in format {fmt!r} cannot be played or exported: its recorder"
            f" ({type(recorder).__module__}) has no export(path, out)"
        )
    return recorder


def to_asciicast(recorder: Any, src: Path, dest: Path) -> None:
    """Write ``src`` (a recording in ``recorder``'s format) to ``dest`` as asciicast
    v2 through the recorder's ``export(path, out)``, and check that it parses.

    Raises ``InvalidRequest`` naming the recorder if the export fails or writes
    something that is not asciicast; ``dest`` may then hold part of it (the
    caller writes to a temporary file)."""
    name = f"{recorder.format!r} ({type(recorder).__module__})"
    try:
        with open(dest, "wb") as out:
            recorder.export(Path(src), out)
    except OSError as exc:
        raise InvalidRequest(f"cannot export {src}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise InvalidRequest(
            f"the recorder {name} failed to export {src}: {type(exc).__name__}: {exc}"
        ) from None
    try:
        read_cast(dest)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"the recorder {name} exported {src} as something that is not asciicast ({exc})"
        ) from None


def export(path: Path, dest: Path) -> int:
    """Copy a recording after checking it parses; returns the size written."""
    read_cast(path)
    data = Path(path).read_bytes()
    Path(dest).write_bytes(data)
    return len(data)
