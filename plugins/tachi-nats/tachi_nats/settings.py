"""The ``[fleet]`` table of config.toml, and how to connect to NATS with it.

Names derived from ``prefix`` (default ``tachi``), shared by every host:

- KV bucket ``PREFIX-sessions``: key ``HOST.SESSION`` = the session's JSON plus ``host``;
- KV bucket ``PREFIX-hosts``: ``info.HOST`` (the host's audit public key, version)
  and ``alive.HOST`` (the heartbeat, removed by the server after ``HEARTBEAT_TTL``);
- stream ``PREFIX-audit``: subjects ``PREFIX.audit.HOST`` (the audit records, byte
  for byte as in the host's log) and ``PREFIX.checkpoint.HOST`` (its signed checkpoints);
- object store ``PREFIX-recordings``: object ``HOST/RECORDING_ID`` = a finished
  recording, its chunks on ``$O.PREFIX-recordings.C.HOST.<nuid>`` (one subject
  tree per host, so a host's permissions can name its own).
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tachi.errors import InvalidRequest

#: A host name or prefix must be one NATS subject token and a valid KV key/bucket part.
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Seconds between heartbeats, and how long the server keeps one: a host that stops
#: publishing is gone after at most HEARTBEAT_TTL (+ the server's expiry tick). Four
#: beats a TTL, so a host whose daemon is starved for a beat or two stays up; 8 s
#: leaves the 15 s promise room for a loaded reader.
HEARTBEAT_EVERY = 2.0
HEARTBEAT_TTL = 8


def default_host() -> str:
    """This machine's short host name, made into a subject token (dots and anything
    else outside ``[A-Za-z0-9_-]`` become ``-``)."""
    name = socket.gethostname().split(".")[0] or "localhost"
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64]


@dataclass(frozen=True)
class FleetSettings:
    """What ``[fleet]`` says, checked. ``servers`` is never empty."""

    servers: list[str]
    host: str
    prefix: str = "tachi"
    creds: Path | None = None
    nkey_seed: Path | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: ``tls_svid = true``: ``tls_cert``/``tls_key`` are the daemon's SPIFFE SVID
    #: (``[identity.spiffe] svid_cert``/``svid_key``), re-read at each reconnect.
    tls_svid: bool = False
    #: Keep a recording's local file once it is in the object store.
    keep_local_recordings: bool = True
    #: Replicas of the buckets, stream and object store when they are created
    #: (3 on a 3-node JetStream cluster).
    replicas: int = 1
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    # -- names ---------------------------------------------------------------
    @property
    def sessions_bucket(self) -> str:
        return f"{self.prefix}-sessions"

    @property
    def hosts_bucket(self) -> str:
        return f"{self.prefix}-hosts"

    @property
    def audit_stream(self) -> str:
        return f"{self.prefix}-audit"

    @property
    def recordings_bucket(self) -> str:
        return f"{self.prefix}-recordings"

    def audit_subject(self, host: str) -> str:
        return f"{self.prefix}.audit.{host}"

    def checkpoint_subject(self, host: str) -> str:
        return f"{self.prefix}.checkpoint.{host}"

    # -- connecting ------------------------------------------------------------
    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (servers, credentials, TLS), without
        the reconnect policy, which the caller chooses. Raises ``InvalidRequest`` for
        an unreadable key or certificate file."""
        opts: dict[str, Any] = {"servers": list(self.servers), "name": f"tachi-{self.host}"}
        if self.user is not None:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        if self.token is not None:
            opts["token"] = self.token
        if self.creds is not None:
            jwt, seed = read_creds(self.creds)
            opts["user_jwt_cb"] = lambda: bytearray(jwt)
            opts["signature_cb"] = _signer(seed)
        elif self.nkey_seed is not None:
            seed = _read(self.nkey_seed).strip()
            opts["signature_cb"] = _signer(seed)
            opts["_public_nkey"] = public_nkey(seed)
        tls = self.tls_context()
        if tls is not None:
            opts["tls"] = tls
        return opts

    def tls_context(self) -> ssl.SSLContext | None:
        """A client TLS context when ``tls_ca`` or ``tls_cert`` is set (or a server
        URL says ``tls://``), else ``None``."""
        wants = self.tls_ca or self.tls_cert or any(s.startswith("tls://") for s in self.servers)
        if not wants:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert is not None:
            try:
                ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key or self.tls_cert))
            except (OSError, ssl.SSLError) as e:
                raise InvalidRequest(f"[fleet] tls_cert/tls_key: {e}") from None
        return ctx


