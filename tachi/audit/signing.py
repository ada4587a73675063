"""Checkpoints: the Ed25519 key (made once, kept private), signing the chain's
tip, and checking a checkpoint line against the key that should have signed it."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tachi.audit.files import _write_all
from tachi.audit.format import (
    CHECKPOINT_KEYS,
    KEY_NAME,
    _is_hex64,
    _is_int,
    _parse_object,
    checkpoint_payload,
)
from tachi.errors import AuditWriteError
from tachi.gotime import format_rfc3339, now_ns


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


def load_or_create_key(key_path: Path, dir_fd: int | None) -> tuple[Ed25519PrivateKey, bool]:
    """The private key at ``key_path`` (made 0600 if it was not), or a new one
    written there; ``True`` when it is new. Raises ``AuditWriteError`` for a file
    that is not an Ed25519 private key, ``OSError`` if it cannot be written."""
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        pass
    else:
        if stat.S_IMODE(key_path.stat().st_mode) != 0o600:
            os.chmod(key_path, 0o600)
        return _load_private_key(data, key_path), False
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written whole to a temporary name, then linked into place: a crash never
    # leaves a half-written key, and link() never replaces a key that exists.
    tmp = key_path.with_name(f".{KEY_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, key_path)
    except FileExistsError:
        # Another opener won the race; use its key.
        return _load_private_key(key_path.read_bytes(), key_path), False
    finally:
        tmp.unlink(missing_ok=True)
    if dir_fd is not None:
        os.fsync(dir_fd)
    return key, True


def signed_checkpoint(
    key: Ed25519PrivateKey, public_b64: str, seq: int, tip: str
) -> dict[str, Any]:
    """The checkpoint line (as a dict) signing ``seq:tip`` with ``key``."""
    signature = key.sign(checkpoint_payload(seq, tip))
    return {
        "seq": seq,
        "hash": tip,
        "time": format_rfc3339(now_ns()),
        "publicKey": public_b64,
        "signature": base64.b64encode(signature).decode(),
    }


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
