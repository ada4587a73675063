"""Plain HTTP on the listener: the browser terminal's pages and assets.

The pages carry no secrets and no session data: they read the token from the
URL fragment (which browsers never send to a server) and fetch everything else
through the WebSocket protocol, where the daemon authenticates and authorises
each request like any other client's.
"""

from __future__ import annotations

import email.utils
import http
from importlib import resources
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

_STATIC = resources.files("tachi_websocket") / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
#: Pages by the first part of their path: /, /s/SESSION, /r/RECORDING.
_PAGES = {"": "index.html", "s": "terminal.html", "r": "player.html"}
_SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        # 'wasm-unsafe-eval': asciinema-player parses recordings in WebAssembly
        # (without it the player page stays blank); it allows no JavaScript eval.
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval';"
        " style-src 'self' 'unsafe-inline'; worker-src 'self' blob:;"
        " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]


def _asset(name: str) -> bytes | None:
    """A file under static/ named by a relative path, or ``None``: names are
    looked up among the package's files, never joined onto a filesystem path."""
    node: Any = _STATIC
    for part in name.split("/"):
        if part in ("", ".", "..") or not node.is_dir():
            return None
        children = {child.name: child for child in node.iterdir()}
        if part not in children:
            return None
        node = children[part]
    return node.read_bytes() if node.is_file() else None


def _response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            *_SECURITY_HEADERS,
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


async def respond(daemon: Any, transport: Any, request: Request) -> Response | None:
    """The response to a plain GET of ``request.path``, or ``None`` (404)."""
    path = request.path.split("?", 1)[0]
    parts = path.strip("/").split("/")
    if parts[0] == "static":
        name = "/".join(parts[1:])
        body = _asset(name)
        if body is None:
            return None
        suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        return _response(200, body, _TYPES.get(suffix, "application/octet-stream"))
    page = _PAGES.get(parts[0])
    if page is None or (parts[0] and len(parts) != 2) or (not parts[0] and len(parts) != 1):
        return None
    body = _asset(page)
    return _response(200, body or b"", _TYPES[".html"])
