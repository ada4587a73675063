"""The dispatcher: a request in, its operation's declared needs checked, the
operation run.

Where access is decided is here, and only here: an operation declares what it
needs (:mod:`tachi.daemon.ops`), the dispatcher finds the target, asks
``tachi_authorize`` about each declared action (a denial is audited, naming
the plugin that denied) and runs the body only if everything was allowed. A
declaration that names an action nobody registered stops the daemon at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tachi.daemon.ops import AnyOf, Need, Operation, RequestContext, SessionRef, arg_str
from tachi.errors import InvalidRequest, NotFound, PermissionDenied
from tachi.grants import DAEMON_GRANT
from tachi.models import Session

if TYPE_CHECKING:
    from tachi.core.actions import ActionRegistry
    from tachi.core.principal import Principal
    from tachi.core.session import SessionRuntime
    from tachi.daemon.ops import ConnectionLike
    from tachi.daemon.services import Services


class Dispatcher:
    """Runs requests by the operation table, after checking what each declares."""

    def __init__(self, table: Mapping[str, Operation], actions: ActionRegistry) -> None:
        problems = table_problems(table, actions)
        if problems:
            raise RuntimeError("operation table: " + "; ".join(problems))
        self.table = dict(table)
        #: Operations that keystrokes sent after them must not overtake.
        self.ordered = frozenset(name for name, op in table.items() if op.ordered)

    async def dispatch(
        self,
        services: Services,
        connection: ConnectionLike,
        principal: Principal,
        name: Any,
        args: Any,
    ) -> Any:
        """Run operation ``name`` with ``args`` for ``principal``: its result, or
        ``TachiError`` (``PermissionDenied`` audited) if it may not run."""
        op = self.table.get(name) if isinstance(name, str) else None
        if op is None:
            raise InvalidRequest(f"unknown operation {name!r}")
        if not isinstance(args, dict):
            raise InvalidRequest("args must be an object")
        ctx = RequestContext(services, connection, principal, op)
        authorise(ctx, args)
        return await op.handler(ctx, args)


def table_problems(table: Mapping[str, Operation], actions: ActionRegistry) -> list[str]:
    """What is wrong with a table: operations that declare nothing they need,
    or name an action that is not registered."""
    problems = []
    for name, op in table.items():
        if name != op.name:
            problems.append(f"{name!r} is filed under another name ({op.name!r})")
        if not op.declares_access:
            problems.append(f"{name} declares no action, owner or need")
        if op.session is not None and op.action is None:
            problems.append(f"{name} names its session by {op.session!r} but asks no action on it")
        problems += [
            f"{name} needs action {a!r}, which is not registered"
            for a in sorted(op.declared_actions())
            if a not in actions
        ]
    return problems


def authorise(ctx: RequestContext, args: dict[str, Any]) -> None:
    """Check everything ``ctx.op`` declares, in order (see :mod:`tachi.daemon.ops`);
    sets ``ctx.target`` and ``ctx.granted``. Raises (audited) at the first refusal."""
    op = ctx.op
    assert op is not None
    policy, principal = ctx.services.policy, ctx.principal
    if op.attached:
        ctx.target, _client = ctx.connection.require_attached()
    if op.exec_job:
        job = ctx.connection.exec_job
        if job is None or not job.running:
            raise NotFound("no command is running on this connection (start one with exec.start)")
    action = op.action(args) if callable(op.action) else op.action
    if op.session is not None:
        # A missing one is ``invalid`` (unless optional), as before any lookup.
        ref = arg_str(args, op.session, required=not op.optional_session)
        if ref or not op.optional_session:
            assert action is not None, f"{op.name}: a session target needs an action"
            ctx.target = resolve(ctx, ref or "", action, live=op.live)
    elif op.target is not None:
        found = op.target(ctx, args)
        if isinstance(found, SessionRef):  # resolved as ``session=`` is
            assert action is not None, f"{op.name}: a session target needs an action"
            try:
                ctx.target = resolve(ctx, found.ref, action, live=op.live)
            except NotFound:
                if found.missing is None:
                    raise
                raise found.missing from None
        else:
            ctx.target = found
            if action is not None:
                policy.authorize(principal, action, found)
    elif action is not None:
        # On the daemon itself, or on the attached session.
        policy.authorize(principal, action, ctx.target)
    # Before ``also``: what else a request needs may depend on these answers
    # (an attach that is read-only without session.write selects no window).
    for name in op.may:
        ctx.granted[name] = policy.allowed(principal, name, ctx.target)
    if op.also is not None:
        for need in op.also(ctx, args):
            _require(ctx, need)
    if op.owner is not None:
        require_local_owner(ctx, op.name, daemon_token=op.owner == "local-or-daemon-token")


def _require(ctx: RequestContext, need: Need | AnyOf) -> None:
    policy = ctx.services.policy
    needs = need.needs if isinstance(need, AnyOf) else (need,)
    if any(policy.allowed(ctx.principal, n.action, n.target) for n in needs[:-1]):
        return
    policy.authorize(ctx.principal, needs[-1].action, needs[-1].target)


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
    ctx.audit_by(action, result="denied", reason="local owner only")
    what = "manage daemon tokens" if action.startswith("token.") else f"use {action}"
    raise PermissionDenied(
        f"only the daemon's user on this host (the Unix socket) may {what};"
        f" {p.kind} principal {p.user} may not"
    )


def _is_daemon_user(principal: Principal) -> bool:
    return principal.uid == os.getuid() and (
        principal.grant_id is None or principal.grant_session == "*"
    )


def resolve(
    ctx: RequestContext, ref: str, action: str, *, live: bool = True
) -> SessionRuntime | Session:
    """The session ``ref`` (an id or a name) names, if ``action`` is allowed on it;
    with ``live``, it must be running.

    A principal that may not even see the session (``session.get``) gets exactly
    the answer a missing session gets, ``NotFound`` with the same text, so a
    token or a shared user cannot learn which other sessions exist or their ids;
    the denial is audited all the same. The daemon's own user, and anyone who
    may see the session, get the precise answer: ``PermissionDenied`` naming the
    action, or ``NotFound`` saying that it is closed.
    """
    policy, principal = ctx.services.policy, ctx.principal
    found = ctx.services.sessions.find(ref)
    if not policy.allowed(principal, action, found):
        hidden = action == "session.get" or not policy.allowed(principal, "session.get", found)
        if hidden and not _is_daemon_user(principal):
            ctx.audit_by(action, found.id, result="denied", reason="policy")
            raise NotFound(f"no session {ref!r} (see 'tachi ls')")
        policy.authorize(principal, action, found)  # raises, audited
    if live and isinstance(found, Session):
        reason = f" ({found.closeReason})" if found.closeReason else ""
        raise NotFound(f"session {found.id} is closed{reason}")
    return found
