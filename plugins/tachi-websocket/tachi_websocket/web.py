"""Plain HTTP on the listener: the browser terminal's pages."""

from __future__ import annotations

from typing import Any

from websockets.http11 import Request, Response


async def respond(daemon: Any, transport: Any, request: Request) -> Response | None:
    """The response to a plain GET of ``request.path``, or ``None`` (404)."""
    return None
