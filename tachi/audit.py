"""The tamper-evident audit log: a hash-chained JSONL file plus signed checkpoints.

Layout of the audit directory (0700, files 0600):

- ``audit.jsonl``: one record per line. Each record carries ``prev`` (the hash
  of the record before it) and ``hash`` (SHA-256 over a domain-separated,
  canonical encoding of itself), so editing, deleting or reordering a line
  breaks the chain at that line.
- ``audit.checkpoints.jsonl``: every ``checkpoint_every`` records, and at close,
  an Ed25519 signature over ``seq:hash`` of the chain tip. A checkpoint pins the
  chain up to that record, so cutting records off the tail past a checkpoint is
  caught, and so is re-hashing the chain after an edit.
- ``audit.key``: the Ed25519 private key (PKCS#8 PEM). Its public half is the
  anchor ``verify`` checks the checkpoints against.

What this does not protect against (see ``docs/audit.md``): anyone who can read
``audit.key`` can rewrite the log and re-sign it, and removing the tail *and*
the checkpoints after it is only caught by comparing against a chain tip kept
somewhere else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tachi.errors import AuditWriteError
from tachi.gotime import format_rfc3339, now_ns, parse_rfc3339
from tachi.paths import ensure_private_dir

log = logging.getLogger("tachi.audit")

RECORDS_NAME = "audit.jsonl"
CHECKPOINTS_NAME = "audit.checkpoints.jsonl"
KEY_NAME = "audit.key"

RECORD_DOMAIN = b"tachi-audit-record/v1\0"
CHECKPOINT_DOMAIN = b"tachi-audit-checkpoint/v1\0"
GENESIS_HASH = "0" * 64
GENESIS_SEQ_TIP: tuple[int, str] = (0, GENESIS_HASH)

RESULTS = frozenset({"allowed", "denied", "error", "info"})
RECORD_KEYS = (
    "seq",
    "time",
    "principal",
    "source",
    "session",
    "action",
    "result",
    "reason",
    "details",
    "prev",
    "hash",
)
CHECKPOINT_KEYS = ("seq", "hash", "time", "publicKey", "signature")

_HEX = frozenset("0123456789abcdef")
_TAIL_BLOCK = 64 * 1024


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`.

    ``records`` counts the records that verified before the first problem and
    ``checkpoints`` the checkpoints whose signature verified. ``first_bad`` is
    the 1-based line number (which equals the seq in an intact log) of the first
    bad record, or ``None`` when the problem is not a record's (a bad
    checkpoint, a missing file). ``problem`` is one line, empty when ``ok``.
    """

    ok: bool
    records: int
    checkpoints: int
    first_bad: int | None = None
    problem: str = ""


# -- encoding -------------------------------------------------------------------------


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes that get hashed: JSON with sorted keys, no whitespace, ASCII only.

    ``ensure_ascii`` keeps the encoding byte-exact whatever the text contains
    (including lone surrogates, which UTF-8 cannot encode).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def record_hash(record: dict[str, Any]) -> str:
    """Hex SHA-256 of ``record`` without its ``hash`` field, domain-separated."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(RECORD_DOMAIN + canonical(body)).hexdigest()


def checkpoint_payload(seq: int, tip: str) -> bytes:
    """The exact bytes a checkpoint signs."""
    return CHECKPOINT_DOMAIN + f"{seq}:{tip}".encode("ascii")


def _line(obj: dict[str, Any]) -> bytes:
    # Insertion order is kept (the documented key order); ASCII so a reader never
    # has to guess the encoding.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # With duplicate keys, different JSON readers would show different values
    # for the same hashed line; refuse the line instead.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_object(raw: bytes) -> dict[str, Any]:
    """Parse one line (without its newline) as a JSON object; ``ValueError`` otherwise."""
    obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _record_shape_problem(obj: dict[str, Any]) -> str | None:
    """Why ``obj`` is not structurally a record, or ``None`` if it is."""
    missing = [k for k in RECORD_KEYS if k not in obj]
    if missing:
        return f"missing field {missing[0]!r}"
    extra = sorted(set(obj) - set(RECORD_KEYS))
    if extra:
        return f"unexpected field {extra[0]!r}"
    if not _is_int(obj["seq"]) or obj["seq"] < 1:
        return "seq is not a positive integer"
    if not _is_hex64(obj["hash"]) or not _is_hex64(obj["prev"]):
        return "hash or prev is not 64 hex digits"
    for key in ("time", "principal", "source", "action", "result"):
        if not isinstance(obj[key], str):
            return f"{key} is not a string"
    for key in ("session", "reason"):
        if obj[key] is not None and not isinstance(obj[key], str):
            return f"{key} is neither a string nor null"
    if obj["details"] is not None and not isinstance(obj["details"], dict):
        return "details is neither an object nor null"
    return None


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load_private_key(data: bytes, path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise AuditWriteError(f"{path} is not a readable private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditWriteError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


# -- low-level file helpers -----------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise OSError(f"unexpected end of file at offset {offset}")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _file_size(fd: int) -> int:
    st = os.fstat(fd)
    # /dev/full and friends: nothing to read back, nothing to repair.
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _open_private(path: Path) -> int:
    """Open ``path`` for appending (and reading back), created 0600; force 0600 if it exists."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        # Only regular files: a symlink to a device must not change the device's mode.
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _truncate_partial_line(fd: int) -> int:
    """Cut an unterminated last line (a write cut short by a crash); return bytes removed."""
    size = _file_size(fd)
    if size == 0 or _pread_exact(fd, 1, size - 1) == b"\n":
        return 0
    keep = 0
    for start in range(size, 0, -_TAIL_BLOCK):
        lo = max(0, start - _TAIL_BLOCK)
        newline = _pread_exact(fd, start - lo, lo).rfind(b"\n")
        if newline >= 0:
            keep = lo + newline + 1
            break
    os.ftruncate(fd, keep)
    return size - keep


