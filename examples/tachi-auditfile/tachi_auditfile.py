"""tachi-auditfile: ships every audit record to a collector (here: a JSON-lines
file named by ``[plugins.auditfile] path`` in config.toml).

The hook runs on a thread of its own, in order, and may block: a slow
collector holds up only this thread. At daemon stop, tachi waits up to 5 s for
what is queued (``daemon.stop``'s own record included), so nothing written
before the stop is lost unless the collector needs longer than that."""

from __future__ import annotations

import json
from typing import Any

import tachi
from tachi.config import load

_path: str | None = None


@tachi.hookimpl
def tachi_audit_event(event: dict[str, Any]) -> None:
    global _path
    if _path is None:
        _path = load().plugin("auditfile").get("path") or "audit-shipped.jsonl"
    # One line per record, appended and flushed before returning: a record the
    # hook returned from is with the collector. Raise only to give up on it.
    with open(_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")
