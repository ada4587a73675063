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

The package is split along its jobs: :mod:`~tachi.audit.format` (what is
hashed and signed), :mod:`~tachi.audit.files`, :mod:`~tachi.audit.writer`
(:class:`AuditLog`), :mod:`~tachi.audit.signing` (checkpoints),
:mod:`~tachi.audit.verify` and :mod:`~tachi.audit.read`. Everything stays
importable from ``tachi.audit``, as plugins use it (the nats plugin's
``_walk_chain`` and ``_checkpoint_problem`` included).
"""

from __future__ import annotations

from tachi.audit.format import (
    CHECKPOINT_DOMAIN,
    CHECKPOINT_KEYS,
    CHECKPOINTS_NAME,
    GENESIS_HASH,
    GENESIS_SEQ_TIP,
    KEY_NAME,
    RECORD_DOMAIN,
    RECORD_KEYS,
    RECORDS_NAME,
    RESULTS,
    _parse_object,
    _record_shape_problem,
    canonical,
    checkpoint_payload,
    record_hash,
)
from tachi.audit.read import read_records
from tachi.audit.signing import _checkpoint_problem, signed_checkpoint
from tachi.audit.verify import (
    RecordingCheck,
    VerifyResult,
    _walk_chain,
    verify,
    verify_recordings,
)
from tachi.audit.writer import AuditLog
from tachi.errors import AuditWriteError

__all__ = [
    "CHECKPOINTS_NAME",
    "CHECKPOINT_DOMAIN",
    "CHECKPOINT_KEYS",
    "GENESIS_HASH",
    "GENESIS_SEQ_TIP",
    "KEY_NAME",
    "RECORDS_NAME",
    "RECORD_DOMAIN",
    "RECORD_KEYS",
    "RESULTS",
    "AuditLog",
    "AuditWriteError",
    "RecordingCheck",
    "VerifyResult",
    "_checkpoint_problem",
    "_parse_object",
    "_record_shape_problem",
    "_walk_chain",
    "canonical",
    "checkpoint_payload",
    "read_records",
    "record_hash",
    "signed_checkpoint",
    "verify",
    "verify_recordings",
]
