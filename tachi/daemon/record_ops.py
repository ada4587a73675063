"""Recording operations (seed: SessionRecorder): start, stop, list, get, read, remove."""

from __future__ import annotations

import base64
import weakref
from typing import Any

from tachi.daemon.ops import AnyOf, Need, RequestContext, arg_int, arg_str, operation
from tachi.errors import InvalidRequest

READ_CHUNK = 512 * 1024
#: The recordings each connection has read (and had audited): forgotten with it.
_accessed: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


@operation("record.start", action="record.start", session="session")
async def start(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    rec = ctx.recordings.start(session, ctx.principal.user).to_json()
    ctx.sessions.emit(session, "recording-started", {"recording": rec["id"]})
    return rec


@operation("record.stop", action="record.stop", session="session")
async def stop(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.session
    rec = ctx.recordings.stop(session.id, ctx.principal.user).to_json()
    ctx.sessions.emit(session, "recording-stopped", {"recording": rec["id"]})
    return rec


def _session_of(ctx: RequestContext, session_id: str) -> Any:
    """The session (live, or its record) a recording was made of; ``None`` once
    its record is gone."""
    try:
        return ctx.sessions.find(session_id)
    except Exception:
        return None


def _visible(ctx: RequestContext, rec: Any) -> Need:
    """What seeing a recording takes: ``record.read`` on its session, or once
    the session's record is gone, ``record.list`` (the daemon's owner)."""
    target = _session_of(ctx, rec.sessionId)
    return Need("record.list") if target is None else Need("record.read", target)


@operation(
    "record.list",
    action="session.get",
    session="session",
    live=False,
    optional_session=True,
    filters=_visible,
)
async def list_recordings(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    session_id = ctx.target.id if ctx.target is not None else None
    recs = ctx.recordings.list(session_id)
    return [r.to_json() for r in recs if ctx.shows(r)]


def _recording(ctx: RequestContext, args: dict[str, Any]) -> Any:
    return ctx.recordings.get(arg_str(args, "recording") or "")


def _read_needs(ctx: RequestContext, args: dict[str, Any]) -> list[AnyOf]:
    # Visible (see _visible), or record.read on the daemon (its owner).
    return [AnyOf((_visible(ctx, ctx.target), Need("record.read")))]


@operation("record.get", target=_recording, also=_read_needs)
async def get(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    return ctx.target.to_json()


@operation("record.read", target=_recording, also=_read_needs)
async def read(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """A chunk of the recording file (base64), so clients need no file access."""
    rec = ctx.target
    offset = arg_int(args, "offset") or 0
    if offset < 0:
        raise InvalidRequest("offset must not be negative")
    if offset == 0 and rec.active:
        # The recorder process writes the file: a read just after `record start`
        # could find none yet, or miss what was recorded a moment ago.
        await ctx.recordings.synced(rec.id)
    try:
        with open(rec.path or "", "rb") as f:
            f.seek(offset)
            data = f.read(READ_CHUNK)
    except OSError as exc:
        raise InvalidRequest(f"cannot read recording {rec.id}: {exc.strerror or exc}") from None
    # Once per recording per connection, from wherever the reader starts: a
    # reader that skips offset 0 is audited too, one that reads it in chunks
    # adds one record, not one per chunk.
    audited = _accessed.setdefault(ctx.connection, set())
    if rec.id not in audited:
        ctx.audit_by(
            "record.access",
            rec.sessionId,
            details={"recording": rec.id, "offset": offset},
        )
        audited.add(rec.id)
    return {
        "data": base64.b64encode(data).decode(),
        "offset": offset,
        "eof": len(data) < READ_CHUNK,
    }


def _rm_needs(ctx: RequestContext, args: dict[str, Any]) -> list[Need]:
    return [Need("record.rm", _session_of(ctx, ctx.target.sessionId))]


@operation("record.rm", target=_recording, also=_rm_needs)
async def remove(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    rec = ctx.target
    removed = ctx.recordings.remove(rec.id)
    ctx.audit_by("record.rm", rec.sessionId, details={"recording": rec.id})
    return removed.to_json()
