"""``config.toml``: defaults, loading (tomllib) and validation.

Precedence is CLI flag, then config file, then these defaults. Unknown keys are
kept (plugins read their own ``[plugins.NAME]`` tables) but typos in known
sections are reported at load time.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tachi.daemon.limits import CONNECTIONS, MAX_REQUESTS, REQUESTS
from tachi.errors import InvalidRequest
from tachi.gotime import parse_duration
from tachi.paths import config_path, socket_path, state_dir

SIZE_POLICIES = ("latest", "smallest", "largest")
#: The most scrollback a window may keep (tmux has no hard limit; this bounds memory).
MAX_HISTORY = 100_000
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class Config:
    agent_id: str = field(default_factory=socket.gethostname)
    shell: str | None = None
    term: str = "xterm-256color"
    idle_timeout: int = 0
    max_duration: int = 0
    #: Lines of scrollback kept per window (tmux's default), bounded in memory.
    history_limit: int = 2000
    #: Closed sessions are forgotten this long after they closed (0: never).
    retention: int = 30 * 86400 * 1_000_000_000
    size_policy: str = "latest"
    prefix_key: str = "C-\\"
    status_line: bool = False
    client_buffer: int = 1 << 20
    audit_fail_open: bool = False
    token_grace: int = 60 * 1_000_000_000
    token_rotation: int = 0
    recording_auto: bool = False
    recording_dir: Path | None = None
    recording_input: bool = False
    recording_format: str = "asciicast"
    #: Keep a warm CLI beside the socket (``tachi.launch``): ``[cli] warm``.
    warm_cli: bool = True
    screen_memory: int | None = None
    #: ``[limits] requests``: requests one connection runs at once (tachi.daemon.limits).
    requests: int = REQUESTS
    #: ``[limits] connections``: connections one principal other than the
    #: daemon's own user may have open at once (a grant counts as one).
    connections: int = CONNECTIONS
    allow_ip: list[Network] = field(default_factory=list)
    deny_ip: list[Network] = field(default_factory=list)
    state_dir: Path = field(default_factory=state_dir)
    socket: Path = field(default_factory=socket_path)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def recordings_dir(self) -> Path:
        return self.recording_dir or self.state_dir / "recordings"

    def address_refusal(self, address: str) -> str | None:
        """Why the daemon-wide IP rules refuse ``address``, or ``None`` if they allow it.

        ``deny_ip`` wins over ``allow_ip``; an empty ``allow_ip`` allows every
        address that is not denied. An unparsable address is refused.
        """
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"unparsable peer address {address!r}"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for net in self.deny_ip:
            if ip.version == net.version and ip in net:
                return f"address {ip} is denied by deny_ip {net}"
        if self.allow_ip and not any(
            ip.version == net.version and ip in net for net in self.allow_ip
        ):
            return f"address {ip} is not in allow_ip"
        return None

    def transport(self, name: str) -> dict[str, Any]:
        """The ``[transports.NAME]`` table, or ``{}``."""
        return dict(self.raw.get("transports", {}).get(name, {}))

    def listen_on(self, address: str) -> None:
        """``tachid --listen HOST:PORT``: set the network listener's address (the
        WebSocket transport's ``listen``; the transport plugin must be installed),
        with a self-signed certificate unless the config sets up TLS."""
        table = self.raw.setdefault("transports", {}).setdefault("websocket", {})
        table["listen"] = address
        if not any(k in table for k in ("tls", "tls_cert", "tls_key")):
            table["tls"] = "self-signed"  # TLS unless the config says otherwise

    def plugin(self, name: str) -> dict[str, Any]:
        """The ``[plugins.NAME]`` table, or ``{}``."""
        return dict(self.raw.get("plugins", {}).get(name, {}))


def load(path: Path | None = None) -> Config:
    """Read config from ``path`` (default: :func:`tachi.paths.config_path`).

    A missing file gives the defaults. Raises ``InvalidRequest`` naming the file
    and the key for malformed TOML or a bad value.
    """
    path = path or config_path()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Config()
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"{path}: invalid TOML: {exc}") from None
    try:
        return _from_raw(raw)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"{path}: {exc}") from None


def _from_raw(raw: dict[str, Any]) -> Config:
    cfg = Config(raw=raw)
    session = raw.get("session", {})
    rec = raw.get("recording", {})
    sec = raw.get("security", {})
    if "agent_id" in raw:
        cfg.agent_id = str(raw["agent_id"])
    cfg.shell = session.get("shell", raw.get("shell"))
    cfg.term = str(session.get("term", cfg.term))
    for key in ("idle_timeout", "max_duration", "retention"):
        if key in session:
            setattr(cfg, key, parse_duration(session[key]))
    if "history_limit" in session:
        cfg.history_limit = int(session["history_limit"])
        if not 0 <= cfg.history_limit <= MAX_HISTORY:
            raise ValueError(f"session.history_limit must be 0-{MAX_HISTORY} lines")
    policy = str(raw.get("size_policy", session.get("size_policy", cfg.size_policy)))
    if policy not in SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {', '.join(SIZE_POLICIES)}, not {policy!r}")
    cfg.size_policy = policy
    cfg.prefix_key = str(raw.get("prefix_key", cfg.prefix_key))
    from tachi.cli.keys import parse_key  # where the key notation is defined

    try:
        parse_key(cfg.prefix_key)
    except ValueError as exc:
        # Refused here, not at the first attach: a prefix that could never be
        # recognised would otherwise leave attach without its commands.
        raise ValueError(f"prefix_key: {exc}") from None
    cfg.status_line = bool(raw.get("status_line", cfg.status_line))
    cfg.client_buffer = int(raw.get("client_buffer", cfg.client_buffer))
    if cfg.client_buffer < 64 * 1024:
        raise ValueError("client_buffer must be at least 65536 bytes")
    cfg.recording_auto = bool(rec.get("auto", False))
    cfg.recording_input = bool(rec.get("input", False))
    cfg.recording_format = str(rec.get("format", cfg.recording_format))
    if rec.get("dir"):
        cfg.recording_dir = Path(rec["dir"]).expanduser()
    cfg.warm_cli = bool(raw.get("cli", {}).get("warm", cfg.warm_cli))
    cfg.audit_fail_open = bool(sec.get("audit_fail_open", False))
    limits = raw.get("limits", {})
    if "screen_memory" in limits:
        cfg.screen_memory = parse_size(limits["screen_memory"], "limits.screen_memory")
    if "requests" in limits:
        cfg.requests = _count(limits["requests"], "limits.requests", 1, MAX_REQUESTS)
    if "connections" in limits:
        cfg.connections = _count(limits["connections"], "limits.connections", 1, 1 << 20)
    cfg.allow_ip = _networks(sec, "allow_ip")
    cfg.deny_ip = _networks(sec, "deny_ip")
    if "token_grace" in sec:
        cfg.token_grace = parse_duration(sec["token_grace"])
    if "token_rotation" in sec or "token_rotation" in raw:
        cfg.token_rotation = parse_duration(sec.get("token_rotation", raw.get("token_rotation")))
    return cfg


def _count(value: Any, key: str, low: int, high: int) -> int:
    """A whole number in ``low``-``high``; ``ValueError`` naming ``key`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _networks(table: dict[str, Any], key: str) -> list[Network]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"security.{key} must be a list of CIDR strings")
    try:
        return [ipaddress.ip_network(str(cidr), strict=False) for cidr in value]
    except ValueError as exc:
        raise ValueError(f"security.{key}: {exc}") from None


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: Any, key: str) -> int:
    """``1073741824``, ``"512MiB"``, ``"2G"``, ``"64k"`` → bytes (binary units).

    Raises ``ValueError`` naming ``key`` for anything else or a size under 1 MiB.
    """
    import re

    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
        if not m:
            raise ValueError(f"{key} must be a size such as 512MiB or 2GiB, not {value!r}")
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if size < 1 << 20:
        raise ValueError(f"{key} must be at least 1MiB")
    return size
