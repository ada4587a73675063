"""The audit log's format: file names, record and checkpoint fields, the
canonical encoding that is hashed and signed, and parsing a line back
(rejecting what two JSON readers could read differently)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

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
