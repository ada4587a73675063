"""Operations on the daemon itself: status, stop, plugins, and its listeners
(``daemon.listen``, ``daemon.unlisten``, ``daemon.listeners``, ``daemon.reload``:
the daemon's user on the Unix socket only, as a listener decides who may
reach the daemon from the network)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tachi.daemon.listeners import DEFAULT_TRANSPORT
from tachi.daemon.ops import RequestContext, arg_str, operation
from tachi.errors import TachiError
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


@operation("daemon.listen", owner="local")
async def listen(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """Start a listener (``transport``, default websocket) at ``address``; no session is touched."""
    address = arg_str(args, "address")
    assert address is not None
    transport = arg_str(args, "transport", required=False) or DEFAULT_TRANSPORT
    try:
        listener = await ctx.lifecycle.listeners.add(transport, address)
    except TachiError as exc:
        ctx.audit_by(
            "daemon.listen",
            result="error",
            reason=exc.message,
            details={"transport": transport, "address": address},
        )
        raise
    described = listener.to_json()
    ctx.audit_by(
        "daemon.listen",
        details={"transport": transport, "address": address, "url": described.get("url")},
    )
    return described


@operation("daemon.unlisten", owner="local")
async def unlisten(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """Stop the listener at ``address`` (as asked, or as bound); its connections end,
    the sessions they were attached to go on."""
    address = arg_str(args, "address")
    assert address is not None
    transport = arg_str(args, "transport", required=False)
    listener = await ctx.lifecycle.listeners.remove(transport, address)
    ctx.audit_by(
        "daemon.unlisten", details={"transport": listener.transport, "address": listener.address}
    )
    return {
        "transport": listener.transport,
        "address": listener.address,
        "url": listener.describe().get("url"),
    }


@operation("daemon.listeners", owner="local")
async def listeners(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    return ctx.lifecycle.listeners.describe()


@operation("daemon.reload", owner="local")
async def reload(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """Re-read config.toml and make the config's listeners match it (all or nothing)."""
    try:
        result = await ctx.lifecycle.listeners.reload(ctx.lifecycle.config_path)
    except TachiError as exc:
        ctx.audit_by("daemon.reload", result="error", reason=exc.message)
        raise
    ctx.audit_by(
        "daemon.reload",
        details={
            key: [f"{x['transport']} {x['address']}" for x in result[key]]
            for key in ("started", "restarted", "stopped")
        },
    )
    return result
