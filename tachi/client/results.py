"""Typed results of the Python API for what has no seed type: grants, shares,
runs, execs. Times are ``datetime`` (UTC) and durations ``timedelta`` here;
the wire and the CLI keep Go-style RFC 3339 strings and nanoseconds."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from tachi.gotime import parse_rfc3339


def timestamp(text: str | None) -> dt.datetime | None:
    """An RFC 3339 string from the wire as an aware UTC ``datetime`` (µs precision)."""
    if not text:
        return None
    return dt.datetime.fromtimestamp(parse_rfc3339(text) / 1e9, tz=dt.UTC)


@dataclass(frozen=True, slots=True)
class Grant:
    """A share grant (``tachi share ls``), or a daemon token (``session == "*"``)."""

    id: str
    session: str
    role: str
    user: str | None
    created_at: dt.datetime | None
    expires_at: dt.datetime | None
    allow_ips: list[str] = field(default_factory=list)
    revoked: bool = False
    replaced_by: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Grant:
        return cls(
            id=d["id"],
            session=d.get("sessionId") or d.get("session") or "",
            role=d["role"],
            user=d.get("user"),
            created_at=timestamp(d.get("createdAt")),
            expires_at=timestamp(d.get("expiresAt")),
            allow_ips=list(d.get("allowIps") or []),
            revoked=bool(d.get("revoked")),
            replaced_by=d.get("replacedBy"),
        )


@dataclass(frozen=True, slots=True)
class Share:
    """A new grant with its token (shown once) and the ways in it gives."""

    grant: Grant
    token: str
    attach: str
    links: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Share:
        return cls(Grant.from_json(d), d["token"], d.get("attach", ""), list(d.get("links", [])))


@dataclass(frozen=True, slots=True)
class RunResult:
    """What ``Client.run`` returns: the command's output alone and its exit code."""

    exit_code: int
    output: str
    command: str
    window: int
    started_at: dt.datetime | None
    duration: dt.timedelta
    #: Bytes of output left out (``max_output``); their place in ``output`` is
    #: marked with a ``[tachi: N bytes of output omitted]`` line.
    omitted: int = 0
    #: The run's id, as its marks in the window's output carry it.
    run: str | None = None
    #: ``finished``; ``exited`` (the shell ended with it); ``running`` (a
    #: detached run, or one whose output was read before it ended).
    state: str = "finished"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        code = d.get("exitCode")
        return cls(
            exit_code=int(code) if code is not None else -1,
            output=d.get("output") or "",
            command=d["command"],
            window=int(d["window"]),
            started_at=timestamp(d.get("startedAt")),
            duration=dt.timedelta(microseconds=int(d.get("duration", 0)) / 1000),
            omitted=int(d.get("omitted") or 0),
            run=d.get("run"),
            state=str(d.get("state") or "finished"),
        )


@dataclass(frozen=True, slots=True)
class ExpectResult:
    """What ``expect`` returns: which pattern matched (``index``, ``None`` for
    ``eof``/``timeout``), the matched text, the text before it, and the
    output position to go on from (``since=``)."""

    outcome: str
    index: int | None
    match: str | None
    before: str
    position: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExpectResult:
        index = d.get("index")
        return cls(
            outcome=str(d["outcome"]),
            index=int(index) if index is not None else None,
            match=d.get("matched"),
            before=str(d.get("before") or ""),
            position=d.get("position"),
        )


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What ``Client.exec`` returns."""

    exit_code: int
    stdout: bytes
    stderr: bytes
