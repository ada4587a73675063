"""Helpers both clients (blocking and asyncio) use."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from tachi.errors import InvalidRequest, NotFound


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
