"""The seed's data model as dataclasses, with Go-compatible JSON.

Field names in JSON are exactly the seed's (``agentId``, ``lastActivity``,
``xPixel`` …); timestamps are RFC 3339 UTC with nanoseconds and durations are
integer nanoseconds, so a Go service decodes them into the seed's structs.
Internally times are kept as epoch nanoseconds (``int``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tachi.gotime import format_rfc3339, parse_rfc3339

#: Characters a terminal acts on rather than shows: C0 and C1 controls (ESC
#: starts OSC 52 clipboard writes and OSC 0 title changes), DEL, line and
#: paragraph separators, bidirectional overrides and isolates (which reorder
#: what follows them), and lone surrogates.
UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def visible(text: str) -> str:
    """``text`` with every character of :data:`UNSAFE_TEXT` written as an escape
    (``\\x1b``, ``\\u202e``), so printing it cannot drive the terminal."""
    if not UNSAFE_TEXT.search(text):
        return text
    return UNSAFE_TEXT.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text
    )


def check_window_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is 1-64 characters, not all blank, with
    no character a terminal would act on (see :data:`UNSAFE_TEXT`)."""
    if not name.strip() or len(name) > 64:
        raise ValueError("a window name must be 1-64 characters")
    if UNSAFE_TEXT.search(name):
        raise ValueError(
            f"invalid window name '{visible(name)}': control characters are not allowed"
        )


class SessionState(enum.StrEnum):
    """Lifecycle: pending → active ↔ suspended → closed."""

    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class CloseReason(enum.StrEnum):
    """Why a session reached ``closed``."""

    EXIT = "exit"
    CLOSED = "closed"
    IDLE_TIMEOUT = "idle-timeout"
    MAX_DURATION = "max-duration"
    DAEMON_STOPPED = "daemon-stopped"


def utc(ns: int | None) -> Any:
    """Epoch nanoseconds as an aware UTC ``datetime`` (``None`` stays ``None``),
    for Python users; JSON keeps RFC 3339 strings and fields keep nanoseconds."""
    if ns is None:
        return None
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)


def span(ns: int) -> Any:
    """Nanoseconds as a ``timedelta``."""
    import datetime as dt

    return dt.timedelta(microseconds=ns / 1000)


