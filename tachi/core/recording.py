"""Recordings: which sessions are being recorded, into which files, and the index.

The recorder itself (the file format) is a plugin (``tachi_recorders``); this
module decides what goes in: the screen as it was when recording started, then
the active window's output, resizes, and a marker plus a redraw at every window
switch, so playback shows what attached clients saw. A write error (disk full)
or a recorder that raises stops that recording, marks it failed with the reason,
is audited and logged once, and never touches the session.

Every finished recording's SHA-256 goes into its ``record.stop`` audit record,
so an edited file no longer matches the log (``tachi record verify``).

Across a daemon crash a recording written by the recorder process holds the
output exactly once, in order (docs/survival.md, "Recordings"): the worker
says where the file is up to (tachi.core.recorder_worker), the window's
journal keeps what was not handed to the worker yet, and a window whose
recording falls more than half a journal behind waits (its PTY is not read)
until the worker catches up.
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
from tachi.core.recorder_worker import (
    PREVIOUS_WRITER_SECONDS,
    RecordedUpTo,
    failure_text,
    file_digest,
    forget_state,
    recorded_up_to,
)
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
    #: Why this recording stopped early (the first failure; later ones are not news).
    failure: str | None = None
    pending: list[bytes] = field(default_factory=list)
    pending_t: float = 0.0
    #: The window the pending output comes from, and its offset just past it.
    pending_window: int = -1
    pending_seq: int = -1
    flush_timer: asyncio.TimerHandle | None = None
    #: Written by the recorder process: its lag behind the output is watched.
    watch: bool = False
    #: The window not read until this recording catches up (see the module).
    paused: WindowRuntime | None = None

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

    audit: Any = None
    recorder_name: str = "recorder"
    error: str | None = None

    def output(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.sink.output(data, time.monotonic() - self.started)
        except Exception as exc:  # a full disk or a broken recorder ends the recording only
            self.error = f"write failed: {failure_text(exc, self.recorder_name)}"
            log.error("recording %s stopped: %s", self.id, self.error)

    def close(self) -> None:
        """Finish the file, update the index and audit ``record.stop`` with its digest."""
        try:
            self.sink.close()
        except Exception as exc:
            self.error = self.error or f"closing failed: {failure_text(exc, self.recorder_name)}"
        digest = _digest(self.path)
        size = digest[1] if digest else 0
        duration = int((time.monotonic() - self.started) * 1e9)
        self.db.execute(
            "UPDATE recordings SET active = 0, duration_ns = ?, size = ?, error = ? WHERE id = ?",
            (duration, size, self.error, self.id),
        )
        if self.audit is not None:
            with contextlib.suppress(TachiError):
                self.audit(
                    action="record.stop",
                    result="error" if self.error else "allowed",
                    principal="tachid",
                    source="daemon",
                    session=None,
                    reason=self.error,
                    details=_stop_details(self.id, digest),
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
        recorders: dict[str, Any] | None = None,
    ) -> None:
        """``recorder`` writes new recordings; ``recorders`` (every registered one,
        by format) repair what a crashed daemon left, each its own format."""
        self._db = db
        db.executescript(_SCHEMA)
        self.directory = directory
        self.recorder = recorder
        self.recorders = dict(recorders or {})
        if recorder is not None:
            self.recorders.setdefault(recorder.format, recorder)
        self.record_input = record_input
        self._audit = audit
        self.live: dict[str, _Live] = {}
        #: Recordings left open by a stopped daemon whose session a keeper may
        #: hand back: decided by continue_adopted once adoption has run.
        self._deferred: list[tuple[str, str, str, str]] = []
        #: When the wait for a dead daemon's recorder processes ends (see _writer_wait).
        self._writers_by: float | None = None
        #: Where recorders that name a ``worker_factory`` write (started on first use).
        self.process = RecorderProcess()

    # -- lifecycle --------------------------------------------------------------
    def repair(self) -> int:
        """Recordings a crashed daemon left ``active``: let their format's recorder
        repair them (its ``repair(path)``; a format with none, or no recorder
        installed for it, is left byte for byte as it is), measure what is there,
        mark them finished with an error, and audit ``record.stop`` with the
        file's digest. Those of sessions a session keeper may hand back wait
        for :meth:`continue_adopted` instead. Returns how many were left open.
        Never raises for a damaged file."""
        rows = self._db.execute(
            "SELECT id, session_id, path, format FROM recordings WHERE active = 1"
        ).fetchall()
        for row in rows:
            if self._may_be_adopted(row[1]):
                # Its session may come back from the session keeper: then the
                # recording goes on (see continue_adopted), else it is closed there.
                self._deferred.append(row)
            else:
                self._close_left_open(*row)
        return len(rows)

    def _may_be_adopted(self, session_id: str) -> bool:
        """Whether a session keeper may hold ``session_id`` (the daemon saved how
        to adopt it: tachi.core.survival's ``kept_sessions``)."""
        try:
            row = self._db.execute(
                "SELECT 1 FROM kept_sessions WHERE id = ?", (session_id,)
            ).fetchone()
        except sqlite3.OperationalError:  # never ran with a keeper
            return False
        return row is not None

    def continue_adopted(self, sessions: dict[str, SessionRuntime]) -> int:
        """After adoption: recordings left open whose session was adopted go on in
        the same file, after a marker ("m") where the daemon was away; the others
        are repaired and closed as :meth:`repair` does. Returns how many go on."""
        deferred, self._deferred = self._deferred, []
        resumed = 0
        for rec_id, session_id, path, fmt in deferred:
            session = sessions.get(session_id)
            recorder = self.recorders.get(fmt)
            if session is None or recorder is None or not hasattr(recorder, "resume"):
                self._close_left_open(rec_id, session_id, path, fmt)
                continue
            try:
                self._resume(rec_id, session, Path(path), recorder)
                resumed += 1
            except Exception as exc:
                log.error("recording %s could not go on: %s", rec_id, exc)
                self._close_left_open(rec_id, session_id, path, fmt)
        return resumed

    def _resume(self, rec_id: str, session: SessionRuntime, path: Path, recorder: Any) -> None:
        """Open the recording ``rec_id`` of an adopted session again and go on."""
        start_ns, size = self._db.execute(
            "SELECT start_ns, size FROM recordings WHERE id = ?", (rec_id,)
        ).fetchone()
        factory = getattr(recorder, "worker_factory", None)
        window = session.mux.get(None)
        upto: RecordedUpTo | None = None
        if factory:
            # The dead daemon's recorder process may still be writing what it
            # was sent: wait for it (bounded), then learn where the file is up to.
            upto = recorded_up_to(path, self._writer_wait())
            sink: Any = self.process.open(
                factory, path, resume=True, record_input=self.record_input
            )
        else:
            sink = recorder.resume(path, record_input=self.record_input)
        # Times go on from the recording's start, the daemon's absence included.
        elapsed = max(0.0, (now_ns() - start_ns) / 1e9)
        recording = Recording(
            id=rec_id,
            sessionId=session.id,
            startTime=start_ns,
            duration=int(elapsed * 1e9),
            size=size,
            format=recorder.format,
            path=str(path),
            active=True,
        )
        live = _Live(recording, sink, time.monotonic() - elapsed, session, self.record_input)
        self.live[session.id] = live
        missed, since = _not_recorded(window, upto)
        if isinstance(sink, ProcessSink):
            sink.on_error = lambda exc: self._failed(live, f"write failed: {exc.strerror or exc}")
            live.watch = True
            sink.handed_window, sink.handed_seq = window.id, since
        self._listen(live)
        # What the dead daemon had read but never handed to its recorder comes
        # first (from the journal): it happened before the daemon was away.
        if missed:
            self._write(live, lambda: self._output(live, missed, live.t(), window))
        self._write(
            live,
            lambda: sink.marker(
                "tachi: the daemon was away here (restarted); the recording goes on", live.t()
            ),
        )
        # A player shows the screen as the next daemon found it (a full-screen
        # program's redraw comes later, or never if the recording was behind).
        self._write(
            live, lambda: self._output(live, window.screen.ansi().encode(), live.t(), window)
        )
        with contextlib.suppress(TachiError):
            self._audit(
                action="record.resume",
                result="allowed",
                principal="tachid",
                source="daemon",
                session=session.id,
                details={"recording": rec_id, "path": str(path)},
            )
        log.info("recording %s of %s goes on after adoption", rec_id, session.id)

    def _writer_wait(self) -> float:
        """What is left of the one wait for the dead daemon's recorder processes.
        One for all the recordings it left open, not one each: it runs as the
        daemon starts, on its loop (a stuck writer cost 20 s a recording, twice
        for one that could then not go on)."""
        if self._writers_by is None:
            self._writers_by = time.monotonic() + PREVIOUS_WRITER_SECONDS
        return max(0.0, self._writers_by - time.monotonic())

    def _close_left_open(self, rec_id: str, session_id: str, path: str, fmt: str) -> None:
        """Repair, measure, mark finished with an error and audit one recording
        a stopped daemon left open (see :meth:`repair`)."""
        recorder = self.recorders.get(fmt)
        duration = 0.0
        note = "not repaired: no recorder for its format"
        try:  # a recorder process of the dead daemon may still be writing it
            recorded_up_to(Path(path), self._writer_wait())
        except OSError as exc:
            log.warning("recording %s: %s", rec_id, exc)
        forget_state(Path(path))
        repair = getattr(recorder, "repair", None)
        if repair is not None:
            try:
                duration = float(repair(Path(path)) or 0.0)
                note = "repaired by its recorder"
            except Exception as exc:
                note = f"repair failed: {failure_text(exc, recorder_name(recorder))}"
                log.error("recording %s (%s): %s", rec_id, path, note)
        elif recorder is not None:
            note = "not repaired: its recorder has no repair()"
        digest = _digest(Path(path))
        size = digest[1] if digest else 0
        reason = f"daemon stopped unexpectedly; {note}"
        self._db.execute(
            "UPDATE recordings SET active = 0, size = ?, duration_ns = ?,"
            " error = COALESCE(error, ?) WHERE id = ?",
            (size, int(duration * 1e9), reason, rec_id),
        )
        try:
            self._audit(
                action="record.stop",
                result="error",
                principal="tachid",
                source="daemon",
                session=None if session_id.startswith("exec-") else session_id,
                reason=reason,
                details=_stop_details(rec_id, digest),
            )
        except TachiError as exc:
            log.error("recording %s repaired but not audited: %s", rec_id, exc)

    def start(self, session: SessionRuntime, principal: str) -> Recording:
        """Start recording ``session`` from its current screen.

        Raises ``Conflict`` if it is already recorded, and ``InvalidRequest`` if
        the recorder cannot create the file or fails on its first write (the
        screen as it is now): then the recording is in the index as failed,
        with the reason, and ``record.error`` is audited. The session is never
        touched either way."""
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
        except Exception as exc:
            reason = failure_text(exc, recorder_name(self.recorder))
            log.error("recording of %s not started: %s", session.id, reason)
            # In the index as failed, so `record ls` and `new --record` can say why.
            self._db.execute(
                "INSERT INTO recordings(id, session_id, path, format, start_ns, active, error)"
                " VALUES (?, ?, ?, ?, ?, 0, ?)",
                (rec_id, session.id, str(path), self.recorder.format, start, reason),
            )
            with contextlib.suppress(TachiError):
                self._audit(
                    action="record.error",
                    result="error",
                    principal=principal,
                    source="daemon",
                    session=session.id,
                    reason=f"cannot create recording {path}: {reason}",
                    details={"recording": rec_id, "path": str(path)},
                )
            raise InvalidRequest(f"cannot create recording {path}: {reason}") from None
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
        window = session.mux.get(None)
        if isinstance(sink, ProcessSink):
            # The worker reports a failed write (a full disk) after the fact.
            sink.on_error = lambda exc: self._failed(live, f"write failed: {exc.strerror or exc}")
            live.watch = True
            sink.handed_window, sink.handed_seq = window.id, window.seq
        self._db.execute(
            "INSERT INTO recordings(id, session_id, path, format, start_ns) VALUES (?, ?, ?, ?, ?)",
            (rec_id, session.id, str(path), recording.format, start),
        )
        try:
            self._audit(
                action="record.start",
                result="allowed",
                principal=principal,
                source="daemon",
                session=session.id,
                details={"recording": rec_id, "path": str(path)},
            )
        except TachiError:
            # Fail closed: a recording the log does not know of is not made.
            with contextlib.suppress(TachiError):
                self.stop(session.id, principal, error="the audit log could not be written")
            raise

        self._listen(live)
        # What the user saw when recording started, so playback doesn't begin blank.
        self._write(live, lambda: self._output(live, window.screen.ansi().encode(), 0.0, window))
        if live.failure is not None:
            raise InvalidRequest(f"recording {rec_id} failed: {live.failure}")
        return recording

    def _listen(self, live: _Live) -> None:
        """Record the session's output from now on."""

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
            live.pending_window, live.pending_seq = window.id, window.seq
            # No system call here: a few comparisons per PTY read.
            if (
                live.watch
                and window.journal is not None
                and window.seq - live.sink.handed_seq > window.journal.capacity >> 1
                and live.sink.handed_window == window.id
            ):
                self._behind(live, window)

        live.listener = on_output
        live.session.output_listeners.append(on_output)

    def _behind(self, live: _Live, window: WindowRuntime) -> None:
        """The recording is half a journal behind ``window``'s output: more would
        not survive a crash. Hand it all over now and read the window's PTY no
        more until the worker has caught up (the program waits, as it does for
        a slow terminal)."""
        self._flush(live)
        self.process.catch_up()
        if live.paused is None and live.failure is None:
            live.paused = window
            window.child.pause_reading(("recording", live.recording.id))
            live.sink.on_handed = lambda: self._handed(live)
            self._handed(live)

    def _handed(self, live: _Live) -> None:
        """More of a waiting window's output is handed over: read it again once
        its recording is within a quarter of a journal."""
        window = live.paused
        sink = live.sink
        if window is not None and live.failure is None and live.session.id in self.live:
            journal = window.journal
            if (
                journal is not None
                and sink.handed_window == window.id
                and window.seq - sink.handed_seq > journal.capacity >> 2
            ):
                return
        self._unpause(live)

    def _unpause(self, live: _Live) -> None:
        window, live.paused = live.paused, None
        if isinstance(live.sink, ProcessSink):
            live.sink.on_handed = None
        if window is not None:
            window.child.resume_reading(("recording", live.recording.id))

    def unhanded_from(self, session: SessionRuntime, window: WindowRuntime) -> int | None:
        """The offset in ``window``'s output from which its recording has not been
        handed to the recorder process (it would not survive this daemon), or
        ``None`` if no recording needs any of it."""
        live = self.live.get(session.id)
        if live is None or not live.watch or live.failure is not None:
            return None
        sink = live.sink
        if sink.handed_window != window.id or sink.handed_seq < 0:
            return None
        return int(sink.handed_seq)

    def stop(
        self, session_id: str, principal: str = "tachid", error: str | None = None
    ) -> Recording:
        """Finish the session's recording and audit ``record.stop`` with the file's
        SHA-256 and size. Raises ``NotFound`` if none is running."""
        live = self.live.pop(session_id, None)
        if live is None:
            raise NotFound(f"session {session_id} is not being recorded")
        with contextlib.suppress(ValueError):
            live.session.output_listeners.remove(live.listener)
        self._flush(live)
        self._unpause(live)
        error = error or live.failure
        try:
            live.sink.close()
        except Exception as exc:
            error = error or f"closing failed: {failure_text(exc, recorder_name(self.recorder))}"
        rec = live.recording
        rec.active = False
        rec.duration = int(live.t() * 1e9)
        rec.error = error
        # The worker hashed the file as it closed it (off the event loop); a sink
        # written here, or one that failed, is hashed now.
        digest = getattr(live.sink, "digest", None) or _digest(Path(rec.path or ""))
        if digest is not None:
            rec.size = digest[1]
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
            details=_stop_details(rec.id, digest),
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
            window, seq = live.pending_window, live.pending_seq
            self._write(live, lambda: sink.output_parts(chunks, live.pending_t, window, seq))
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
            self._unpause(live)  # that window is no longer recorded
            window = session.mux.get(None)
            self._write(
                live, lambda: live.sink.marker(f"window {window.id}: {window.name}", live.t())
            )
            self._write(
                live, lambda: self._output(live, window.screen.ansi().encode(), live.t(), window)
            )
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

    @staticmethod
    def _output(live: _Live, data: bytes, t: float, window: WindowRuntime) -> None:
        """Output of ``window`` up to its current offset (which the recorder
        process is told, to say where the file is up to)."""
        if isinstance(live.sink, ProcessSink):
            live.sink.output(data, t, window.id, window.seq)
        else:
            live.sink.output(data, t)

    def _write(self, live: _Live, action: Any) -> None:
        if live.failure is not None:
            return
        try:
            action()
        except Exception as exc:  # a full disk, or a recorder's bug: the recording ends
            self._failed(live, f"write failed: {failure_text(exc, recorder_name(self.recorder))}")

    def _failed(self, live: _Live, reason: str) -> None:
        """End a recording that cannot go on: one log line, the index says why,
        ``record.stop`` and ``record.error`` are audited, clients get a notice."""
        if live.failure is not None:
            return
        live.failure = reason
        if self.live.get(live.session.id) is not live:
            return  # stop() is under way: it records the reason
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
        except Exception as exc:
            reason = failure_text(exc, recorder_name(self.recorder))
            raise InvalidRequest(f"cannot create recording {path}: {reason}") from None
        self._db.execute(
            "INSERT INTO recordings(id, session_id, path, format, start_ns) VALUES (?, ?, ?, ?, ?)",
            (rec_id, owner, str(path), self.recorder.format, start),
        )
        self._audit(
            action="record.start", result="allowed", principal=principal, source="daemon",
            session=None, details={"recording": rec_id, "path": str(path), "exec": label},
        )  # fmt: skip
        return StreamRecording(
            self._db, rec_id, str(path), sink, time.monotonic(), audit=self._audit,
            recorder_name=recorder_name(self.recorder),
        )  # fmt: skip

    # -- index --------------------------------------------------------------------
    def list(self, session_id: str | None = None) -> list[Recording]:
        query = (
            "SELECT id, session_id, path, format, start_ns, duration_ns, size, active, error"
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
                error=row[8],
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
        if rec.path:
            forget_state(Path(rec.path))
        self._db.execute("DELETE FROM recordings WHERE id = ?", (rec_id,))
        return rec


def recorder_name(recorder: Any) -> str:
    """How a log line names a recorder: its format and the module it comes from."""
    if recorder is None:
        return "(none)"
    return f"{getattr(recorder, 'format', '?')!r} ({type(recorder).__module__})"


def _digest(path: Path) -> tuple[str, int] | None:
    """(hex SHA-256, size) of a recording file, or ``None`` if it cannot be read."""
    try:
        return file_digest(path)
    except OSError:
        return None


def _not_recorded(window: WindowRuntime, upto: RecordedUpTo | None) -> tuple[bytes, int]:
    """After a crash: the output of ``window`` (active, just adopted) that its
    recording file, up to ``upto``, lacks, from the window's journal; and the
    offset it starts at."""
    journal = window.journal
    if upto is None or journal is None or upto.window != window.id or upto.seq < 0:
        # A recording written in the daemon, by an older version, or of another
        # window when it died: it goes on from the redraw.
        return b"", window.seq
    if upto.seq >= window.seq:
        return b"", window.seq
    missed = journal.since(upto.seq)
    if missed is None:
        log.warning(
            "recording of %s: output %d-%d is lost (the journal starts at %d)",
            journal.key,
            upto.seq,
            journal.base,
            journal.base,
        )
        return bytes(journal.since(journal.base) or b""), journal.base
    return bytes(missed), upto.seq


def _stop_details(rec_id: str, digest: tuple[str, int] | None) -> dict[str, Any]:
    """``record.stop`` details: what ``tachi record verify`` checks the file against."""
    if digest is None:
        return {"recording": rec_id, "size": 0, "sha256": None}
    return {"recording": rec_id, "size": digest[1], "sha256": digest[0]}
