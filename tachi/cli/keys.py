"""Key notation (``C-\\``, ``C-b``) and C-style escapes for ``tachi send``."""

from __future__ import annotations

import re


def parse_key(spec: str) -> bytes:
    """``C-\\`` → ``b"\\x1c"``, ``C-b`` → ``b"\\x02"``, ``^A`` → ``b"\\x01"``, ``x`` → ``b"x"``.

    Raises ``ValueError`` for anything that is not one key.
    """
    s = spec.strip()
    m = re.fullmatch(r"(?:C-|\^)(.)", s)
    if m:
        ch = m.group(1)
        code = ord(ch.upper()) if ch.isalpha() else ord(ch)
        if code == ord("?"):
            return b"\x7f"
        if 0x40 <= code <= 0x5F:
            return bytes([code - 0x40])
        raise ValueError(f"no control key for {spec!r}")
    if len(s) == 1:
        return s.encode()
    raise ValueError(f"not a key: {spec!r} (examples: C-\\, C-b, ^A)")


def decode_escapes(text: str) -> str:
    """Apply C escapes: ``\\n``, ``\\r``, ``\\t``, ``\\e``, ``\\x03``, ``\\u20ac``, ``\\\\``.

    Raises ``ValueError`` naming a malformed escape.
    """
    text = re.sub(r"(?<!\\)((?:\\\\)*)\\e", lambda m: m.group(1) + "\\x1b", text)
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise ValueError(f"bad escape in {text!r}: {exc.reason}") from None
