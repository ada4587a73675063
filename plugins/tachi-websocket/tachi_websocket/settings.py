"""``[transports.websocket]``: what the listener is configured to do."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tachi.errors import InvalidRequest
from tachi.gotime import parse_duration

DEFAULT_PORT = 7681


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    tls: str  # "off", "self-signed" or "files"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    heartbeat: float = 20.0
    compression: bool = True
    max_frame: int = 1 << 20
    origins: tuple[str, ...] = ()
    state_dir: Path = field(default_factory=Path)

    @property
    def scheme(self) -> str:
        return "wss" if self.tls != "off" else "ws"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:7681"``, ``"[::1]:7681"``, ``":7681"`` or ``"7681"`` → host, port.

    Raises ``InvalidRequest`` for anything else."""
    text = value.strip()
    if text.isdigit():
        host, port = "127.0.0.1", text
    elif text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise InvalidRequest(f"listen {value!r}: expected [IPv6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, str(DEFAULT_PORT)
        host = host or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidRequest(f"listen {value!r}: bad port {port!r}")
    return host, int(port)


def load(table: dict[str, Any], state_dir: Path) -> Settings:
    """Settings from the config table. Raises ``InvalidRequest`` naming the key."""
    host, port = split_host_port(str(table["listen"]))
    tls_value = table.get("tls", False)
    cert, key = table.get("tls_cert"), table.get("tls_key")
    if cert or key:
        if not (cert and key):
            raise InvalidRequest("transports.websocket: tls_cert and tls_key go together")
        tls = "files"
    elif tls_value == "self-signed":
        tls = "self-signed"
    elif tls_value in (False, "off", None):
        tls = "off"
    else:
        raise InvalidRequest(
            f"transports.websocket.tls: {tls_value!r} (use tls_cert/tls_key or 'self-signed')"
        )
    try:
        heartbeat = parse_duration(table.get("heartbeat", "20s")) / 1e9
    except ValueError as exc:
        raise InvalidRequest(f"transports.websocket.heartbeat: {exc}") from None
    max_frame = int(table.get("max_frame", 1 << 20))
    if max_frame < 64 * 1024:
        raise InvalidRequest("transports.websocket.max_frame must be at least 65536 bytes")
    origins = table.get("origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise InvalidRequest("transports.websocket.origins must be a list of origins")
    settings = Settings(
        host=host,
        port=port,
        tls=tls,
        tls_cert=Path(cert).expanduser() if cert else None,
        tls_key=Path(key).expanduser() if key else None,
        insecure=bool(table.get("insecure", False)),
        heartbeat=heartbeat,
        compression=bool(table.get("compression", True)),
        max_frame=max_frame,
        origins=tuple(origins),
        state_dir=state_dir,
    )
    if settings.tls == "off" and not settings.loopback and not settings.insecure:
        raise InvalidRequest(
            f'refusing to listen on {host}:{port} without TLS: set tls = "self-signed",'
            " tls_cert/tls_key, or insecure = true"
        )
    return settings
