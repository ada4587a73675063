"""Daemon tokens: credentials that act as the daemon's own user from elsewhere
(``tachi --host URL`` with ``TACHI_TOKEN``), stored as hashes like share tokens,
expiring, address-pinned and revocable. Only the local owner may make them:
the daemon's user on the Unix socket, not an SSH or SPIFFE owner principal."""

from __future__ import annotations

from typing import Any

from tachi.daemon.ops import RequestContext, arg_str, operation
from tachi.daemon.share_ops import grant_limits
from tachi.errors import PermissionDenied
from tachi.grants import DAEMON_GRANT


def require_local_owner(ctx: RequestContext, action: str, *, daemon_token: bool = False) -> None:
    """Refuse (audited) anyone but the daemon's user proven by the kernel.

    SSH and SPIFFE owner principals act as the daemon's user for sessions, but
    a daemon token they minted would outlive the key or SVID that proved them,
    and ``exec`` is documented for the local owner and daemon tokens: these
    stay with a peer-credential login (``daemon_token``: a live daemon token
    passes too)."""
    p = ctx.principal
    if p.is_local_owner:
        return
    if daemon_token and p.kind == "token" and p.grant_session == DAEMON_GRANT:
        return  # still live: ``Daemon.allowed`` checks the grant on every action
    ctx.daemon.audit_by(p, action, result="denied", reason="local owner only")
    what = "manage daemon tokens" if action.startswith("token.") else f"use {action}"
    raise PermissionDenied(
        f"only the daemon's user on this host (the Unix socket) may {what};"
        f" {p.kind} principal {p.user} may not"
    )


@operation("token.create")
async def create(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    require_local_owner(ctx, "token.create")
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
    require_local_owner(ctx, "token.list")
    grants = ctx.daemon.grants.list(DAEMON_GRANT, include_inactive=bool(args.get("all")))
    return [g.to_json() for g in grants]


@operation("token.revoke")
async def revoke(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    require_local_owner(ctx, "token.revoke")
    grant = ctx.daemon.grants.revoke(DAEMON_GRANT, arg_str(args, "grant") or "")
    ctx.daemon.audit_by(ctx.principal, "token.revoke", details={"grant": grant.id})
    # What is attached or streaming under it, on any session, ends at once.
    changed = ctx.daemon.sharing.reauthorize(
        DAEMON_GRANT, f"access revoked ({grant.id})", by=ctx.principal
    )
    return {**grant.to_json(), **changed}
