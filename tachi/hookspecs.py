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

    A transport has a ``name``, ``async start(daemon) -> None`` and
    ``async stop() -> None``, and optionally ``describe() -> dict`` (its ``url``,
    TLS ``fingerprint`` and so on, shown by ``tachi daemon status``). For each
    new peer it builds a ``tachi.core.peer.Peer`` from what it saw, may refuse
    it early with ``daemon.check_address(peer)``, and then calls
    ``await daemon.serve_connection(wire, next_frame, peer=peer)`` (see
    ``tachi.daemon.connection``): ``wire`` sends frames back (one encoded
    frame per ``write``), ``next_frame`` returns the next decoded frame or
    ``None`` at the end. The peer is
    authenticated at the protocol's hello (which may carry a token). A transport
    that authenticates during its own handshake (SSH) calls
    ``daemon.authenticate(peer)`` itself and passes ``principal=`` instead.
    ``config`` is the loaded ``tachi.config.Config``; a transport not enabled
    there should not register.

    Called at daemon start, and again while the daemon runs (``tachi daemon
    listen``, ``tachi daemon reload``) with a config holding only the
    ``[transports.NAME]`` table of the listener to build: register should only
    read settings and build objects.
    """


@hookspec(firstresult=True)
def tachi_authenticate(peer: Any) -> Any:
    """Say who ``peer`` (a ``tachi.core.peer.Peer``) is: a ``Principal``, or ``None``.

    Called by the daemon for every new connection on every transport, after the
    daemon-wide IP rules passed. The first non-``None`` answer wins; raise
    ``tachi.errors.PermissionDenied`` to refuse outright (with a reason the
    peer is shown). A peer nobody vouches for is refused and audited with its
    address, unless it presented a share token. Built-ins: local users from
    peer credentials (``tachi.builtins.unix_socket``), and the share-token
    wrapper (``tachi.builtins.token_auth``), which turns whatever identity the
    others found plus a presented token into the grant's principal. Must not
    block: it runs on the daemon's event loop.
    """


@hookspec(firstresult=True)
def tachi_server_tls(transport: str, config: Any) -> Any:
    """Return an ``ssl.SSLContext`` for a network transport's listener, or ``None``.

    Lets an identity plugin (SPIFFE) supply the daemon's certificate and the
    client-certificate verification. A transport calls this before falling back
    to its own certificate settings. The context may rotate certificates
    without a restart (e.g. through ``sni_callback``).
    """


@hookspec(firstresult=True)
def tachi_client_tls(url: str, options: dict[str, Any]) -> Any:
    """Return an ``ssl.SSLContext`` the client uses to reach ``url``, or ``None``.

    ``options`` holds the client's connection options (``fingerprint``,
    ``ca_file``, ``svid_cert``, ``svid_key``, ``trust_bundle``, ``server_id``,
    …). Called in the client process, not the daemon.
    """


@hookspec
def tachi_verify_server(url: str, options: dict[str, Any], certificate: bytes) -> None:
    """Check the daemon's TLS leaf certificate (DER) after the handshake.

    Raise ``tachi.errors.PermissionDenied`` to refuse the server (say why in one
    line). Called in the client process for every TLS connection a client
    transport opens.
    """


@hookspec(firstresult=True)
def tachi_connect(url: str, options: dict[str, Any]) -> Any:
    """Open a connection to the daemon at ``url`` (``wss://host:7681``, ``ssh://…``).

    Return a connected stream ``socket.socket`` that carries tachi frames both
    ways (a transport plugin typically bridges its protocol to one end of a
    ``socket.socketpair()``), or ``None`` if the URL's scheme is not yours.
    Raise ``tachi.errors.DaemonUnavailable`` (can't reach) or
    ``PermissionDenied`` (TLS or identity refused) with one clear line.
    Called in the client process (``tachi --host URL``, ``Client(url=…)``).
    With ``options["inline"]`` (a caller that reads promptly on one thread:
    attach and the CLI's commands), an object with the socket calls the frame
    reader makes may be returned instead, speaking the protocol on the
    caller's thread (docs/plugins.md).
    """


@hookspec
def tachi_authorize(principal: Any, action: str, session: Any, data: bytes | None) -> bool | None:
    """Say whether ``principal`` may perform ``action`` on ``session``.

    Return ``True`` to allow, ``False`` to deny, ``None`` to abstain. Results
    are combined by the daemon: any ``False`` denies, otherwise one ``True``
    allows, otherwise the action is denied. ``session`` is ``None`` for
    actions on the daemon itself (``session.create``, ``exec``,
    ``daemon.stop``). Must not block: it runs on the daemon's event loop.

    ``data`` is ``None``, except for an implementation that takes it (pluggy
    passes only the arguments an implementation names): it is then asked again
    for every piece of input before it reaches a session, with ``action``
    ``session.write`` and ``data`` the bytes (``tachi send``, ``run``, and typed
    keys chunk by chunk as they arrive: best-effort, a pattern typed key by key
    comes in many calls). There, ``False`` (or raising ``PermissionDenied``)
    drops that input, audited; ``True`` adds nothing, the write was allowed
    already. When no implementation takes ``data``, input is never shown to
    policies and costs nothing more.
    """


@hookspec
def tachi_register_actions(register: Callable[[Any], None]) -> None:
    """Register the actions your plugin's policies decide with
    ``register(tachi.core.actions.Action(name, description))``.

    The built-in actions (``session.write``, ``exec``, …) are registered
    already; a name that is taken or malformed is logged, naming the plugin,
    and not used. Every control operation declares the actions it needs from
    this registry, and the daemon asks ``tachi_authorize`` about them before
    the operation runs. Asked once, at daemon start.
    """


@hookspec
def tachi_register_operations(register: Callable[[Any], None]) -> None:
    """Register daemon operations with ``register(function)``: an ``async``
    function declared with ``tachi.daemon.ops.operation`` (its name, the
    actions it needs, the session it targets), as the built-in ones are, so
    the dispatcher checks what it declares, audits a denial and only then runs
    it. Clients call it by name (``Client.call("myplugin.op", ...)``).

    The built-in operations are registered already. A function that is not
    declared, a name that is taken, or a declaration naming an action nobody
    registered (register yours with ``tachi_register_actions``) is logged,
    naming the plugin, and not served; the daemon starts without it. Asked
    once, at daemon start.
    """


@hookspec(firstresult=True)
def tachi_multiplexer() -> Any:
    """Return the multiplexer class that owns a session's windows.

    The first non-``None`` answer wins; the built-in
    ``tachi.builtins.windows.WindowMultiplexer`` registers ``trylast`` so a
    plugin can replace it. Asked once, at daemon start: an answer that is not
    a class with the members the session uses (``tachi.hooks``) is logged,
    naming the plugin, and the next one is used.
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

    An exception from the sink (``OSError`` for a full disk, or any other for
    a bug) ends that recording: it is marked failed with the reason, one log
    line names the recorder, the session goes on. Optional
    ``repair(path) -> float | None``: make a file a crashed daemon left
    readable and return its duration in seconds; it must leave bytes it does
    not understand as they are (raise instead). A format whose recorder has no
    ``repair`` is never touched after a crash.

    Optional ``export(path, out)``: the reader. Write the recording at
    ``path`` to the binary file ``out`` as asciicast v2; ``tachi record
    export`` and ``tachi play`` of a recording in this format go through it
    (in the CLI's process, with the recorder installed there) and check that
    the result parses. Without it, both refuse with one error line and leave
    no file.
    """


@hookspec(firstresult=True)
def tachi_create_screen(cols: int, rows: int, history: int) -> Any:
    """Return a terminal emulator for a new window, or ``None`` to leave it to others.

    The object must satisfy ``tachi.core.screen.Screen``; it keeps up to
    ``history`` lines that scrolled off the top (config ``[session]
    history_limit``) for ``history()``. The built-in uses avt (asciinema's
    emulator) and registers ``trylast``. An implementation may leave out the
    ``history`` argument (pluggy passes only what it asks for); it then has no
    scrollback.
    """


@hookspec
def tachi_audit_event(event: dict[str, Any]) -> None:
    """Called after each audit record is written; ship it elsewhere if you like.

    ``event`` is a copy of the record as written (with its hash). Runs on a
    thread of its own, in order, and may block. An exception never reaches the
    daemon: the first is logged, and the plugin then gets no records for a
    pause that doubles with each failure (raise only when you give up on a
    record). At daemon stop, queued records get 5 s.
    """


@hookspec
def tachi_session_event(session: Any, event: str, details: dict[str, Any]) -> None:
    """Called after the daemon has acted on a session: ``created``, ``state``
    (attached/detached changed it), ``resized``, ``window-switched``,
    ``window-exited`` and ``closed``."""


@hookspec
def tachi_register_commands(cli: click.Group) -> None:
    """Add commands to the ``tachi`` CLI (``cli.command()(fn)``)."""
