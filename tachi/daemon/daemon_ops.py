"""Operations on the daemon itself: status, stop, plugins."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tachi.daemon.ops import RequestContext, operation
from tachi.plugins import describe_plugins


@operation("daemon.status", action="daemon.status")
async def status(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    return ctx.lifecycle.status()


@operation("daemon.stop", action="daemon.stop")
async def stop(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    # keepSessions (tachi daemon restart): the sessions stay with the session keeper.
    keep = bool(args.get("keepSessions")) and ctx.lifecycle.survival.link is not None
    ctx.lifecycle.keep_sessions = keep
    # After the reply is written.
    asyncio.get_running_loop().call_soon(ctx.lifecycle.request_stop)
    return {
        "stopping": True,
        "sessions": len(ctx.sessions.sessions),
        "pid": os.getpid(),
        "keptSessions": keep,
    }


@operation("plugins.list", action="daemon.status")
async def plugins(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    return describe_plugins(ctx.lifecycle.pm)
