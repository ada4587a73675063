"""``client.terminal``: an attached client on this host hands its own terminal
to the daemon, one direction at a time, and takes it back.

With ``output: true`` the daemon writes the session's output (and screens) to
the terminal itself and stops framing it; with ``input: true`` (and the prefix
key) it reads the keystrokes itself, up to the prefix key. ``output: false``
asks for the output back; the answer is the ``terminal`` event, sent once the
daemon's last write has reached the terminal. Before any of that the client
hands over the terminal itself: ``descriptor: "offer"``, then, once answered,
``descriptor: "sent"`` with the descriptor attached (``SCM_RIGHTS``). See
:mod:`tachi.daemon.direct_terminal` for why, and what the daemon accepts.
Every refusal to use a terminal is audited (``client.terminal``, denied).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tachi.daemon.ops import RequestContext, operation
from tachi.errors import InvalidRequest, TachiError


@operation(
    "client.terminal",
    needs="its own terminal (on the Unix socket), and its own attachment to hand it to",
    ordered=True,
)
async def client_terminal(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    connection = ctx.connection
    descriptor = args.get("descriptor")
    if descriptor is not None:
        return _descriptor(ctx, descriptor)
    output, keys = args.get("output"), args.get("input")
    result: dict[str, Any] = {}
    if keys is False:
        connection.stop_terminal_input()
        result["input"] = False
    if output is False:
        # Answered by the terminal event in every case, once nothing the daemon
        # wrote is still on its way to the terminal.
        previous = connection.attached or connection.terminal_client
        if previous is not None:
            previous.hand_back_now()
        else:
            handover = args.get("handover", 0)
            connection.send({"event": "terminal", "output": False, "handover": handover})
        result["output"] = False
    if keys is not True and output is not True:
        return result
    _session, client = connection.require_attached()
    if keys is True:
        prefix = args.get("prefix", "")
        if not isinstance(prefix, str) or len(prefix) > 1:
            raise InvalidRequest("prefix must be one character (or empty for none)")
        if client.read_only:
            raise InvalidRequest("a read-only client's keystrokes are not read")
        _audited(ctx, connection.read_terminal, prefix.encode("latin-1"))
        result["input"] = True
    if output is True:
        handover = args.get("handover")
        if isinstance(handover, bool) or not isinstance(handover, int):
            raise InvalidRequest("handover must be the client's count of hand-overs")
        client.handovers = handover
        try:
            terminal = _audited(ctx, connection.open_terminal)
        except TachiError:
            # The client stopped drawing when it asked: give it its output back.
            client.hand_back_now()
            raise
        await client.handed_back()
        if connection.attached is not client or terminal.broken:
            client.hand_back_now()  # detached (or hung up) meanwhile
            return result
        connection.terminal_client = client
        client.take_terminal(terminal)
        result["output"] = True
    return result


def _descriptor(ctx: RequestContext, step: object) -> dict[str, Any]:
    connection = ctx.connection
    if step == "offer":
        _audited(ctx, connection.expect_terminal)
        return {"descriptor": "ready"}
    if step == "sent":
        _audited(ctx, connection.adopt_terminal)
        return {"descriptor": "accepted"}
    raise InvalidRequest('descriptor must be "offer" or "sent"')


T = TypeVar("T")


def _audited(ctx: RequestContext, use: Callable[..., T], *args: Any) -> T:
    """``use(*args)``; a refusal to use a terminal is audited before it is raised."""
    try:
        return use(*args)
    except TachiError as exc:
        session = ctx.connection.session
        ctx.audit_by(
            "client.terminal",
            session.id if session is not None else None,
            result="denied",
            reason=str(exc),
        )
        raise
