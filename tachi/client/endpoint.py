"""Where a client reaches its daemon: the local Unix socket, or a remote URL.

A remote URL (``wss://host:7681``) is opened by whichever transport plugin
answers ``tachi_connect`` for its scheme; the plugin hands back a connected
stream socket carrying tachi frames, so everything above this module is the
same for local and remote daemons. The core never imports a transport.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tachi.errors import DaemonUnavailable, InvalidRequest

#: Client options a transport or identity plugin may read (``--fingerprint`` …),
#: with the environment variables that set them.
OPTION_ENV = {
    "fingerprint": "TACHI_FINGERPRINT",
    "ca_file": "TACHI_CA_FILE",
    "svid_cert": "TACHI_SVID_CERT",
    "svid_key": "TACHI_SVID_KEY",
    "trust_bundle": "TACHI_TRUST_BUNDLE",
    "server_id": "TACHI_SERVER_ID",
    "compression": "TACHI_WS_COMPRESSION",
}
#: The options that make a client load the identity plugins (``tachi_client_tls``,
#: ``tachi_verify_server``); without one of them those plugins are not imported.
IDENTITY_OPTIONS = ("svid_cert", "svid_key", "trust_bundle", "server_id")


@dataclass(frozen=True)
class Endpoint:
    """A daemon address: ``url`` for a remote daemon, else the local ``socket``."""

    socket: Path
    url: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return self.url is not None

    def __str__(self) -> str:
        return self.url or str(self.socket)

    def open(self, *, autostart: bool) -> socket.socket:
        """A connected stream socket carrying tachi frames.

        Raises ``DaemonUnavailable`` (can't reach, or no daemon and no
        ``autostart``), ``PermissionDenied`` (TLS or identity refused) or
        ``InvalidRequest`` (a URL no installed transport understands).
        """
        if self.url is None:
            from tachi.client.autostart import connect_socket

            return connect_socket(self.socket, autostart=autostart)
        # Only the transports, and the identity plugins when an identity option
        # is given: `--host wss://… ls` must not import a screen emulator or
        # an identity library it does not use (hundreds of ms).
        hooks = {"tachi_connect"}
        if any(self.options.get(k) for k in IDENTITY_OPTIONS):
            hooks |= {"tachi_client_tls", "tachi_verify_server"}
        pm = transport_plugins(frozenset(hooks), self.url.split("://", 1)[0])
        options = {**self.options, "hooks": pm.hook}
        try:
            sock = pm.hook.tachi_connect(url=self.url, options=options)
        except OSError as exc:
            raise DaemonUnavailable(f"cannot reach {self.url}: {exc.strerror or exc}") from None
        if sock is None:
            scheme = self.url.split("://", 1)[0]
            raise InvalidRequest(
                f"no installed transport handles {scheme}:// URLs"
                " (install tachi-websocket for ws:// and wss://)"
            )
        return sock


#: Plugin managers made for remote connections (see transport_plugins).
_MANAGERS: dict[tuple[Any, ...], Any] = {}


def transport_plugins(hooks: frozenset[str], scheme: str | None) -> Any:
    """The plugins that open ``scheme`` URLs (and answer ``hooks``), loaded once
    per process and plugin selection (``TACHI_LOAD_PLUGINS``,
    ``TACHI_DISABLE_PLUGINS``): the warm CLI loads them before it forks, so a
    remote command does not (about 2 ms of each), nor does a program that
    makes many ``Client(url=…)``. A distribution installed or removed since
    (the site directories' times) or another ``sys.path`` makes them anew."""
    from tachi.plugins import HookIndex, make_plugin_manager

    key = (
        hooks,
        scheme,
        os.environ.get("TACHI_LOAD_PLUGINS"),
        os.environ.get("TACHI_DISABLE_PLUGINS"),
        tuple(sys.path),
        HookIndex.installed(),
    )
    pm = _MANAGERS.get(key)
    if pm is None:
        if len(_MANAGERS) >= 16:  # selections and schemes a process uses: a few
            _MANAGERS.clear()
        pm = _MANAGERS[key] = make_plugin_manager(hooks=hooks, scheme=scheme)
    return pm


def resolve(
    socket: str | os.PathLike[str] | None = None,
    url: str | None = None,
    options: dict[str, Any] | None = None,
) -> Endpoint:
    """The endpoint for explicit arguments, else ``TACHI_HOST``, else the local socket.

    Options left unset are taken from their environment variables (``OPTION_ENV``).
    """
    from tachi.paths import socket_path

    url = url or os.environ.get("TACHI_HOST") or None
    merged = {k: os.environ[v] for k, v in OPTION_ENV.items() if os.environ.get(v)}
    merged |= {k: v for k, v in (options or {}).items() if v is not None}
    if url is not None and "://" not in url:
        raise InvalidRequest(f"--host {url!r} is not a URL (example: wss://host:7681)")
    return Endpoint(socket=socket_path(socket), url=url, options=merged)
