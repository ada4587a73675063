"""Reading the audit log's records back (a reader, not a verifier)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tachi.audit.format import _parse_object
from tachi.gotime import parse_rfc3339


def read_records(
    path: Path, *, session: str | None = None, since_ns: int | None = None
) -> Iterator[dict]:
    """Yield the records of ``path`` in file order, optionally only those about
    ``session`` and those at or after ``since_ns`` (epoch nanoseconds).

    A reader, not a verifier: lines that are not JSON objects (and a partial
    last line being written right now) are skipped; use :func:`verify` to check
    integrity. Raises ``OSError`` (e.g. ``FileNotFoundError``) if ``path``
    cannot be opened.
    """
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                record = _parse_object(raw.rstrip(b"\n"))
            except ValueError:
                continue
            if session is not None and record.get("session") != session:
                continue
            if since_ns is not None:
                try:
                    if parse_rfc3339(str(record.get("time"))) < since_ns:
                        continue
                except ValueError:
                    continue
            yield record
