"""Operations on the daemon itself: status, stop, plugins."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tachi.daemon.ops import RequestContext, operation
from tachi.plugins import describe_plugins


@operation("daemon.status")
async def status(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    ctx.daemon.authorize(ctx.principal, "daemon.status", None)
    return ctx.daemon.status()


@operation("daemon.stop")
async def stop(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    ctx.daemon.authorize(ctx.principal, "daemon.stop", None)
    # keepSessions (tachi daemon restart): the sessions stay with the session keeper.
    keep = bool(args.get("keepSessions")) and ctx.daemon.survival.link is not None
    ctx.daemon.keep_sessions = keep
    # After the reply is written.
    asyncio.get_running_loop().call_soon(ctx.daemon.request_stop)
    return {
        "stopping": True,
        "sessions": len(ctx.daemon.manager.sessions),
        "pid": os.getpid(),
        "keptSessions": keep,
    }


@operation("plugins.list")
async def plugins(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    ctx.daemon.authorize(ctx.principal, "daemon.status", None)
    return describe_plugins(ctx.daemon.pm)