def _lines_backwards(fd: int) -> Iterator[bytes]:
    """The newline-terminated lines of ``fd``, last first, without their newlines.

    Reads the file from the end in blocks, so resuming a large log costs only
    its tail. Expects the file to end with a newline (see ``_truncate_partial_line``).
    """
    pos = _file_size(fd)
    head = b""  # the start of a line that began before the block just read
    while pos > 0:
        n = min(_TAIL_BLOCK, pos)
        pos -= n
        parts = (_pread_exact(fd, n, pos) + head).split(b"\n")
        head = parts[0]
        for part in reversed(parts[1:]):
            if part:
                yield part
    if head:
        yield head


# -- the writer -----------------------------------------------------------------------


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
        try:
            data = self.key_path.read_bytes()
        except FileNotFoundError:
            pass
        else:
            if stat.S_IMODE(self.key_path.stat().st_mode) != 0o600:
                os.chmod(self.key_path, 0o600)
            return _load_private_key(data, self.key_path), False
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Written whole to a temporary name, then linked into place: a crash never
        # leaves a half-written key, and link() never replaces a key that exists.
        tmp = self.key_path.with_name(f".{KEY_NAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.key_path)
        except FileExistsError:
            # Another opener won the race; use its key.
            return _load_private_key(self.key_path.read_bytes(), self.key_path), False
        finally:
            tmp.unlink(missing_ok=True)
        if self._dir_fd is not None:
            os.fsync(self._dir_fd)
        return key, True

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
        signature = self._key.sign(checkpoint_payload(seq, tip))
        cp = {
            "seq": seq,
            "hash": tip,
            "time": format_rfc3339(now_ns()),
            "publicKey": self._public_b64,
            "signature": base64.b64encode(signature).decode(),
        }
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
    return json.loads(json.dumps(details, default=str, allow_nan=False))


def _write_error(path: Path, e: BaseException) -> AuditWriteError:
    if isinstance(e, AuditWriteError):
        return e
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return AuditWriteError(f"cannot write the audit log {path}: {reason}")


# -- readers --------------------------------------------------------------------------


def read_records(
    path: Path, *, session: str | None = None, since_ns: int | None = None
) -> Iterator[dict]:
    """Yield the records of ``path`` in file order, optionally only those about
    ``session`` and those at or after ``since_ns`` (epoch nanoseconds).

    A reader, not a verifier: lines that are not JSON objects (and a partial
    last line being written right now) are skipped; use :func:`verify` to check
    integrity. Raises ``OSError`` (e.g. ``FileNotFoundError``) if ``path``
    cannot be opened.
    """
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                record = _parse_object(raw.rstrip(b"\n"))
            except ValueError:
                continue
            if session is not None and record.get("session") != session:
                continue
            if since_ns is not None:
                try:
                    if parse_rfc3339(str(record.get("time"))) < since_ns:
                        continue
                except ValueError:
                    continue
            yield record


def _bad(records: int, checkpoints: int, first_bad: int | None, problem: str) -> VerifyResult:
    return VerifyResult(False, records, checkpoints, first_bad, problem)


def verify(directory: Path, *, public_key: str | None = None) -> VerifyResult:
    """Check the audit log in ``directory``: the hash chain, and the checkpoints
    against the public key of ``audit.key`` (or ``public_key``, base64 of the raw
    32 bytes, to check against a key pinned elsewhere).

    Detects an edited record (hash mismatch), a deleted or reordered record (seq
    or prev out of line), a tail cut off past a checkpoint, a checkpoint whose
    hash differs from the record it names, a bad checkpoint signature or one by
    another key, missing files and a partial last line. Record problems are
    reported first (the earliest by line), then checkpoint problems. Never
    raises for a damaged log; reads files only.
    """
    directory = Path(directory)
    records_path = directory / RECORDS_NAME
    checkpoints_path = directory / CHECKPOINTS_NAME
    key_path = directory / KEY_NAME
    if not records_path.is_file():
        return _bad(0, 0, None, f"no audit log at {records_path}")

    # The anchor key.
    try:
        if public_key is not None:
            anchor_raw = base64.b64decode(public_key, validate=True)
            anchor = Ed25519PublicKey.from_public_bytes(anchor_raw)
        else:
            anchor = _load_private_key(key_path.read_bytes(), key_path).public_key()
            anchor_raw = _public_raw(anchor)
    except FileNotFoundError:
        return _bad(0, 0, None, f"no {KEY_NAME} in {directory}: cannot check the checkpoints")
    except (OSError, ValueError, binascii.Error, AuditWriteError) as e:
        return _bad(0, 0, None, f"cannot use the public key: {e}")
    anchor_b64 = base64.b64encode(anchor_raw).decode()
    anchor_name = KEY_NAME if public_key is None else "the pinned public key"

    # Checkpoints first (there are few), so the records are read once.
    signed: dict[int, tuple[str, int]] = {}  # seq -> (hash, checkpoint line)
    cp_problem = ""
    good_checkpoints = 0
    try:
        cp_data = checkpoints_path.read_bytes()
    except FileNotFoundError:
        cp_data = b""
        cp_problem = f"no {CHECKPOINTS_NAME} in {directory} (removed?)"
    except OSError as e:
        return _bad(0, 0, None, f"cannot read {checkpoints_path}: {e}")
    last_cp_seq = 0
    cp_lines = cp_data.split(b"\n")
    for number, raw in enumerate(cp_lines, 1):
        if number == len(cp_lines):
            if raw and not cp_problem:
                cp_problem = f"checkpoint line {number}: partial last line (crash while writing?)"
            break
        problem = _checkpoint_problem(raw, anchor, anchor_b64, anchor_name)
        if problem is None:
            obj = _parse_object(raw)
            seq, tip = obj["seq"], obj["hash"]
            if seq < last_cp_seq:
                problem = f"seq {seq} comes after seq {last_cp_seq} (reordered?)"
            elif seq in signed and signed[seq][0] != tip:
                problem = f"signs a different hash for seq {seq} than line {signed[seq][1]}"
            else:
                last_cp_seq = seq
                signed[seq] = (tip, number)
                good_checkpoints += 1
                continue
        if not cp_problem:
            cp_problem = f"checkpoint line {number}: {problem}"

    try:
        with open(records_path, "rb") as f:
            count, first_bad, problem = _walk_chain(f, signed)
    except OSError as e:
        return _bad(0, good_checkpoints, None, f"cannot read {records_path}: {e}")
    if problem:
        return _bad(count, good_checkpoints, first_bad, problem)

    if signed and max(signed) > count:
        top = max(signed)
        return _bad(
            count,
            good_checkpoints,
            count + 1,
            f"record {count + 1}: missing, but checkpoint line {signed[top][1]} signs"
            f" record {top} (log truncated?)",
        )
    if cp_problem:
        return _bad(count, good_checkpoints, None, cp_problem)
    return VerifyResult(True, count, good_checkpoints)


def _walk_chain(
    lines: Iterable[bytes], signed: dict[int, tuple[str, int]]
) -> tuple[int, int | None, str]:
    """Follow the chain through ``lines``: (records that verified, first bad line, problem).

    ``signed`` maps a seq to the hash a valid checkpoint signed for it (and the
    checkpoint's line number). ``problem`` is empty when every line verified.
    """
    expected_prev = GENESIS_HASH
    count = 0
    for n, raw in enumerate(lines, 1):
        if not raw.endswith(b"\n"):
            return count, n, f"line {n}: partial last line (crash while writing?)"
        try:
            obj = _parse_object(raw[:-1])
        except ValueError as e:
            return count, n, f"line {n}: not a JSON record ({e})"
        shape = _record_shape_problem(obj)
        if shape is not None:
            return count, n, f"record {n}: malformed ({shape})"
        # The record's own hash first: an edit shows up at the edited line, not
        # at the next line's prev.
        if record_hash(obj) != obj["hash"]:
            return count, n, f"record {n}: hash mismatch (edited?)"
        if obj["seq"] != n:
            return count, n, f"record {n}: line {n} holds seq {obj['seq']} (deleted or reordered?)"
        if obj["prev"] != expected_prev:
            return (
                count,
                n,
                f"record {n}: prev does not match the hash of record {n - 1}"
                " (records rewritten or removed?)",
            )
        if n in signed and signed[n][0] != obj["hash"]:
            return (
                count,
                n,
                f"record {n}: hash differs from the one signed at checkpoint line {signed[n][1]}"
                " (log rewritten?)",
            )
        expected_prev = obj["hash"]
        count = n
    return count, None, ""


def _checkpoint_problem(
    raw: bytes, anchor: Ed25519PublicKey, anchor_b64: str, anchor_name: str
) -> str | None:
    """Why checkpoint line ``raw`` is not a valid checkpoint by ``anchor``, or ``None``."""
    try:
        obj = _parse_object(raw)
    except ValueError as e:
        return f"not a JSON checkpoint ({e})"
    if set(obj) != set(CHECKPOINT_KEYS):
        return "malformed (wrong fields)"
    seq, tip = obj["seq"], obj["hash"]
    if not _is_int(seq) or seq < 1 or not _is_hex64(tip):
        return "malformed (seq or hash)"
    if obj["publicKey"] != anchor_b64:
        return f"seq {seq}: signed by a key other than {anchor_name} (key replaced?)"
    try:
        signature = base64.b64decode(str(obj["signature"]), validate=True)
        anchor.verify(signature, checkpoint_payload(seq, tip))
    except (binascii.Error, ValueError, InvalidSignature):
        return f"seq {seq}: bad signature (forged or edited?)"
    return None


# -- recordings -----------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingCheck:
    """One recording checked against the audit log by :func:`verify_recordings`.

    ``status``: ``ok`` (the file hashes to what ``record.stop`` audited),
    ``modified`` (it does not), ``missing`` (the file is gone, with no
    ``record.rm``), ``removed`` (deleted with ``record rm``), ``running`` (no
    ``record.stop`` yet) or ``unhashed`` (stopped by a tachi that did not hash
    recordings). ``failed`` says whether the status is a verification failure.
    """

    id: str
    path: str
    status: str
    problem: str = ""
    seq: int | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("modified", "missing")


def verify_recordings(directory: Path, recording: str | None = None) -> list[RecordingCheck]:
    """Check each recording the audit log in ``directory`` knows of against the
    SHA-256 its ``record.stop`` record holds (only ``recording``, an id or a
    file path, when given). Records are read as they are: run :func:`verify`
    first, since a log that does not verify vouches for nothing. Never raises
    for a damaged log or file; raises ``OSError`` if the log cannot be read.
    """
    from tachi.core.recorder_worker import file_digest

    paths: dict[str, str] = {}
    stops: dict[str, dict[str, Any]] = {}
    removed: set[str] = set()
    for record in read_records(Path(directory) / RECORDS_NAME):
        details = record.get("details")
        if not isinstance(details, dict) or not isinstance(details.get("recording"), str):
            continue
        rec_id = details["recording"]
        action = record.get("action")
        if action == "record.start" and isinstance(details.get("path"), str):
            paths[rec_id] = details["path"]
            stops.pop(rec_id, None)
            removed.discard(rec_id)
        elif action == "record.stop":
            stops[rec_id] = {**details, "seq": record.get("seq")}
        elif action == "record.rm":
            removed.add(rec_id)
    checks = []
    for rec_id, path in paths.items():
        if recording is not None and not _names(recording, rec_id, path):
            continue
        stop = stops.get(rec_id)
        if rec_id in removed:
            checks.append(RecordingCheck(rec_id, path, "removed", "deleted with record rm"))
        elif stop is None:
            checks.append(RecordingCheck(rec_id, path, "running", "no record.stop yet"))
        elif not isinstance(stop.get("sha256"), str):
            checks.append(
                RecordingCheck(rec_id, path, "unhashed", "its record.stop holds no sha256")
            )
        else:
            seq = stop["seq"] if _is_int(stop["seq"]) else None
            try:
                digest, size = file_digest(Path(path))
            except FileNotFoundError:
                checks.append(
                    RecordingCheck(rec_id, path, "missing", "the file is gone (not record rm)", seq)
                )
                continue
            except OSError as e:
                problem = f"cannot read it: {e.strerror or e}"
                checks.append(RecordingCheck(rec_id, path, "missing", problem, seq))
                continue
            if digest != stop["sha256"]:
                problem = (
                    f"SHA-256 differs from the one audited at record {seq}"
                    f" ({size} bytes now, {stop.get('size')} then): edited?"
                )
                checks.append(RecordingCheck(rec_id, path, "modified", problem, seq))
            else:
                checks.append(RecordingCheck(rec_id, path, "ok", "", seq))
    return checks


def _names(ref: str, rec_id: str, path: str) -> bool:
    """Whether ``ref`` (an id or a file path) names the recording ``rec_id`` at ``path``."""
    if ref in (rec_id, path):
        return True
    try:
        return os.path.samefile(ref, path)
    except OSError:
        return False
