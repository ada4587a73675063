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


_SIMPLE_ESCAPES = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "e": "\x1b",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "0": "\0",
    "\\": "\\",
    "'": "'",
    '"': '"',
}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.|$)", re.DOTALL)


def decode_escapes(text: str) -> str:
    """Apply C escapes: ``\\n``, ``\\r``, ``\\t``, ``\\e``, ``\\a``, ``\\b``, ``\\f``,
    ``\\v``, ``\\0``, ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH``, ``\\\\``, ``\\'``, ``\\"``.

    Raises ``ValueError`` naming the first malformed or unknown escape (``\\q``,
    ``\\x4``, a trailing backslash), so nothing is sent for a typo.
    """

    def replace(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[esc]
        if len(esc) > 1:
            code = int(esc[1:], 16)
            if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
                return chr(code)
        where = m.group(0) if esc else "a trailing \\"
        raise ValueError(f"unknown escape {where!r} (use --literal to send text as it is)")

    return _ESCAPE.sub(replace, text)
