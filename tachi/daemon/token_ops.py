"""Daemon tokens: credentials that act as the daemon's own user from elsewhere
(``tachi --host URL`` with ``TACHI_TOKEN``), stored as hashes like share tokens,
expiring, address-pinned and revocable. Only the local owner may make them."""

from __future__ import annotations

import os
from typing import Any

from tachi.daemon.ops import RequestContext, arg_str, operation
from tachi.daemon.share_ops import grant_limits
from tachi.errors import PermissionDenied
from tachi.grants import DAEMON_GRANT


def _require_local_owner(ctx: RequestContext, action: str) -> None:
    p = ctx.principal
    if p.grant_id is not None or p.uid != os.getuid():
        ctx.daemon.audit_by(p, action, result="denied", reason="local owner only")
        raise PermissionDenied(
            f"only {p.user if p.uid == os.getuid() else 'the daemon owner'}"
            " on this host may manage daemon tokens"
        )


@operation("token.create")
async def create(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    _require_local_owner(ctx, "token.create")
    ttl_ns, allow_ips = grant_limits(args)
    grant, token = ctx.daemon.grants.create(
        DAEMON_GRANT,
        "owner",
        created_by=ctx.principal.user,
        ttl_ns=ttl_ns or None,
        allow_ips=allow_ips,
    )
    ctx.daemon.audit_by(
        ctx.principal,
        "token.create",
        details={
            "grant": grant.id,
            "expiresAt": grant.to_json().get("expiresAt"),
            "allowIps": allow_ips,
        },
    )
    return {**grant.to_json(), "token": token}


@operation("token.list")
async def list_tokens(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    _require_local_owner(ctx, "token.list")
    grants = ctx.daemon.grants.list(DAEMON_GRANT, include_inactive=bool(args.get("all")))
    return [g.to_json() for g in grants]


@operation("token.revoke")
async def revoke(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    _require_local_owner(ctx, "token.revoke")
    grant = ctx.daemon.grants.revoke(DAEMON_GRANT, arg_str(args, "grant") or "")
    ctx.daemon.audit_by(ctx.principal, "token.revoke", details={"grant": grant.id})
    return grant.to_json()
