"""Every hook tachi calls, in one place.

Plugins implement these with ``@tachi.hookimpl``; tachi's built-ins (the Unix
socket transport, the asciicast recorder, the ACL policy, the window
multiplexer) register through the same hooks as third-party plugins. Hooks are
called with keyword arguments, on the daemon's event loop: they must not block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    import click

hookspec = pluggy.HookspecMarker("tachi")
hookimpl = pluggy.HookimplMarker("tachi")


@hookspec
def tachi_register_transports(register: Callable[[Any], None], config: Any) -> None:
    """Register transports with ``register(transport)``.

    A transport has a ``name`` and ``async start(daemon) -> None`` and
    ``async stop() -> None``. For each peer it authenticates, it calls
    ``await daemon.serve_connection(principal, wire, next_frame)`` (see
    ``tachi.daemon.connection``): ``wire`` sends frames back, ``next_frame``
    returns the next decoded frame or ``None`` at the end. ``config`` is the
    loaded ``tachi.config.Config``; a transport not enabled there should not
    register.
    """


@hookspec
def tachi_authorize(principal: Any, action: str, session: Any) -> bool | None:
    """Say whether ``principal`` may perform ``action`` on ``session``.

    Return ``True`` to allow, ``False`` to deny, ``None`` to abstain. Results
    are combined by the daemon: any ``False`` denies, otherwise one ``True``
    allows, otherwise the action is denied. ``session`` is ``None`` for
    actions on the daemon itself (``session.create``, ``session.list``,
    ``daemon.stop``). Must not block: it runs on the daemon's event loop.
    """


@hookspec(firstresult=True)
def tachi_multiplexer() -> Any:
    """Return the multiplexer class that owns a session's windows.

    The first non-``None`` answer wins; the built-in
    ``tachi.builtins.windows.WindowMultiplexer`` registers ``trylast`` so a
    plugin can replace it.
    """


@hookspec
def tachi_recorders(register: Callable[[Any], None]) -> None:
    """Register recorders with ``register(recorder)``.

    A recorder has ``format`` (e.g. ``"asciicast"``), ``extension``
    (``".cast"``) and ``open(path, *, width, height, timestamp_ns, env, title,
    record_input) -> RecordingSink``; the sink has ``output(data, t)``,
    ``input(data, t)``, ``resize(cols, rows, t)``, ``marker(label, t)`` and
    ``close()``. ``t`` is seconds since the recording started. The recorder
    named by config ``recording.format`` is used.
    """


@hookspec(firstresult=True)
def tachi_create_screen(cols: int, rows: int) -> Any:
    """Return a terminal emulator for a new window, or ``None`` to leave it to others.

    The object must satisfy ``tachi.core.screen.Screen``. The built-in uses
    avt (asciinema's emulator) and registers ``trylast``.
    """


@hookspec
def tachi_audit_event(event: dict[str, Any]) -> None:
    """Called after each audit record is written; ship it elsewhere if you like.

    ``event`` is the record as written (with its hash). Exceptions are logged
    and swallowed: a failing shipper never blocks the session.
    """


@hookspec
def tachi_session_event(session: Any, event: str, details: dict[str, Any]) -> None:
    """Called after the daemon has acted on a session: ``created``, ``state``
    (attached/detached changed it), ``resized``, ``window-switched``,
    ``window-exited`` and ``closed``."""


@hookspec
def tachi_register_commands(cli: click.Group) -> None:
    """Add commands to the ``tachi`` CLI (``cli.command()(fn)``)."""
