"""Key notation (``C-\\``, ``C-b``) and C-style escapes for ``tachi send``."""

from __future__ import annotations

import re


def parse_key(spec: str) -> bytes:
    """``C-\\`` → ``b"\\x1c"``, ``C-b`` → ``b"\\x02"``, ``^A`` → ``b"\\x01"``, ``x`` → ``b"x"``,
    ``é`` → its UTF-8 bytes, ``M-a`` (Alt-a) → ``b"\\x1ba"``: the bytes the
    terminal sends for the key, which the prefix matches as a whole.

    Raises ``ValueError`` for anything that is not one key, and for keys that
    cannot be told apart from the start of other keys: Escape (``C-[``) and
    ``M-[``/``M-O`` begin the sequences that arrows and function keys send.
    """
    s = spec.strip()
    m = re.fullmatch(r"(?:C-|\^)(.)", s)
    if m:
        ch = m.group(1)
        code = ord(ch.upper()) if ch.isalpha() else ord(ch)
        if code == ord("?"):
            return b"\x7f"
        if code == ord("["):
            raise ValueError(
                f"{spec!r} is Escape, which also begins what arrows and function keys send;"
                " choose another prefix"
            )
        if 0x40 <= code <= 0x5F:
            return bytes([code - 0x40])
        raise ValueError(f"no control key for {spec!r}")
    m = re.fullmatch(r"M-(.)", s)
    if m:
        ch = m.group(1)
        if ch in "[O" or not ch.isprintable():
            raise ValueError(
                f"{spec!r} sends ESC {ch}, which also begins what arrows and function keys"
                " send; choose another prefix"
            )
        return b"\x1b" + ch.encode()
    if len(s) == 1 and s.isprintable():
        return s.encode()
    raise ValueError(f"not a key: {spec!r} (examples: C-\\, C-b, ^A, M-a, §)")


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
