"""Recognising keys in what a terminal sends: a byte, or a whole escape sequence.

``tachi attach`` must treat a key such as PageUp (``ESC [ 5 ~``) as one key,
or the part after ESC would be typed into the program as text. This only
splits input into keys and names the ones tachi binds; it interprets nothing.
"""

from __future__ import annotations

import re

# CSI (ESC [ params intermediates final) and SS3 (ESC O final), as ECMA-48 and
# xterm encode cursor, editing and function keys.
_SEQUENCE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|O[@-~])")
NAMES = {
    b"\x1b[A": "up",
    b"\x1b[B": "down",
    b"\x1b[C": "right",
    b"\x1b[D": "left",
    b"\x1bOA": "up",
    b"\x1bOB": "down",
    b"\x1bOC": "right",
    b"\x1bOD": "left",
    b"\x1b[5~": "pageup",
    b"\x1b[6~": "pagedown",
    b"\x1b[H": "home",
    b"\x1b[F": "end",
    b"\x1bOH": "home",
    b"\x1bOF": "end",
    b"\x1b[1~": "home",
    b"\x1b[4~": "end",
}


def sequence_at(data: bytes, i: int) -> bytes | None:
    """The escape sequence starting at ``data[i]`` (an ESC), or ``None`` for a lone ESC."""
    m = _SEQUENCE.match(data, i)
    return m.group(0) if m else None


def keys(data: bytes) -> list[str]:
    """Split input into keys: named keys (``up``, ``pageup``, ``escape``,
    ``enter``, ``backspace``, ``C-c`` …), other sequences as ``unknown``, and
    text as one-character strings."""
    out: list[str] = []
    i = 0
    while i < len(data):
        if data[i] == 0x1B:
            seq = sequence_at(data, i)
            if seq is None:
                out.append("escape")
                i += 1
                continue
            out.append(NAMES.get(seq, "unknown"))
            i += len(seq)
            continue
        byte = data[i]
        if byte in (0x0D, 0x0A):
            out.append("enter")
        elif byte in (0x7F, 0x08):
            out.append("backspace")
        elif byte < 0x20:
            out.append("C-" + chr(byte + 0x60))
        else:
            # Whole UTF-8 characters, so a search can hold any text.
            end = i + 1
            while end < len(data) and 0x80 <= data[end] < 0xC0:
                end += 1
            out.append(data[i:end].decode(errors="replace"))
            i = end
            continue
        i += 1
    return out
