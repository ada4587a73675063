"""Recordings: which sessions are being recorded, into which files, and the index.

The recorder itself (the file format) is a plugin (``tachi_recorders``); this
module decides what goes in: the screen as it was when recording started, then
the active window's output, resizes, and a marker plus a redraw at every window
switch, so playback shows what attached clients saw. A write error (disk full)
stops that recording, is audited, and never touches the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tachi.core.recorder_process import ProcessSink, RecorderProcess
from tachi.errors import Conflict, InvalidRequest, NotFound, TachiError
from tachi.gotime import now_ns
from tachi.models import Recording

if TYPE_CHECKING:
    from tachi.core.session import SessionRuntime
    from tachi.core.window import WindowRuntime

log = logging.getLogger("tachi.recording")
#: Output within this many seconds is written as one asciicast event.
COALESCE_SECONDS = 0.02

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    error TEXT
);
"""


@dataclass
class _Live:
    """A recording in progress."""

    recording: Recording
    sink: Any
    started: float
    session: SessionRuntime
    record_input: bool
    listener: Any = None
    pending: list[bytes] = field(default_factory=list)
    pending_t: float = 0.0
    flush_timer: asyncio.TimerHandle | None = None

    def t(self) -> float:
        return time.monotonic() - self.started


@dataclass
class StreamRecording:
    """An open recording fed directly (not by a session's windows)."""

    db: Any
    id: str
    path: str
    sink: Any
    started: float

    def output(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # a full disk ends the recording, not the command
            self.sink.output(data, time.monotonic() - self.started)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sink.close()
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        duration = int((time.monotonic() - self.started) * 1e9)
        self.db.execute(
            "UPDATE recordings SET active = 0, duration_ns = ?, size = ? WHERE id = ?",
            (duration, size, self.id),
        )


class RecordingManager:
    """Starts, stops, lists and repairs recordings; one live recording per session."""

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        directory: Path,
        recorder: Any,
        record_input: bool,
        audit: Any,
    ) -> None:
        self._db = db
        db.executescript(_SCHEMA)
        self.directory = directory
        self.recorder = recorder
        self.record_input = record_input
        self._audit = audit
        self.live: dict[str, _Live] = {}
        #: Where recorders that name a ``worker_factory`` write (started on first use).
        self.process = RecorderProcess()

    # -- lifecycle --------------------------------------------------------------
    def repair(self) -> int:
        """Recordings a crashed daemon left ``active``: cut any partial last line,
        measure what is there, and mark them finished. Returns how many."""
        rows = self._db.execute("SELECT id, path FROM recordings WHERE active = 1").fetchall()
        if not rows:
            return 0
        from tachi.playback import cast_summary, repair_cast

        for rec_id, path in rows:
            size, duration = 0, 0
            with contextlib.suppress(OSError, ValueError):
                repair_cast(Path(path))
                summary = cast_summary(Path(path))
                size, duration = summary["size"], int(summary["duration"] * 1e9)
            self._db.execute(
                "UPDATE recordings SET active = 0, size = ?, duration_ns = ?,"
                " error = COALESCE(error, 'daemon stopped unexpectedly') WHERE id = ?",
                (size, duration, rec_id),
            )
        return len(rows)

    def start(self, session: SessionRuntime, principal: str) -> Recording:
        """Start recording ``session`` from its current screen.

        Raises ``Conflict`` if it is already recorded and ``InvalidRequest`` if the
        file cannot be created."""
        if self.recorder is None:
            raise InvalidRequest("no recorder is installed for the configured recording.format")
        if session.id in self.live:
            raise Conflict(f"session {session.id} is already being recorded")
        rec_id = secrets.token_hex(4)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / f"{session.id}-{rec_id}{self.recorder.extension}"
        pty = session.info.pty
        assert pty is not None
        start = now_ns()
        options: dict[str, Any] = {
            "width": pty.cols,
            "height": pty.rows,
            "timestamp_ns": start,
            "env": {"TERM": pty.term, "SHELL": session.env.get("SHELL", "/bin/sh")},
            "title": session.info.name or f"tachi session {session.id}",
            "record_input": self.record_input,
        }
        factory = getattr(self.recorder, "worker_factory", None)
        try:
            if factory:
                # The worker opens the file later; what can be known now is said now.
                if not os.access(self.directory, os.W_OK | os.X_OK):
                    raise PermissionError(errno.EACCES, "Permission denied", str(self.directory))
                sink = self.process.open(factory, path, **options)
            else:
                sink = self.recorder.open(path, **options)
        except OSError as exc:
            raise InvalidRequest(f"cannot create recording {path}: {exc.strerror or exc}") from None
        recording = Recording(
            id=rec_id,
            sessionId=session.id,
            startTime=start,
            duration=0,
            size=0,
            format=self.recorder.format,
            path=str(path),
            active=True,
        )
        live = _Live(recording, sink, time.monotonic(), session, self.record_input)
        self.live[session.id] = live
        if isinstance(sink, ProcessSink):
            # The worker reports a failed write (a full disk) after the fact.
            sink.on_error = lambda exc: self._failed(live, exc)
        self._db.execute(
            "INSERT INTO recordings(id, session_id, path, format, start_ns) VALUES (?, ?, ?, ?, ?)",
            (rec_id, session.id, str(path), recording.format, start),
        )

        def on_output(window: WindowRuntime, data: bytes) -> None:
            # Output arriving within COALESCE_SECONDS becomes one event: a flood
            # costs a few writes instead of one JSON line per PTY read, and a
            # crash still loses at most that much.
            if not live.pending:
                live.pending_t = live.t()
                live.flush_timer = asyncio.get_running_loop().call_later(
                    COALESCE_SECONDS, self._flush, live
                )
            live.pending.append(data)

        live.listener = on_output
        session.output_listeners.append(on_output)
        # What the user saw when recording started, so playback doesn't begin blank.
        window = session.mux.get(None)
        self._write(live, lambda: live.sink.output(window.screen.ansi().encode(), 0.0))
        self._audit(
            action="record.start",
            result="allowed",
            principal=principal,
            source="daemon",
            session=session.id,
            details={"recording": rec_id, "path": str(path)},
        )
        return recording

    def stop(
        self, session_id: str, principal: str = "tachid", error: str | None = None
    ) -> Recording:
        """Finish the session's recording. Raises ``NotFound`` if none is running."""
        live = self.live.pop(session_id, None)
        if live is None:
            raise NotFound(f"session {session_id} is not being recorded")
        with contextlib.suppress(ValueError):
            live.session.output_listeners.remove(live.listener)
        self._flush(live)
        try:
            live.sink.close()
        except OSError as exc:
            error = error or f"closing failed: {exc.strerror or exc}"
        rec = live.recording
        rec.active = False
        rec.duration = int(live.t() * 1e9)
        with contextlib.suppress(OSError):
            rec.size = os.path.getsize(rec.path or "")
        self._db.execute(
            "UPDATE recordings SET active = 0, duration_ns = ?, size = ?, error = ? WHERE id = ?",
            (rec.duration, rec.size, error, rec.id),
        )
        self._audit(
            action="record.stop",
            result="error" if error else "allowed",
            principal=principal,
            source="daemon",
            session=session_id,
            reason=error,
            details={"recording": rec.id, "size": rec.size},
        )
        return rec

    # -- what gets recorded ---------------------------------------------------------
    def _flush(self, live: _Live) -> None:
        """Write the output collected since the last flush as one event."""
        if live.flush_timer is not None:
            live.flush_timer.cancel()
            live.flush_timer = None
        if not live.pending:
            return
        chunks, live.pending = live.pending, []
        sink = live.sink
        if isinstance(sink, ProcessSink):
            self._write(live, lambda: sink.output_parts(chunks, live.pending_t))
        else:
            self._write(live, lambda: sink.output(b"".join(chunks), live.pending_t))

    def input(self, session: SessionRuntime, data: bytes) -> None:
        live = self.live.get(session.id)
        if live is not None and live.record_input:
            self._flush(live)
            self._write(live, lambda: live.sink.input(data, live.t()))

    def session_event(self, session: SessionRuntime, event: str, details: dict[str, Any]) -> None:
        live = self.live.get(session.id)
        if live is None:
            return
        self._flush(live)  # keep events in order
        if event == "window-switched":
            window = session.mux.get(None)
            self._write(
                live, lambda: live.sink.marker(f"window {window.id}: {window.name}", live.t())
            )
            self._write(live, lambda: live.sink.output(window.screen.ansi().encode(), live.t()))
        elif event == "resized":
            self._write(live, lambda: live.sink.resize(details["cols"], details["rows"], live.t()))
        elif event == "closed":
            self.stop(session.id)

    def marker(self, session_id: str, label: str) -> None:
        """Add a marker (shares, handoffs) to the session's recording, if any."""
        live = self.live.get(session_id)
        if live is not None:
            self._flush(live)
            self._write(live, lambda: live.sink.marker(label, live.t()))

    def _write(self, live: _Live, action: Any) -> None:
        try:
            action()
        except OSError as exc:
            self._failed(live, exc)

    def _failed(self, live: _Live, exc: OSError) -> None:
        if live.session.id not in self.live:
            return
        reason = f"write failed: {exc.strerror or exc}"
        log.error("recording %s of %s stopped: %s", live.recording.id, live.session.id, reason)
        with contextlib.suppress(TachiError):
            self.stop(live.session.id, error=reason)
        live.session.broadcast(
            {"event": "notice", "level": "error", "message": f"tachi: recording stopped: {reason}"}
        )
        # stop() audited record.stop with the error; record.error names the failure
        # itself. If the audit log is on the same full disk, the session still goes on.
        with contextlib.suppress(Exception):
            self._audit(
                action="record.error",
                result="error",
                principal="tachid",
                source="daemon",
                session=live.session.id,
                reason=reason,
                details={"recording": live.recording.id},
            )

    def record_stream(
        self, label: str, principal: str, *, width: int = 80, height: int = 24
    ) -> StreamRecording:
        """A recording of output that belongs to no session (``tachi exec
        --record``), listed as ``exec-ID``. Raises ``InvalidRequest`` if no
        recorder is installed or the file cannot be created."""
        if self.recorder is None:
            raise InvalidRequest("no recorder is installed for the configured recording.format")
        rec_id = secrets.token_hex(4)
        owner = f"exec-{rec_id}"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / f"{owner}{self.recorder.extension}"
        start = now_ns()
        try:
            sink = self.recorder.open(
                path, width=width, height=height, timestamp_ns=start, env={}, title=label,
                record_input=False,
            )  # fmt: skip
        except OSError as exc:
            raise InvalidRequest(f"cannot create recording {path}: {exc.strerror or exc}") from None
        self._db.execute(
            "INSERT INTO recordings(id, session_id, path, format, start_ns) VALUES (?, ?, ?, ?, ?)",
            (rec_id, owner, str(path), self.recorder.format, start),
        )
        self._audit(
            action="record.start", result="allowed", principal=principal, source="daemon",
            session=None, details={"recording": rec_id, "path": str(path), "exec": label},
        )  # fmt: skip
        return StreamRecording(self._db, rec_id, str(path), sink, time.monotonic())

    # -- index --------------------------------------------------------------------
    def list(self, session_id: str | None = None) -> list[Recording]:
        query = (
            "SELECT id, session_id, path, format, start_ns, duration_ns, size, active"
            " FROM recordings"
        )
        args: tuple[Any, ...] = ()
        if session_id:
            query += " WHERE session_id = ?"
            args = (session_id,)
        out = []
        for row in self._db.execute(query + " ORDER BY start_ns", args).fetchall():
            rec = Recording(
                id=row[0],
                sessionId=row[1],
                path=row[2],
                format=row[3],
                startTime=row[4],
                duration=row[5],
                size=row[6],
                active=bool(row[7]),
            )
            if rec.active and rec.sessionId in self.live:
                live = self.live[rec.sessionId]
                rec.duration = int(live.t() * 1e9)
                with contextlib.suppress(OSError):
                    rec.size = os.path.getsize(rec.path or "")
            out.append(rec)
        return out

    async def synced(self, rec_id: str) -> None:
        """Bring a recording in progress up to date on disk (what the daemon still
        holds, then what the recorder process does), before it is read."""
        live = next((x for x in self.live.values() if x.recording.id == rec_id), None)
        if live is None:
            return
        self._flush(live)
        if isinstance(live.sink, ProcessSink):
            await live.sink.synced()

    def get(self, rec_id: str) -> Recording:
        for rec in self.list():
            if rec.id == rec_id:
                return rec
        raise NotFound(f"no recording {rec_id!r} (see 'tachi record ls')")

    def remove(self, rec_id: str) -> Recording:
        rec = self.get(rec_id)
        if rec.active:
            raise Conflict(f"recording {rec_id} is still running; stop it first")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rec.path or "")
        self._db.execute("DELETE FROM recordings WHERE id = ?", (rec_id,))
        return rec
