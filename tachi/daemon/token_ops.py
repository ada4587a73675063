"""Daemon tokens: credentials that act as the daemon's own user from elsewhere
(``tachi --host URL`` with ``TACHI_TOKEN``), stored as hashes like share tokens,
expiring, address-pinned and revocable. Only the local owner may make them:
the daemon's user on the Unix socket, not an SSH or SPIFFE owner principal."""

from __future__ import annotations

from typing import Any

from tachi.daemon.ops import RequestContext, arg_str, operation
from tachi.daemon.share_ops import grant_limits
from tachi.grants import DAEMON_GRANT


@operation("token.create", owner="local")
async def create(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    ttl_ns, allow_ips = grant_limits(args)
    grant, token = ctx.grants.create(
        DAEMON_GRANT,
        "owner",
        created_by=ctx.principal.user,
        ttl_ns=ttl_ns or None,
        allow_ips=allow_ips,
    )
    ctx.audit_by(
        "token.create",
        details={
            "grant": grant.id,
            "expiresAt": grant.to_json().get("expiresAt"),
            "allowIps": allow_ips,
        },
    )
    return {**grant.to_json(), "token": token}


@operation("token.list", owner="local")
async def list_tokens(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    grants = ctx.grants.list(DAEMON_GRANT, include_inactive=bool(args.get("all")))
    return [g.to_json() for g in grants]


@operation("token.revoke", owner="local")
async def revoke(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    grant = ctx.grants.revoke(DAEMON_GRANT, arg_str(args, "grant") or "")
    ctx.audit_by("token.revoke", details={"grant": grant.id})
    # What is attached or streaming under it, on any session, ends at once.
    changed = ctx.sharing.reauthorize(
        DAEMON_GRANT, f"access revoked ({grant.id})", by=ctx.principal
    )
    return {**grant.to_json(), **changed}
