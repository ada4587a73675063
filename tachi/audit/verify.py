"""Verifying the audit log (the chain and its signed checkpoints) and the
recordings it vouches for."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)

from tachi.audit.format import (
    CHECKPOINTS_NAME,
    GENESIS_HASH,
    KEY_NAME,
    RECORDS_NAME,
    _is_int,
    _parse_object,
    _record_shape_problem,
    record_hash,
)
from tachi.audit.read import read_records
from tachi.audit.signing import _checkpoint_problem, _load_private_key, _public_raw
from tachi.errors import AuditWriteError


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
