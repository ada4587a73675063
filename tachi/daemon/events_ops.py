"""``events.subscribe``: what happens to sessions, as it happens, on this connection.

After the reply, the connection gets ``{"event": "session.event", "type": …,
"session": …, "time": …, …details}`` control messages: ``created``,
``state``, ``closed``, ``window-*``, ``resized``, ``client-attached``,
``client-detached``, ``recording-started``/``-stopped``, ``command-started``
and ``command-finished`` (OSC 133, with ``exitCode``), and with ``output``,
``output`` (``window``, ``seq``, ``data`` as text). Only sessions the
principal may read are reported. A subscriber that stops reading is dropped
with an ``events.dropped`` notice once ``client_buffer`` bytes wait for it:
the daemon never slows down or buffers without bound for it.

The stream is re-authorised whenever access changes (a grant revoked,
expired, rotated out, a session handed away): once its principal may no longer
see the session (or, with ``output``, read it), it ends with an
``events.dropped`` notice whose ``reason`` is ``access``. A subscription with
``output`` is audited as ``events.subscribe``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tachi.daemon.ops import RequestContext, operation
from tachi.daemon.sharing import Watch
from tachi.errors import TachiError
from tachi.gotime import format_rfc3339, now_ns


def _action(args: dict[str, Any]) -> str:
    # Output is what the session shows: reading it takes session.read.
    return "session.read" if args.get("output") else "session.get"


@operation(
    "events.subscribe",
    action=_action,
    session="session",
    live=False,
    optional_session=True,
    filters="session.get",
)
async def subscribe(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    """Events of the named session (asked ``session.read`` with ``output``,
    else ``session.get``), or of every session the principal may see."""
    conn, manager = ctx.connection, ctx.sessions
    output = bool(args.get("output"))
    action = _action(args)
    only = ctx.target.id if ctx.target is not None else None
    if output and only is not None and only in manager.sessions:
        # A read of the session's contents for as long as it lasts: audited
        # before the first byte goes out.
        ctx.audit_by("events.subscribe", only, details={"output": True})
    limit = ctx.config.client_buffer
    taps: list[tuple[Any, Any]] = []
    state = {"open": True}

    def send(message: dict[str, Any]) -> None:
        if not state["open"]:
            return
        if conn.wire.buffered() > limit:
            conn.send({"event": "events.dropped", "message": "too slow: events were not read"})
            unsubscribe()
            return
        conn.send(message)

    def listener(session: Any, event: str, details: dict[str, Any]) -> None:
        if only is not None and session.id != only:
            return
        # The connection's principal now: an in-band token rotation moves it.
        if only is None and not ctx.shows(session, conn.principal):
            return
        send(
            {
                "event": "session.event",
                "type": event,
                "session": session.id,
                "time": format_rfc3339(now_ns()),
                **details,
            }
        )

    def unsubscribe() -> None:
        state["open"] = False
        stop_watching()
        if listener in manager.session_listeners:
            manager.session_listeners.remove(listener)
        for window, tap in taps:
            if tap in window.output_taps:
                window.output_taps.remove(tap)

    def access_ended(message: str) -> None:
        # Re-authorised when access changed (revoked, expired, rotated out,
        # handed away) and no longer allowed: nothing more goes out.
        if state["open"]:
            unsubscribe()
            conn.send({"event": "events.dropped", "reason": "access", "message": message})
            # As for every stream access ends (sharing.BoundStream): the change is
            # audited already, this records what it cut off; a log failing closed
            # must not keep the subscription going.
            with contextlib.suppress(TachiError):
                ctx.audit.audit_by(
                    conn.principal,
                    action,
                    only,
                    result="denied",
                    reason=message,
                    details={"stream": "events"},
                )

    stop_watching = ctx.sharing.watch(
        Watch(principal=lambda: conn.principal, session_id=only, action=action, end=access_ended)
    )
    manager.session_listeners.append(listener)
    if output and only is not None and only in manager.sessions:
        session = manager.sessions[only]
        for window in session.mux.windows():

            def tap(data: bytes, window: Any = window) -> None:
                send(
                    {
                        "event": "session.event",
                        "type": "output",
                        "session": only,
                        "window": window.id,
                        "seq": window.seq - len(data),
                        "data": data.decode(errors="replace"),
                    }
                )

            window.output_taps.append(tap)
            taps.append((window, tap))
    conn.closers.append(unsubscribe)
    return {"subscribed": True, "session": only}