def parse(
    raw: dict[str, Any] | None, config_raw: dict[str, Any] | None = None
) -> FleetSettings | None:
    """``FleetSettings`` from the ``[fleet]`` table, ``None`` when there is none (the
    plugin is then idle). ``config_raw`` is the whole config.toml, which
    ``tls_svid = true`` reads ``[identity.spiffe]`` from. Raises ``InvalidRequest``
    naming the key for a bad value."""
    if not raw:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest("[fleet] must be a table")
    url = raw.get("url")
    servers = [url] if isinstance(url, str) else url
    if not servers or not all(isinstance(s, str) and "://" in s for s in servers):
        raise InvalidRequest('[fleet] url: give a NATS URL ("nats://host:4222") or a list of them')
    host = str(raw.get("host") or default_host())
    prefix = str(raw.get("prefix") or "tachi")
    for key, value in (("host", host), ("prefix", prefix)):
        if not NAME.match(value):
            raise InvalidRequest(
                f"[fleet] {key} {value!r}: use 1-64 letters, digits, '-' or '_'"
                " (it is a NATS subject token)"
            )
    user, token = raw.get("user"), raw.get("token")
    if user is not None and token is not None:
        raise InvalidRequest("[fleet]: give user/password or token, not both")

    def path(key: str) -> Path | None:
        value = raw.get(key)
        return Path(str(value)).expanduser() if value else None

    if raw.get("creds") and raw.get("nkey_seed"):
        raise InvalidRequest("[fleet]: give creds or nkey_seed, not both")
    keep = raw.get("keep_local_recordings", True)
    if not isinstance(keep, bool):
        raise InvalidRequest("[fleet] keep_local_recordings: give true or false")
    tls_cert, tls_key = path("tls_cert"), path("tls_key")
    tls_svid = raw.get("tls_svid", False)
    if not isinstance(tls_svid, bool):
        raise InvalidRequest("[fleet] tls_svid: give true or false")
    if tls_svid:
        tls_cert, tls_key = _svid_files(raw, config_raw)
    replicas = raw.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= 5:
        raise InvalidRequest("[fleet] replicas: give 1 to 5 (3 on a 3-node cluster)")
    return FleetSettings(
        servers=list(servers),
        host=host,
        prefix=prefix,
        creds=path("creds"),
        nkey_seed=path("nkey_seed"),
        user=None if user is None else str(user),
        password=None if raw.get("password") is None else str(raw["password"]),
        token=None if token is None else str(token),
        tls_ca=path("tls_ca"),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_svid=tls_svid,
        keep_local_recordings=keep,
        replicas=replicas,
        raw=dict(raw),
    )


def _svid_files(raw: dict[str, Any], config_raw: dict[str, Any] | None) -> tuple[Path, Path]:
    """(certificate, key) of the SVID that ``tls_svid = true`` presents to NATS:
    ``[identity.spiffe] svid_cert``/``svid_key``. Raises ``InvalidRequest``."""
    if raw.get("tls_cert") or raw.get("tls_key"):
        raise InvalidRequest("[fleet]: give tls_cert/tls_key or tls_svid = true, not both")
    spiffe = ((config_raw or {}).get("identity") or {}).get("spiffe") or {}
    cert, key = spiffe.get("svid_cert"), spiffe.get("svid_key")
    if not cert or not key:
        raise InvalidRequest(
            "[fleet] tls_svid = true presents the SVID of [identity.spiffe] svid_cert and"
            " svid_key, which are not set"
            + (
                " (an SVID from workload_api is not supported here)"
                if spiffe.get("workload_api")
                else ""
            )
        )
    return Path(str(cert)).expanduser(), Path(str(key)).expanduser()


def load() -> FleetSettings | None:
    """The ``[fleet]`` settings of this user's config.toml (``TACHI_HOME``), or ``None``."""
    from tachi import config as config_mod

    raw = config_mod.load().raw
    return parse(raw.get("fleet"), raw)


# -- nkeys, with `cryptography` (no `nkeys`/`pynacl` dependency) -----------------------

_PREFIX_SEED = 18 << 3
_PREFIX_USER = 20 << 3


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum at the end of every nkey."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _b32decode(text: bytes) -> bytes:
    return base64.b32decode(text + b"=" * (-len(text) % 8))


def _raw_seed(seed: bytes) -> bytes:
    """The 32-byte Ed25519 seed inside an encoded nkey seed (``SU…``). ``ValueError``
    for anything else."""
    try:
        data = _b32decode(seed.strip())
    except ValueError:
        raise ValueError("not an nkey seed (bad base32)") from None
    if len(data) != 36 or data[0] & 0xF8 != _PREFIX_SEED:
        raise ValueError("not an nkey seed")
    if _crc16(data[:-2]) != int.from_bytes(data[-2:], "little"):
        raise ValueError("nkey seed checksum mismatch")
    return data[2:34]


def _encode(prefix: int, raw: bytes) -> str:
    data = bytes([prefix]) + raw
    data += _crc16(data).to_bytes(2, "little")
    return base64.b32encode(data).decode().rstrip("=")


def public_nkey(seed: bytes) -> str:
    """The user public nkey (``U…``) of an nkey seed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(_raw_seed(seed))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _encode(_PREFIX_USER, raw)


def new_user_seed() -> bytes:
    """A new user nkey seed (``SU…``), as ``nsc``/``nk -gen user`` make them."""
    import os

    raw = os.urandom(32)
    data = bytes([_PREFIX_SEED | (_PREFIX_USER >> 5), (_PREFIX_USER << 3) & 0xFF]) + raw
    data += _crc16(data).to_bytes(2, "little")
    return base64.b32encode(data).rstrip(b"=")


def _signer(seed: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = Ed25519PrivateKey.from_private_bytes(_raw_seed(seed))
    except ValueError as e:
        raise InvalidRequest(f"[fleet]: {e}") from None

    def sign(nonce: str) -> bytes:
        return base64.b64encode(key.sign(nonce.encode()))

    return sign


def read_creds(path: Path) -> tuple[bytes, bytes]:
    """(user JWT, nkey seed) from a ``.creds`` file as ``nsc`` writes them."""
    text = _read(path)
    blocks = re.findall(rb"-{3,}[^\n]*BEGIN[^\n]*-{3,}\s*\n(.+?)\n\s*-{3,}[^\n]*END", text, re.S)
    if len(blocks) < 2:
        raise InvalidRequest(f"[fleet] creds {path}: not a NATS credentials file")
    return blocks[0].strip(), blocks[1].strip()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidRequest(f"[fleet]: cannot read {path}: {e.strerror or e}") from None
