"""Who is attached to a session, and the bookkeeping ops tmux users expect:
listing and detaching single clients, renaming a session, pruning history."""

from __future__ import annotations

from typing import Any

from tachi.daemon.ops import RequestContext, arg_int, arg_str, operation
from tachi.errors import InvalidRequest, NotFound
from tachi.gotime import format_rfc3339, now_ns, parse_duration


@operation("session.clients", action="session.get", session="session")
async def clients(ctx: RequestContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The clients attached to a live session, oldest first."""
    session = ctx.session
    return [
        {
            "id": c.id,
            "principal": c.principal.user,
            "identity": ":".join(c.principal.identity),
            "source": c.principal.source,
            "role": c.role,
            "readOnly": c.read_only,
            "size": {"cols": c.size.cols, "rows": c.size.rows} if c.size else None,
            "since": format_rfc3339(c.attached_at),
            "self": c.connection is ctx.connection,
            "direct": _direct(c),
        }
        for c in sorted(session.clients.values(), key=lambda c: c.attached_at)
    ]


def _direct(client: Any) -> dict[str, Any]:
    """Which directions of the client's terminal the daemon reads or writes itself
    (``client.terminal``), and how often a flood sent the output back to the client."""
    terminal = getattr(client.connection, "terminal", None)
    reading = terminal is not None and terminal.reading
    return {
        "input": bool(reading),
        "output": client.terminal is not None,
        "floods": client.floods,
    }


@operation("session.rename", action="session.rename", session="session")
async def rename(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """Give a live session a new unique name (``""`` removes the name)."""
    session = ctx.session
    name = arg_str(args, "name")
    if name is None:
        raise InvalidRequest("missing 'name'")
    old = session.info.name
    ctx.sessions.rename(session, name or None)
    ctx.audit_by("session.rename", session.id, details={"from": old, "to": name or None})
    return session.to_model().to_json()


@operation("session.prune", action="session.prune")
async def prune(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """Forget closed sessions that closed at least ``olderThan`` ago (a Go duration
    string or nanoseconds; default 0: every closed session)."""
    raw = args.get("olderThan", 0)
    try:
        age = parse_duration(raw) if isinstance(raw, str) else arg_int(args, "olderThan") or 0
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if age < 0:
        raise InvalidRequest("olderThan must not be negative")
    removed = ctx.sessions.store.prune(now_ns() - age)
    ctx.audit_by("session.prune", None, details={"removed": removed, "olderThan": age})
    return {"removed": removed}


def detach_clients(ctx: RequestContext, session: Any, clients: list[Any]) -> None:
    """Detach ``clients`` from ``session``, telling each who did it.

    Each is audited as the doing of the principal that asked (``session.detach``
    naming the client and its principal in ``details``), before it goes: with
    the log failing closed, nobody is detached without a record."""
    for client in clients:
        ctx.sharing.detached_by(ctx.principal, session, client, "detached")
        client.end("detached", f"detached from session {session.id} by {ctx.principal.user}")
        session.detach(client)


def client_by_id(session: Any, client_id: int) -> Any:
    """The attached client with ``client_id``. Raises ``NotFound`` naming both."""
    client = session.clients.get(client_id)
    if client is None:
        raise NotFound(f"no client {client_id} attached to {session.id} (see 'tachi clients')")
    return client
