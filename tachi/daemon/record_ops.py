"""Recording operations (seed: SessionRecorder): start, stop, list, get, read, remove."""

from __future__ import annotations

import base64
import weakref
from typing import Any

from tachi.daemon.ops import RequestContext, arg_int, arg_str, operation
from tachi.daemon.session_ops import resolve
from tachi.errors import InvalidRequest

READ_CHUNK = 512 * 1024
#: The recordings each connection has read (and had audited): forgotten with it.
_accessed: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


@operation("record.start")
async def start(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = resolve(ctx, arg_str(args, "session") or "", "record.start")
    rec = ctx.daemon.recordings.start(session, ctx.principal.user).to_json()
    ctx.daemon.manager.emit(session, "recording-started", {"recording": rec["id"]})
    return rec


@operation("record.stop")
async def stop(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = resolve(ctx, arg_str(args, "session") or "", "record.stop")
    rec = ctx.daemon.recordings.stop(session.id, ctx.principal.user).to_json()
    ctx.daemon.manager.emit(session, "recording-stopped", {"recording": rec["id"]})
    return rec


def _visible(ctx: RequestContext, session_id: str) -> bool:
    try:
        target = ctx.daemon.manager.find(session_id)
    except Exception:
        # The session's record is gone: only the daemon's owner sees its recordings.
        return ctx.daemon.allowed(ctx.principal, "record.list", None)
    return ctx.daemon.allowed(ctx.principal, "record.read", target)


@operation("record.list")
async def list_recordings(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    session_id = arg_str(args, "session", required=False)
    if session_id:
        session_id = resolve(ctx, session_id, "session.get", live=False).id
    recs = ctx.daemon.recordings.list(session_id)
    return [r.to_json() for r in recs if _visible(ctx, r.sessionId)]


def _recording(ctx: RequestContext, args: dict[str, Any], action: str) -> Any:
    rec = ctx.daemon.recordings.get(arg_str(args, "recording") or "")
    if not _visible(ctx, rec.sessionId):
        ctx.daemon.authorize(ctx.principal, action, None)
    return rec


@operation("record.get")
async def get(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    return _recording(ctx, args, "record.read").to_json()


@operation("record.read")
async def read(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """A chunk of the recording file (base64), so clients need no file access."""
    rec = _recording(ctx, args, "record.read")
    offset = arg_int(args, "offset") or 0
    if offset < 0:
        raise InvalidRequest("offset must not be negative")
    if offset == 0 and rec.active:
        # The recorder process writes the file: a read just after `record start`
        # could find none yet, or miss what was recorded a moment ago.
        await ctx.daemon.recordings.synced(rec.id)
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
        ctx.daemon.audit_by(
            ctx.principal,
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


@operation("record.rm")
async def remove(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    rec = ctx.daemon.recordings.get(arg_str(args, "recording") or "")
    try:
        target = ctx.daemon.manager.find(rec.sessionId)
    except Exception:
        target = None
    ctx.daemon.authorize(ctx.principal, "record.rm", target)
    removed = ctx.daemon.recordings.remove(rec.id)
    ctx.daemon.audit_by(ctx.principal, "record.rm", rec.sessionId, details={"recording": rec.id})
    return removed.to_json()
