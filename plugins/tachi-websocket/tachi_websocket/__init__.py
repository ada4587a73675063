"""tachi-websocket: the WebSocket transport, its browser terminal, and the
client side of ``tachi --host wss://…``.

Enabled by ``[transports.websocket] listen = "HOST:PORT"`` in config.toml or
``tachi daemon start --listen HOST:PORT``; see ``docs/websocket.md``.
"""

from __future__ import annotations

from typing import Any

from tachi.hookspecs import hookimpl

#: The URLs ``tachi_connect`` opens: a client for others does not import this plugin.
URL_SCHEMES = ("ws", "wss")
#: What the warm CLI imports ahead of remote commands (``tachi.cli.warm_server``).
WARM_PRELOAD = ("tachi_websocket.client",)

__version__ = "0.1.0"


@hookimpl
def tachi_register_transports(register: Any, config: Any) -> None:
    """Register the listener when ``[transports.websocket]`` names ``listen``.

    Raises ``InvalidRequest`` naming the key for a bad setting."""
    table = config.transport("websocket")
    if not table.get("listen"):
        return
    from tachi_websocket import settings
    from tachi_websocket.server import WebSocketTransport

    register(WebSocketTransport(settings.load(table, config.state_dir)))


@hookimpl
def tachi_connect(url: str, options: dict[str, Any]) -> Any:
    """Open ``ws://`` and ``wss://`` URLs (in the client process)."""
    if url.split("://", 1)[0].lower() not in ("ws", "wss"):
        return None
    from tachi_websocket.client import open_connection

    return open_connection(url, options)
