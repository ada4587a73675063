"""Writing the audit log: appending hash-chained records, one process at a
time, and checkpointing the chain's tip (signed, see :mod:`tachi.audit.signing`)."""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from tachi.audit.files import (
    _file_size,
    _lines_backwards,
    _open_private,
    _truncate_partial_line,
    _write_all,
)
from tachi.audit.format import (
    CHECKPOINTS_NAME,
    GENESIS_HASH,
    GENESIS_SEQ_TIP,
    KEY_NAME,
    RECORDS_NAME,
    RESULTS,
    _is_int,
    _line,
    _parse_object,
    _record_shape_problem,
    record_hash,
)
from tachi.audit.signing import _public_raw, load_or_create_key, signed_checkpoint
from tachi.errors import AuditWriteError
from tachi.gotime import format_rfc3339, now_ns
from tachi.paths import ensure_private_dir

log = logging.getLogger("tachi.audit")


class AuditLog:
    """An open audit log that the daemon appends to.

    Thread-safe. One process at a time: the directory is locked (``flock``) for
    as long as the log is open, because two writers would fork the chain.
    """

    def __init__(
        self,
        directory: Path,
        *,
        fail_open: bool = False,
        checkpoint_every: int = 64,
        on_event: Callable[[dict], None] | None = None,
        background_checkpoints: bool = False,
    ) -> None:
        """Open (creating if needed, dir 0700, files 0600) the log in ``directory``.

        Files: ``audit.jsonl`` (records), ``audit.checkpoints.jsonl`` (signed
        checkpoints), ``audit.key`` (Ed25519 private key PEM, created on first use).
        The chain resumes from the last valid record of an existing file; an
        unterminated last line (a crash mid-write) is cut off and an
        ``audit.recovered`` record says how many bytes went.

        Raises ``AuditWriteError`` if the log cannot be opened (unwritable, the
        key is unreadable, another process holds the log), unless ``fail_open``:
        then a warning is logged and every ``append`` retries the open.
        Raises ``ValueError`` if ``checkpoint_every`` < 1.

        With ``background_checkpoints`` (the daemon), the periodic checkpoint's
        fsyncs run on a thread, so a slow disk never stalls the caller (the
        daemon's event loop); the final checkpoint at ``close`` stays inline.
        """
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, not {checkpoint_every}")
        self.directory = Path(directory)
        self.path = self.directory / RECORDS_NAME
        self.checkpoints_path = self.directory / CHECKPOINTS_NAME
        self.key_path = self.directory / KEY_NAME
        self.fail_open = fail_open
        self.checkpoint_every = checkpoint_every
        self.on_event = on_event
        self._lock = threading.Lock()
        self._dir_fd: int | None = None
        self._fd: int | None = None
        self._cp_fd: int | None = None
        self._key: Ed25519PrivateKey | None = None
        self._public_b64 = ""
        self._seq = 0
        self._tip = GENESIS_HASH
        self._checkpointed: tuple[int, str] = (0, GENESIS_HASH)
        self._since_checkpoint = 0
        self.background_checkpoints = background_checkpoints
        self._cp_thread: threading.Thread | None = None
        self._dropped = 0
        self._first_dropped_ns = 0
        self._closed = False
        self._events: list[dict[str, Any]] = []
        with self._lock:
            try:
                self._open_locked()
            except (OSError, AuditWriteError) as e:
                self._close_files_locked()
                if not fail_open:
                    self._release_dir_locked()
                    raise _write_error(self.path, e) from e
                log.warning(
                    "AUDIT LOG UNAVAILABLE (fail_open): cannot open %s: %s; "
                    "records will be dropped until it can be written",
                    self.directory,
                    e,
                )
            events = self._take_events_locked()
        self._deliver(events)

    # -- public API --------------------------------------------------------------------

    def append(
        self,
        *,
        action: str,
        result: str,
        principal: str,
        source: str,
        session: str | None = None,
        reason: str | None = None,
        details: dict | None = None,
    ) -> dict:
        """Append one record and return it (as written, with ``seq``, ``prev``, ``hash``).

        ``result`` is ``"allowed"``, ``"denied"``, ``"error"`` or ``"info"``;
        anything else, or ``details`` that are not a dict of JSON values (after
        ``str()`` of unknown objects; NaN and infinities are refused), raises
        ``ValueError``. The record reaches the kernel before this returns
        (no user-space buffering); it is fsynced at the next checkpoint, which
        is written every ``checkpoint_every`` records.

        On a write failure: with ``fail_open``, logs a warning on ``tachi.audit``
        naming the record and returns it unwritten (the next record written is
        preceded by an ``audit.dropped`` record counting the losses); otherwise
        raises ``AuditWriteError`` and the caller must refuse the action. Either
        way the next call reopens the file and tries again.

        After a successful write, calls ``on_event`` with a copy of each record
        written; its exceptions are logged and swallowed.
        """
        if result not in RESULTS:
            raise ValueError(f"audit result must be one of {sorted(RESULTS)}, not {result!r}")
        if details is not None and not isinstance(details, dict):
            raise ValueError(f"audit details must be a dict or None, not {type(details).__name__}")
        fields: dict[str, Any] = {
            "principal": str(principal),
            "source": str(source),
            "session": None if session is None else str(session),
            "action": str(action),
            "result": result,
            "reason": None if reason is None else str(reason),
            "details": _jsonable(details),
        }
        error: AuditWriteError | None = None
        with self._lock:
            try:
                record = self._append_locked(fields)
            except (OSError, AuditWriteError) as e:
                self._close_files_locked()
                record = self._build(fields)
                if self.fail_open:
                    if not self._dropped:
                        self._first_dropped_ns = now_ns()
                    self._dropped += 1
                    # The record goes to the daemon's log at least.
                    log.warning(
                        "AUDIT RECORD NOT WRITTEN (fail_open) to %s: %s; record: %s",
                        self.path,
                        e,
                        _line(record).decode("ascii").rstrip(),
                    )
                else:
                    error = _write_error(self.path, e)
                    error.__cause__ = e
            events = self._take_events_locked()
        # Records written before the failure (audit.recovered/dropped) still ship.
        self._deliver(events)
        if error is not None:
            raise error
        return record

    def checkpoint(self) -> dict | None:
        """Sign the current chain tip now (``close`` does this too); return the checkpoint.

        Returns ``None`` when there is nothing new to sign (no records, or the tip
        is already signed). The records are fsynced before the tip is signed and
        the checkpoint file after. On a write failure: ``AuditWriteError``, or
        with ``fail_open`` a logged warning and ``None``.
        """
        error: AuditWriteError | None = None
        with self._lock:
            try:
                if self._closed:
                    raise AuditWriteError(f"audit log {self.path} is closed")
                if self._fd is None:
                    self._open_locked()
                cp = self._checkpoint_locked()
            except (OSError, AuditWriteError) as e:
                self._close_files_locked()
                cp = None
                if self.fail_open:
                    log.warning("AUDIT CHECKPOINT NOT WRITTEN (fail_open): %s", e)
                else:
                    error = _write_error(self.checkpoints_path, e)
                    error.__cause__ = e
            events = self._take_events_locked()
        self._deliver(events)
        if error is not None:
            raise error
        return cp

    def close(self) -> None:
        """Write a final checkpoint, close the files and release the directory lock.

        Never raises for a failed final checkpoint (it is logged); idempotent.
        Appends after ``close`` fail like a write error.
        """
        if self._cp_thread is not None:
            self._cp_thread.join(10)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd is not None:
                try:
                    self._checkpoint_locked()
                except OSError as e:
                    log.warning("could not write the final audit checkpoint: %s", e)
            self._close_files_locked()
            self._release_dir_locked()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (all *_locked methods run under self._lock) -------------------------

    def _append_locked(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise AuditWriteError(f"audit log {self.path} is closed")
        if self._fd is None:
            self._open_locked()
        if self._dropped:
            self._emit_locked(
                {
                    "principal": "tachid",
                    "source": "daemon",
                    "session": None,
                    "action": "audit.dropped",
                    "result": "error",
                    "reason": "the audit log could not be written (fail_open)",
                    "details": {
                        "count": self._dropped,
                        "since": format_rfc3339(self._first_dropped_ns),
                    },
                }
            )
            self._dropped = 0
        return self._emit_locked(fields)

    def _open_locked(self) -> None:
        if self._dir_fd is None:
            ensure_private_dir(self.directory)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(dir_fd)
                raise AuditWriteError(
                    f"audit log {self.directory} is in use by another process"
                ) from None
            except BaseException:
                os.close(dir_fd)
                raise
            self._dir_fd = dir_fd
        created_key = False
        if self._key is None:
            self._key, created_key = self._load_or_create_key()
            self._public_b64 = base64.b64encode(_public_raw(self._key.public_key())).decode()

        self._fd = _open_private(self.path)
        self._cp_fd = _open_private(self.checkpoints_path)
        cut = _truncate_partial_line(self._fd)
        cp_cut = _truncate_partial_line(self._cp_fd)
        if cp_cut:
            log.warning("cut a partial last line (%d bytes) off %s", cp_cut, self.checkpoints_path)

        self._seq, self._tip = GENESIS_SEQ_TIP
        skipped = 0
        for raw in _lines_backwards(self._fd):
            try:
                obj = _parse_object(raw)
            except ValueError:
                skipped += 1
                continue
            if _record_shape_problem(obj) is None and record_hash(obj) == obj["hash"]:
                self._seq, self._tip = obj["seq"], obj["hash"]
                break
            skipped += 1
        if skipped:
            log.warning(
                "%s ends with %d invalid line(s); the chain continues from record %d "
                "(tachi audit verify will report them)",
                self.path,
                skipped,
                self._seq,
            )

        self._checkpointed = GENESIS_SEQ_TIP
        for raw in _lines_backwards(self._cp_fd):
            try:
                obj = _parse_object(raw)
            except ValueError:
                continue
            if _is_int(obj.get("seq")) and isinstance(obj.get("hash"), str):
                self._checkpointed = (obj["seq"], obj["hash"])
                break
        if created_key and _file_size(self._cp_fd):
            log.warning(
                "created a new %s although %s holds checkpoints: the old key is gone, "
                "so the old checkpoints will no longer verify",
                self.key_path,
                self.checkpoints_path,
            )
        if self._checkpointed[0] > self._seq:
            log.warning(
                "%s ends at record %d but a checkpoint signs record %d: "
                "records were lost or removed",
                self.path,
                self._seq,
                self._checkpointed[0],
            )
        self._since_checkpoint = max(0, self._seq - self._checkpointed[0])

        if cut:
            log.warning("cut a partial last record (%d bytes) off %s", cut, self.path)
            self._emit_locked(
                {
                    "principal": "tachid",
                    "source": "daemon",
                    "session": None,
                    "action": "audit.recovered",
                    "result": "info",
                    "reason": "partial last line removed (crash while writing?)",
                    "details": {"truncatedBytes": cut},
                }
            )

    def _load_or_create_key(self) -> tuple[Ed25519PrivateKey, bool]:
        return load_or_create_key(self.key_path, self._dir_fd)

    def _build(self, fields: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {
            "seq": self._seq + 1,
            "time": format_rfc3339(now_ns()),
            "principal": fields["principal"],
            "source": fields["source"],
            "session": fields["session"],
            "action": fields["action"],
            "result": fields["result"],
            "reason": fields["reason"],
            "details": fields["details"],
            "prev": self._tip,
        }
        record["hash"] = record_hash(record)
        return record

    def _emit_locked(self, fields: dict[str, Any]) -> dict[str, Any]:
        assert self._fd is not None
        record = self._build(fields)
        _write_all(self._fd, _line(record))
        self._seq, self._tip = record["seq"], record["hash"]
        self._since_checkpoint += 1
        self._events.append(record)
        if self._since_checkpoint >= self.checkpoint_every:
            if self.background_checkpoints:
                self._checkpoint_soon_locked()
                return record
            try:
                self._checkpoint_locked()
            except OSError as e:
                # The record itself is written; a missed checkpoint is retried at
                # the next record rather than failing an action that is logged.
                log.warning("could not write an audit checkpoint (will retry): %s", e)
        return record

    def _checkpoint_soon_locked(self) -> None:
        if self._cp_thread is None or not self._cp_thread.is_alive():
            self._cp_thread = threading.Thread(
                target=self._checkpoint_in_background, name="audit-checkpoint", daemon=True
            )
            self._cp_thread.start()

    def _checkpoint_in_background(self) -> None:
        """fsync the records without the lock (appends go on meanwhile), then sign
        the tip as it was before the fsync."""
        with self._lock:
            if self._closed or self._fd is None:
                return
            fd, seq, tip = self._fd, self._seq, self._tip
        try:
            os.fsync(fd)
            with self._lock:
                if self._closed or self._fd != fd or self._checkpointed[0] >= seq:
                    return
                self._sign_locked(seq, tip)
                cp_fd = self._cp_fd
            if cp_fd is not None:
                os.fsync(cp_fd)
        except OSError as e:
            log.warning("could not write an audit checkpoint (will retry): %s", e)

    def _checkpoint_locked(self) -> dict[str, Any] | None:
        if self._seq == 0 or self._checkpointed == (self._seq, self._tip):
            return None
        assert self._fd is not None and self._cp_fd is not None
        # Sign only what is on disk: otherwise a crash could leave a signature
        # over records that never made it, which verify would call truncation.
        os.fsync(self._fd)
        cp = self._sign_locked(self._seq, self._tip)
        os.fsync(self._cp_fd)
        return cp

    def _sign_locked(self, seq: int, tip: str) -> dict[str, Any]:
        """Append a signed checkpoint of ``(seq, tip)``, whose records are on disk."""
        assert self._cp_fd is not None and self._key is not None
        _truncate_partial_line(self._cp_fd)
        cp = signed_checkpoint(self._key, self._public_b64, seq, tip)
        _write_all(self._cp_fd, _line(cp))
        self._checkpointed = (seq, tip)
        self._since_checkpoint = self._seq - seq
        return cp

    def _close_files_locked(self) -> None:
        for name in ("_fd", "_cp_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _release_dir_locked(self) -> None:
        if self._dir_fd is not None:
            fd, self._dir_fd = self._dir_fd, None
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops the flock

    def _take_events_locked(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        # Outside the lock: a listener may itself append.
        if self.on_event is None:
            return
        for record in events:
            try:
                self.on_event(copy.deepcopy(record))
            except Exception:
                log.exception("audit on_event listener failed for record %s", record["seq"])


def _jsonable(details: dict | None) -> dict[str, Any] | None:
    """``details`` as plain JSON values, as a reader will see them after parsing.

    Hashing the round-tripped form means the hash checks out against the line as
    parsed back (tuples become lists, keys become strings, unknown objects
    ``str()``). Raises ``ValueError`` for NaN and infinities, which are not JSON.
    """
    if details is None:
        return None
    if all(type(k) is str and type(v) in _FLAT for k, v in details.items()):
        return dict(details)  # already what a reader parses back (most records)
    return json.loads(json.dumps(details, default=str, allow_nan=False))


#: Value types that come back from a JSON round trip as they went in.
_FLAT = (str, int, bool, type(None))


def _write_error(path: Path, e: BaseException) -> AuditWriteError:
    if isinstance(e, AuditWriteError):
        return e
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return AuditWriteError(f"cannot write the audit log {path}: {reason}")