@dataclass(slots=True)
class PTYConfig:
    """Terminal type and size of a PTY (seed: PTYConfig)."""

    term: str = "xterm-256color"
    rows: int = 24
    cols: int = 80
    xPixel: int = 0
    yPixel: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "term": self.term,
            "rows": self.rows,
            "cols": self.cols,
            "xPixel": self.xPixel,
            "yPixel": self.yPixel,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PTYConfig:
        return cls(
            term=str(d.get("term") or ""),
            rows=int(d.get("rows") or 24),
            cols=int(d.get("cols") or 80),
            xPixel=int(d.get("xPixel") or 0),
            yPixel=int(d.get("yPixel") or 0),
        )

    def validate(self) -> None:
        """Raise ``ValueError`` unless rows and cols are within ``MAX_ROWS`` and
        ``MAX_COLS`` and the pixel sizes fit the seed's uint16.

        The seed allows any uint16, but every window keeps an emulated screen
        (and history) of rows x cols cells in the daemon: 65535 x 65535 would
        be tens of GB and take every session down with the daemon.
        """
        for name, limit in (("rows", MAX_ROWS), ("cols", MAX_COLS)):
            value = getattr(self, name)
            if not 1 <= value <= limit:
                raise ValueError(f"{name} must be between 1 and {limit}, got {value}")
        for name in ("xPixel", "yPixel"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ValueError(f"{name} must be between 0 and 65535, got {value}")


#: The largest terminal a window may have (tmux allows 10000 x 10000; xterm's
#: practical limit is lower). 1000 columns x 500 rows covers an 8K display at a
#: tiny font while keeping one window's screen under ~10 MB.
MAX_ROWS = 500
MAX_COLS = 1000


@dataclass(slots=True)
class Window:
    """One PTY and process inside a session (seed: Window)."""

    id: int
    name: str
    active: bool
    createdAt: int
    command: list[str] = field(default_factory=list)
    pid: int | None = None
    exitCode: int | None = None
    #: Input accepted by the daemon that the program has not read yet.
    inputPending: int = 0

    @property
    def created_at(self) -> Any:
        return utc(self.createdAt)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "active": self.active,
            "createdAt": format_rfc3339(self.createdAt),
            "command": self.command,
            "pid": self.pid,
            "exitCode": self.exitCode,
            "inputPending": self.inputPending,
        }

    def masked_json(self, keys: frozenset[str]) -> dict[str, Any]:
        """``to_json`` with only ``keys``."""
        return {
            k: format_rfc3339(self.createdAt) if k == "createdAt" else getattr(self, k)
            for k in keys
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Window:
        return cls(
            id=int(d["id"]),
            name=str(d.get("name", "")),
            active=bool(d.get("active")),
            createdAt=parse_rfc3339(d["createdAt"]),
            command=list(d.get("command") or []),
            pid=d.get("pid"),
            inputPending=int(d.get("inputPending") or 0),
            exitCode=d.get("exitCode"),
        )


@dataclass(slots=True)
class Session:
    """A terminal session (seed: Session), plus tachi's extra fields."""

    id: str
    agentId: str
    userId: str
    state: SessionState
    pty: PTYConfig | None
    createdAt: int
    lastActivity: int
    idleTimeout: int = 0
    maxDuration: int = 0
    name: str | None = None
    closeReason: CloseReason | None = None
    exitCode: int | None = None
    closedAt: int | None = None
    command: list[str] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    clients: int = 0

    @property
    def created_at(self) -> Any:
        """``createdAt`` as a UTC ``datetime``."""
        return utc(self.createdAt)

    @property
    def last_activity(self) -> Any:
        return utc(self.lastActivity)

    @property
    def closed_at(self) -> Any:
        return utc(self.closedAt)

    @property
    def idle_timeout(self) -> Any:
        """``idleTimeout`` as a ``timedelta`` (zero: none)."""
        return span(self.idleTimeout)

    @property
    def max_duration(self) -> Any:
        return span(self.maxDuration)

    def to_json(self, fields: FieldMask | None = None) -> dict[str, Any]:
        """The seed's JSON; with ``fields`` (see ``field_mask``), only those."""
        if fields is not None:
            return self._masked_json(fields)
        d: dict[str, Any] = {
            "id": self.id,
            "agentId": self.agentId,
            "userId": self.userId,
            "state": str(self.state),
        }
        if self.pty is not None:
            d["pty"] = self.pty.to_json()
        d |= {
            "createdAt": format_rfc3339(self.createdAt),
            "lastActivity": format_rfc3339(self.lastActivity),
            "idleTimeout": self.idleTimeout,
            "maxDuration": self.maxDuration,
            "name": self.name,
            "closeReason": str(self.closeReason) if self.closeReason else None,
            "exitCode": self.exitCode,
            "closedAt": format_rfc3339(self.closedAt) if self.closedAt else None,
            "command": self.command,
            "windows": [w.to_json() for w in self.windows],
            "clients": self.clients,
        }
        return d

    def _masked_json(self, fields: FieldMask) -> dict[str, Any]:
        # Field by field from the attributes (named as the JSON keys): a listing
        # of 1,000 sessions then never formats what it leaves out.
        d: dict[str, Any] = {}
        for key, sub in fields.items():
            value = getattr(self, key)
            if key == "pty":
                if value is None:
                    continue
                value = value.to_json()
                if sub is not None:
                    value = {k: value[k] for k in sub}
            elif key == "windows":
                value = [w.to_json() if sub is None else w.masked_json(sub) for w in value]
            elif key in _TIMES:
                value = format_rfc3339(value) if value else None
            elif key in _ENUMS:
                value = str(value) if value else None
            d[key] = value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Session:
        return cls(
            id=d["id"],
            agentId=d.get("agentId", ""),
            userId=d.get("userId", ""),
            state=SessionState(d["state"]),
            pty=PTYConfig.from_json(d["pty"]) if d.get("pty") else None,
            createdAt=parse_rfc3339(d["createdAt"]),
            lastActivity=parse_rfc3339(d["lastActivity"]),
            idleTimeout=int(d.get("idleTimeout") or 0),
            maxDuration=int(d.get("maxDuration") or 0),
            name=d.get("name"),
            closeReason=CloseReason(d["closeReason"]) if d.get("closeReason") else None,
            exitCode=d.get("exitCode"),
            closedAt=parse_rfc3339(d["closedAt"]) if d.get("closedAt") else None,
            command=list(d.get("command") or []),
            windows=[Window.from_json(w) for w in d.get("windows") or []],
            clients=int(d.get("clients") or 0),
        )


# Session fields whose JSON is an RFC 3339 timestamp / an enum's value.
_TIMES = frozenset({"createdAt", "lastActivity", "closedAt"})
_ENUMS = frozenset({"state", "closeReason"})
#: A parsed field mask: Session keys, each with the keys kept of its value (``pty``'s,
#: or each window's), or ``None`` for the whole value.
FieldMask = Mapping[str, frozenset[str] | None]


def field_mask(paths: Iterable[Any]) -> FieldMask:
    """Parse a field mask (``session.list``'s ``fields``): Session keys such as
    ``"state"``, or ``"pty.cols"`` / ``"windows.id"`` for part of the terminal size
    or of each window. ``id`` is always kept.

    Raises ``ValueError`` naming an unknown field.
    """
    nested = {"pty": PTYConfig, "windows": Window}
    known = {f.name for f in fields(Session)}
    mask: dict[str, set[str] | None] = {"id": None}
    for path in paths:
        if not isinstance(path, str):
            raise ValueError(f"a field is a string, not {path!r}")
        key, _, sub = path.partition(".")
        if key not in known:
            raise ValueError(f"unknown field {path!r} (fields: {', '.join(sorted(known))})")
        if not sub:
            mask[key] = None
            continue
        if key not in nested:
            raise ValueError(f"{key!r} has no fields: {path!r}")
        subs = {f.name for f in fields(nested[key])}
        if sub not in subs:
            raise ValueError(f"unknown field {path!r} ({key} has: {', '.join(sorted(subs))})")
        kept = mask.setdefault(key, set())
        if kept is not None:
            kept.add(sub)
    return {k: None if v is None else frozenset(v) for k, v in mask.items()}


@dataclass(slots=True)
class SessionRequest:
    """What ``Create`` needs (seed: SessionRequest). Empty fields take config defaults."""

    agentId: str | None = None
    name: str | None = None
    command: list[str] = field(default_factory=list)
    pty: PTYConfig = field(default_factory=PTYConfig)
    idleTimeout: int | None = None
    maxDuration: int | None = None
    record: bool = False
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "agentId": self.agentId,
            "name": self.name,
            "command": self.command,
            "pty": self.pty.to_json(),
            "idleTimeout": self.idleTimeout,
            "maxDuration": self.maxDuration,
            "record": self.record,
            "env": self.env,
            "cwd": self.cwd,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionRequest:
        command = d.get("command") or []
        env = d.get("env") or {}
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise ValueError("command must be a list of strings")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ValueError("env must map strings to strings")
        # An empty term means "the daemon's default" (config session.term).
        pty = PTYConfig.from_json(d.get("pty") or {})
        pty.validate()
        return cls(
            agentId=d.get("agentId"),
            name=d.get("name"),
            command=list(command),
            pty=pty,
            idleTimeout=_opt_int(d.get("idleTimeout")),
            maxDuration=_opt_int(d.get("maxDuration")),
            record=bool(d.get("record")),
            env=dict(env),
            cwd=d.get("cwd"),
        )


@dataclass(slots=True)
class SessionFilter:
    """Filters for ``List`` (seed: SessionFilter). ``None`` matches everything;
    ``live`` leaves out closed sessions (the daemon then does not read its
    history at all)."""

    state: SessionState | None = None
    agentId: str | None = None
    userId: str | None = None
    live: bool = False

    def matches(self, s: Session) -> bool:
        return (
            (self.state is None or s.state == self.state)
            and (self.agentId is None or s.agentId == self.agentId)
            and (self.userId is None or s.userId == self.userId)
            and not (self.live and s.state == SessionState.CLOSED)
        )

    def matches_json(self, d: Mapping[str, Any]) -> bool:
        """``matches`` for a Session's JSON, checking only the keys it has (a
        daemon that left one out of a field mask applied the filter itself)."""
        state = d.get("state")
        return (
            (self.state is None or state is None or state == self.state)
            and (self.agentId is None or d.get("agentId", self.agentId) == self.agentId)
            and (self.userId is None or d.get("userId", self.userId) == self.userId)
            and not (self.live and state == SessionState.CLOSED)
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "state": str(self.state) if self.state else None,
            "agentId": self.agentId,
            "userId": self.userId,
        }
        if self.live:
            d["live"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionFilter:
        return cls(
            state=SessionState(d["state"]) if d.get("state") else None,
            agentId=d.get("agentId"),
            userId=d.get("userId"),
            live=bool(d.get("live")),
        )


@dataclass(slots=True)
class Recording:
    """A finished or running recording (seed: Recording)."""

    id: str
    sessionId: str
    startTime: int
    duration: int
    size: int
    format: str = "asciicast"
    path: str | None = None
    active: bool = False
    #: Why the recording stopped early (a full disk, a failing recorder), or ``None``.
    error: str | None = None

    @property
    def start_time(self) -> Any:
        return utc(self.startTime)

    @property
    def length(self) -> Any:
        """``duration`` as a ``timedelta``."""
        return span(self.duration)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sessionId": self.sessionId,
            "startTime": format_rfc3339(self.startTime),
            "duration": self.duration,
            "size": self.size,
            "format": self.format,
            "path": self.path,
            "active": self.active,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Recording:
        return cls(
            id=d["id"],
            sessionId=d["sessionId"],
            startTime=parse_rfc3339(d["startTime"]),
            duration=int(d.get("duration") or 0),
            size=int(d.get("size") or 0),
            format=d.get("format", "asciicast"),
            path=d.get("path"),
            active=bool(d.get("active")),
            error=d.get("error"),
        )


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)
