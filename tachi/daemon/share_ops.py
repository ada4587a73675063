"""Sharing operations: grants and tokens, revocation, rotation, handoff."""

from __future__ import annotations

import os
import pwd
from typing import Any

from tachi.core.access import ROLES
from tachi.core.principal import user_name
from tachi.daemon.ops import RequestContext, arg_str, operation
from tachi.errors import InvalidRequest, NotFound
from tachi.gotime import parse_duration


def grant_limits(args: dict[str, Any]) -> tuple[int | None, list[str]]:
    """A grant's ``ttl`` (duration string or ns) and ``allowIps`` from a request.
    Raises ``InvalidRequest`` for a bad duration or a non-list of strings."""
    ttl = args.get("ttl")
    try:
        ttl_ns = parse_duration(ttl) if isinstance(ttl, str) else ttl
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    allow_ips = args.get("allowIps") or []
    if not isinstance(allow_ips, list) or not all(isinstance(c, str) for c in allow_ips):
        raise InvalidRequest("allowIps must be a list of CIDR strings")
    return ttl_ns, allow_ips


def _local_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise NotFound(f"no local user {name!r}") from None


@operation("share.create", action="share.create", session="session")
async def share(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.target
    role = arg_str(args, "role") or ""
    if role not in ROLES[1:]:
        raise InvalidRequest("role must be 'observer' or 'collaborator'")
    user = arg_str(args, "user", required=False)
    spiffe_id = arg_str(args, "spiffeId", required=False)
    if spiffe_id is not None and (user is not None or not spiffe_id.startswith("spiffe://")):
        raise InvalidRequest("spiffeId is a spiffe:// ID, and excludes user")
    ttl_ns, allow_ips = grant_limits(args)
    uid = _local_user(user).pw_uid if user else None
    # Before the grant exists, so a failure leaves nothing half-made.
    shared_socket = await ctx.effects.grant_socket_access(uid) if uid is not None else None
    grant, token = ctx.grants.create(
        session.id,
        role,
        created_by=ctx.principal.user,
        # A grant bound to a SPIFFE ID works only for a peer that proved it.
        user=user or spiffe_id,
        ttl_ns=ttl_ns or None,
        allow_ips=allow_ips,
    )
    ctx.audit_by(
        "share.create",
        session.id,
        details={
            "grant": grant.id,
            "role": role,
            "user": user,
            "expiresAt": grant.to_json().get("expiresAt"),
            "allowIps": allow_ips,
        },
    )
    ctx.recordings.marker(session.id, f"share: {role} {user or 'token'} ({grant.id})")
    result = grant.to_json()
    result["token"] = token
    result["runsAs"] = user_name(os.getuid())
    if user:
        # Bound to a local user: they come in as themselves and need no token.
        socket_opt = f" --socket {shared_socket}" if shared_socket else ""
        result["socket"] = str(shared_socket) if shared_socket else None
        result["attach"] = f"tachi{socket_opt} attach {session.id}"
    else:
        result["attach"] = f"tachi attach {session.id} --token {token}"
    # Transports that can show a session elsewhere (a browser page) say where.
    result["links"] = [
        link
        for transport in ctx.lifecycle.transports
        if hasattr(transport, "share_link")
        and (link := transport.share_link(session.id, None if user else token))
    ]
    return result


@operation("share.list", action="share.list", session="session", live=False)
async def share_list(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    session = ctx.target
    grants = ctx.grants.list(session.id, include_inactive=bool(args.get("all")))
    return [g.to_json() for g in grants]


@operation("share.revoke", action="share.revoke", session="session", live=False)
async def revoke(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.target
    grant = ctx.grants.revoke(session.id, arg_str(args, "grant") or "")
    ctx.audit_by("share.revoke", session.id, details={"grant": grant.id})
    ctx.recordings.marker(session.id, f"revoke: {grant.id}")
    # Everything live follows at once: clients left with no role are ended,
    # clients left with a weaker one (another grant) demoted, streams re-checked.
    changed = ctx.sharing.reauthorize(session.id, f"access revoked ({grant.id})", by=ctx.principal)
    return {**grant.to_json(), **changed}


@operation("token.rotate", action="token.rotate", session="session")
async def rotate(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    session = ctx.target
    grace = args.get("grace")
    try:
        grace_ns = parse_duration(grace) if grace is not None else ctx.config.token_grace
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    rotated = ctx.effects.rotate_tokens(
        session, arg_str(args, "grant", required=False), grace_ns, ctx.principal
    )
    return rotated


@operation("session.handoff", action="session.handoff", session="session")
async def handoff(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    session = ctx.target
    target = _local_user(arg_str(args, "to") or "")
    keep = arg_str(args, "keep", required=False) or "observer"
    if keep not in ("observer", "collaborator", "none"):
        raise InvalidRequest("keep must be observer, collaborator or none")
    shared_socket = await ctx.effects.grant_socket_access(target.pw_uid)
    ctx.effects.handoff(session, target.pw_name, target.pw_uid, keep, ctx.principal)
    result = session.to_model().to_json()
    result["socket"] = str(shared_socket) if shared_socket else None
    result["runsAs"] = user_name(os.getuid())
    return result
