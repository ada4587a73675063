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

from typing import Any

from tachi.daemon.ops import RequestContext, arg_str, operation
from tachi.daemon.session_ops import resolve
from tachi.daemon.sharing import Watch
from tachi.gotime import format_rfc3339, now_ns


@operation("events.subscribe")
async def subscribe(ctx: RequestContext, args: dict[str, Any]) -> dict[str, Any]:
    daemon, conn = ctx.daemon, ctx.connection
    output = bool(args.get("output"))
    # Output is what the session shows: reading it takes session.read.
    action = "session.read" if output else "session.get"
    only = None
    ref = arg_str(args, "session", required=False)
    if ref:
        only = resolve(ctx, ref, action, live=False).id
    if output and only is not None and only in daemon.manager.sessions:
        # A read of the session's contents for as long as it lasts: audited
        # before the first byte goes out.
        daemon.audit_by(ctx.principal, "events.subscribe", only, details={"output": True})
    limit = daemon.config.client_buffer
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
        if only is None and not daemon.allowed(conn.principal, "session.get", session):
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
        if listener in daemon.manager.session_listeners:
            daemon.manager.session_listeners.remove(listener)
        for window, tap in taps:
            if tap in window.output_taps:
                window.output_taps.remove(tap)

    def access_ended(message: str) -> None:
        # Re-authorised when access changed (revoked, expired, rotated out,
        # handed away) and no longer allowed: nothing more goes out.
        if state["open"]:
            unsubscribe()
            conn.send({"event": "events.dropped", "reason": "access", "message": message})

    stop_watching = daemon.sharing.watch(
        Watch(principal=lambda: conn.principal, session_id=only, action=action, end=access_ended)
    )
    daemon.manager.session_listeners.append(listener)
    if output and only is not None and only in daemon.manager.sessions:
        session = daemon.manager.sessions[only]
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
