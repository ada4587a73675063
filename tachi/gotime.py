"""Go-compatible encodings of time values, and human duration parsing.

tachi's JSON must decode unchanged into the seed's Go structs, so timestamps are
RFC 3339 UTC strings with nanoseconds (Go's ``time.RFC3339Nano``) and durations
are integer nanoseconds (Go's ``time.Duration``).
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime

_NS_PER_S = 1_000_000_000
_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": _NS_PER_S,
    "m": 60 * _NS_PER_S,
    "h": 3600 * _NS_PER_S,
    "d": 86400 * _NS_PER_S,
}
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")


def now_ns() -> int:
    """Wall-clock time as integer nanoseconds since the Unix epoch."""
    return time.time_ns()


def format_rfc3339(ns: int) -> str:
    """Format epoch nanoseconds as Go's RFC3339Nano in UTC (trailing zeros trimmed).

    >>> format_rfc3339(1_700_000_000_123_456_789)
    '2023-11-14T22:13:20.123456789Z'
    """
    seconds, frac = divmod(ns, _NS_PER_S)
    base = _second_text(seconds)
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return base + "Z"


# A listing of 1,000 sessions formats and parses 3,000 timestamps, most of them
# in the same few seconds: the whole-second part is what costs (datetime).
@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@functools.lru_cache(maxsize=4096)
def _second_ns(whole: str, zone: str) -> int:
    dt = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return int(dt.timestamp()) * _NS_PER_S


def parse_rfc3339(text: str) -> int:
    """Parse an RFC 3339 timestamp (any offset, up to nanoseconds) to epoch nanoseconds.

    Raises ``ValueError`` for anything else.
    """
    m = _RFC3339.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    whole, frac, zone = m.groups()
    return _second_ns(whole, zone) + int((frac or "0").ljust(9, "0"))


def parse_duration(text: str | int | float) -> int:
    """Parse a human duration to integer nanoseconds.

    Accepts ``0``/``none`` (no limit), Go-style compounds (``1h30m``, ``90s``,
    ``500ms``) and a bare number of seconds. Raises ``ValueError`` with the bad
    text otherwise.
    """
    if isinstance(text, int | float):
        return int(text * _NS_PER_S)
    s = text.strip().lower()
    if s in ("0", "none", "off", ""):
        return 0
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return int(float(s) * _NS_PER_S)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS_NS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"invalid duration {text!r} (examples: 90s, 30m, 8h, 1h30m, 0 for none)")
    return int(total)


def format_duration(ns: int) -> str:
    """Short human form of nanoseconds: ``1h30m``, ``1m30s``, ``none`` for 0."""
    if ns <= 0:
        return "none"
    seconds = ns // _NS_PER_S
    if seconds == 0:
        return f"{ns // 1_000_000}ms"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
