"""tachi-tcpfwd: ``tachi --host tcpfwd://HOST:PORT`` is a plain TCP connection to a
daemon (behind something that forwards TCP to its socket: no encryption and no
authentication of its own, so only for a trusted network or a tunnel)."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import tachi
from tachi.errors import InvalidRequest

URL_SCHEMES = ("tcpfwd",)  # only imported for these URLs


@tachi.hookimpl
def tachi_connect(url: str, options: dict[str, Any]) -> socket.socket | None:
    if not url.startswith("tcpfwd://"):
        return None  # not ours
    parts = urlsplit(url)
    if not parts.hostname or parts.port is None:
        raise InvalidRequest(f"{url} is not tcpfwd://HOST:PORT")
    # An OSError (refused, unreachable) becomes "cannot reach URL: …".
    return socket.create_connection((parts.hostname, parts.port), timeout=10)
