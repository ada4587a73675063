"""The fleet view: what ``tachi fleet hosts|ls`` print, built from registry entries.

One code for both ways of getting the entries, so their output is the same byte
for byte: read from NATS by the command itself (``tachi_nats.cli``), or kept
current in the daemon's mirror (``tachi_nats.mirror``) and sent to the command.
Only the standard library: the command's daemon path must not import nats-py.

A session's JSON is kept as the host published it (compact, one line) and
printed as is; only a session whose host is gone is decoded again, to say
``unreachable``. The fields the listing sorts, filters and shows are read once,
when the entry arrives.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

#: Columns of ``tachi fleet ls``: the ``tachi ls`` columns plus HOST.
HEADERS = ["HOST", "ID", "NAME", "STATE", "USER", "AGENT", "SIZE", "WIN", "CREATED", "COMMAND"]
#: Columns of ``tachi fleet hosts``.
HOST_HEADERS = ["HOST", "STATUS", "SESSIONS", "AUDITED", "VERSION", "STARTED"]
#: The filters of ``fleet ls`` (option name -> the session JSON key).
FILTERS = {"host": "host", "state": "state", "agent": "agentId", "user": "userId"}


class SessionEntry:
    """One session of the registry: its JSON as published, and what the listing
    needs of it."""

    __slots__ = (
        "agent", "command", "created", "host", "id", "name", "order", "raw", "rewritten", "size",
        "state", "user", "windows",
    )  # fmt: skip

    def __init__(self, raw: bytes, doc: dict[str, Any], key_host: str) -> None:
        self.raw = raw
        self.host = str(doc.get("host") or key_host)
        self.id = doc.get("id")
        self.created = doc.get("createdAt")
        self.state = doc.get("state")
        self.agent = doc.get("agentId")
        self.user = doc.get("userId")
        self.name = doc.get("name") or "-"
        pty = doc.get("pty")
        self.size = f"{pty['cols']}x{pty['rows']}" if isinstance(pty, dict) else ""
        self.windows = len(doc.get("windows") or ()) or "-"
        self.command = " ".join(map(str, doc.get("command") or ()))[:40]
        #: The listing's order (host, creation time, id), made once, not per sort.
        self.order = (self.host, str(self.created or ""), str(self.id or ""))
        #: (state, JSON with it): the last rewrite, kept for the mirror's next
        #: answer (a gone host's sessions stay rewritten while nothing else changes).
        self.rewritten: tuple[Any, bytes] | None = None

    def sort_key(self) -> tuple[str, str, str]:
        return self.order

    def document(self, state: str | None) -> bytes:
        """The session's JSON, one line; with ``state`` put in when it differs."""
        if state == self.state:
            return self.raw
        kept = self.rewritten
        if kept is not None and kept[0] == state:
            return kept[1]
        doc = json.loads(self.raw)
        doc["state"] = state
        data = json.dumps(doc, separators=(",", ":")).encode()
        self.rewritten = (state, data)
        return data


def session_entry(key: str, raw: bytes) -> SessionEntry | None:
    """The entry of registry key ``HOST.ID``, or ``None`` for a value that is not a
    JSON object (a broken publisher must not break the listing)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    return SessionEntry(bytes(raw), doc, key.split(".", 1)[0])


def host_doc(raw: bytes) -> dict[str, Any] | None:
    """An ``info.HOST`` or ``alive.HOST`` value, or ``None`` if it is not an object."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def hosts(
    info: Mapping[str, dict[str, Any]],
    alive: Mapping[str, dict[str, Any]],
    sessions: Iterable[SessionEntry],
) -> list[dict[str, Any]]:
    """Every host, by name: ``up`` when it is in ``alive`` (its heartbeat is there),
    else ``gone``; its info, its heartbeat and how many sessions it has. A host
    known only by its sessions is listed too (gone)."""
    counts = Counter(e.host for e in sessions)
    out = []
    for name in sorted(set(info) | set(alive) | set(counts)):
        entry: dict[str, Any] = {"host": name, "status": "up" if name in alive else "gone"}
        entry.update((k, v) for k, v in (info.get(name) or {}).items() if k != "host")
        if name in alive:
            entry["heartbeat"] = alive[name]
        entry["sessions"] = counts[name]
        out.append(entry)
    return out


def select(
    sessions: Iterable[SessionEntry], up: set[str], filters: Mapping[str, str | None]
) -> list[tuple[SessionEntry, Any]]:
    """(entry, state shown) of the sessions the filters keep, by host, creation
    time and id; the state of a session whose host is not ``up`` is
    ``unreachable``."""
    want = {k: v for k, v in filters.items() if v is not None}
    out = []
    for e in sessions:
        state = e.state if e.host in up else "unreachable"
        if want and not (
            want.get("host", e.host) == e.host
            and want.get("state", state) == state
            and want.get("agent", e.agent) == e.agent
            and want.get("user", e.user) == e.user
        ):
            continue
        out.append((e, state))
    out.sort(key=lambda pair: pair[0].order)
    return out


def json_lines(selected: list[tuple[SessionEntry, Any]]) -> bytes:
    """The sessions as a JSON array, one session per line (``fleet ls --json``)."""
    if not selected:
        return b"[]\n"
    return b"[\n" + b",\n".join(e.document(state) for e, state in selected) + b"\n]\n"


def rows(selected: list[tuple[SessionEntry, Any]]) -> list[list[Any]]:
    """The table's rows, with CREATED still the creation time (the age is
    computed where it is printed)."""
    return [
        [e.host, e.id, e.name, state, e.user, e.agent, e.size, e.windows, e.created, e.command]
        for e, state in selected
    ]


def dumps(value: Any) -> bytes:
    """Compact JSON, as the hosts publish their documents."""
    return json.dumps(value, separators=(",", ":")).encode()


def host_rows(host_list: list[dict[str, Any]]) -> list[list[Any]]:
    out = []
    for h in host_list:
        beat = h.get("heartbeat") or {}
        out.append(
            [
                h["host"],
                h["status"],
                h["sessions"],
                beat.get("auditShipped", "-"),
                h.get("version") or "-",
                h.get("startedAt") or "-",
            ]
        )
    return out
