"""``[transports.ssh]`` in config.toml, read and checked once at daemon start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tachi.core.principal import user_name
from tachi.errors import InvalidRequest
from tachi.gotime import parse_duration

_NS = 1_000_000_000


@dataclass(slots=True)
class SSHSettings:
    """What the SSH transport needs to know; durations in seconds (0 = no limit)."""

    host: str
    port: int
    host_key: Path
    authorized_keys: Path
    ca_keys: Path | None = None
    owner_principals: tuple[str, ...] = ()
    passwords: bool = True
    keepalive_interval: float = 30.0
    keepalive_count_max: int = 3
    login_timeout: float = 30.0
    idle_timeout: float = 0.0
    max_duration: float = 0.0
    max_sessions: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:2222``, ``[::1]:2222``, ``:2222`` → (host, port).

    Raises ``ValueError`` for anything else."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen must be HOST:PORT, not {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _seconds(table: dict[str, Any], key: str, default: float) -> float:
    if key not in table:
        return default
    return parse_duration(table[key]) / _NS


def load(table: dict[str, Any], state_dir: Path, config_dir: Path) -> SSHSettings:
    """Build settings from the ``[transports.ssh]`` table.

    Relative paths are taken relative to ``config_dir``. Raises
    ``InvalidRequest`` naming the key for a bad value.
    """
    try:
        host, port = parse_listen(str(table["listen"]))

        def path(key: str, default: Path | None) -> Path | None:
            value = table.get(key)
            if value is None:
                return default
            p = Path(str(value)).expanduser()
            return p if p.is_absolute() else config_dir / p

        owners = table.get("owner_principals", [user_name(os.getuid())])
        if isinstance(owners, str):
            owners = [owners]
        host_key = path("host_key", state_dir / "ssh_host_ed25519_key")
        authorized = path("authorized_keys", config_dir / "ssh_authorized_keys")
        assert host_key is not None and authorized is not None
        return SSHSettings(
            host=host,
            port=port,
            host_key=host_key,
            authorized_keys=authorized,
            ca_keys=path("ca_keys", None),
            owner_principals=tuple(str(o) for o in owners),
            passwords=bool(table.get("passwords", True)),
            keepalive_interval=_seconds(table, "keepalive_interval", 30.0),
            keepalive_count_max=int(table.get("keepalive_count_max", 3)),
            login_timeout=_seconds(table, "login_timeout", 30.0),
            idle_timeout=_seconds(table, "idle_timeout", 0.0),
            max_duration=_seconds(table, "max_duration", 0.0),
            max_sessions=int(table.get("max_sessions", 10)),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"[transports.ssh]: {exc}") from None
