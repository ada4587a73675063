"""Helpers both clients (blocking and asyncio) use."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from tachi.errors import InvalidRequest, NotFound


class PatternWait:
    """What a ``read_until`` has read so far, and whether its pattern is in it.

    Each search starts where the last one could still find a match, so a long
    wait costs the bytes read, not the bytes read times the reads."""

    def __init__(self, pattern: bytes | str, timeout: float) -> None:
        self.wanted = pattern.encode() if isinstance(pattern, str) else pattern
        self.timeout = timeout
        self.seen = bytearray()
        self.found = not self.wanted
        self._from = 0

    def add(self, data: bytes) -> None:
        self.seen += data
        self.found = self.seen.find(self.wanted, self._from) >= 0
        self._from = max(0, len(self.seen) - len(self.wanted) + 1)

    def ended(self) -> EOFError:
        return EOFError(f"the attachment ended before {self.wanted!r} was read")

    def timed_out(self) -> TimeoutError:
        return TimeoutError(
            f"{self.wanted!r} not read within {self.timeout:g} s; "
            f"the last output: {bytes(self.seen[-200:])!r}"
        )


def recording_bytes(read: Callable[[int], dict[str, Any]]) -> bytes:
    """A whole recording, from ``record.read`` chunks: ``read(offset)``."""
    chunks = []
    offset = 0
    while True:
        part = read(offset)
        data = base64.b64decode(part["data"])
        chunks.append(data)
        offset += len(data)
        if part["eof"]:
            return b"".join(chunks)


def audit_records(session: str | None, since: str | None) -> list[dict[str, Any]]:
    """This host's audit records (``tachi audit --json``), optionally about one
    session (id or name) and at or after ``since`` (RFC 3339 or a duration ago).

    Raises ``NotFound`` for a session the daemon never had, ``InvalidRequest``
    for a bad ``since``.
    """
    from tachi.audit import read_records
    from tachi.core.store import session_ids
    from tachi.gotime import now_ns, parse_duration, parse_rfc3339
    from tachi.paths import state_dir

    since_ns = None
    if since:
        try:
            since_ns = parse_rfc3339(since)
        except ValueError:
            try:
                since_ns = now_ns() - parse_duration(since)
            except ValueError:
                raise InvalidRequest(
                    f"{since!r} is neither an RFC 3339 time nor a duration"
                ) from None
    ids = None
    if session is not None:
        ids = set(session_ids(state_dir() / "tachi.db", session))
        if not ids:
            raise NotFound(f"no session {session!r} in this daemon's history (see 'tachi ls')")
    path = state_dir() / "audit" / "audit.jsonl"
    if not path.exists():
        return []
    return [
        r for r in read_records(path, since_ns=since_ns) if ids is None or r.get("session") in ids
    ]
