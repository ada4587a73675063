"""Test certificates made with cryptography: a CA per trust domain and SVIDs;
and the daemon that takes them (TLS WebSocket listener, SPIFFE plugin)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tachi.testing import DaemonProcess

#: The daemon's own SPIFFE ID, which the clients check (``--server-id``).
SERVER_ID = "spiffe://example.org/tachid"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    """A trust domain's root CA."""

    def __init__(self, domain: str, *, uri_san: bool = True, parent: CA | None = None) -> None:
        """A root CA (or, with ``parent``, an intermediate it signs), with a
        ``spiffe://DOMAIN`` URI SAN unless ``uri_san`` is false."""
        self.domain = domain
        self.parent = parent
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        label = f"{domain} intermediate CA" if parent else f"{domain} CA"
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(label))
            .issuer_name(parent.cert.subject if parent else _name(label))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        )
        if uri_san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{domain}")]),
                critical=False,
            )
        self.cert = builder.sign(parent.key if parent else self.key, hashes.SHA256())

    def bundle(self, path: Path, *others: CA) -> Path:
        pem = b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in (self, *others))
        path.write_bytes(pem)
        return path

    def svid(
        self,
        directory: Path,
        name: str,
        uris: list[str],
        *,
        ca: bool = False,
        expired: bool = False,
        basic_constraints: bool = True,
        key_cert_sign: bool | None = None,
    ) -> tuple[Path, Path]:
        """A leaf certificate and key with these URI SANs, as PEM files (the
        certificate file holds the chain up to, not including, the root)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start, end = (
            (now - dt.timedelta(days=3), now - dt.timedelta(days=1))
            if expired
            else (now - dt.timedelta(minutes=5), now + dt.timedelta(hours=1))
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
        )
        if basic_constraints:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=ca, path_length=None), critical=True
            )
        signs = ca if key_cert_sign is None else key_cert_sign
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, signs, ca, False, False),
            critical=True,
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        chain, up = [cert], self
        while up.parent is not None:
            chain.append(up.cert)
            up = up.parent
        cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def spiffe_daemon(home: Path, identity: str, roles: dict[str, str]) -> tuple[DaemonProcess, str]:
    """A started daemon with the TLS WebSocket listener and the SPIFFE plugin, and
    its ``wss://`` URL. ``identity`` is the body of ``[identity.spiffe]`` (trust
    domains, bundles, where its SVID comes from); ``roles`` maps SPIFFE IDs (or
    patterns) to roles. Raises ``RuntimeError`` if the daemon does not start."""
    tables = "".join(
        f'\n[[identity.spiffe.roles]]\nid = "{spiffe_id}"\nrole = "{role}"\n'
        for spiffe_id, role in roles.items()
    )
    config = (
        f'[transports.websocket]\nlisten = "127.0.0.1:0"\n\n[identity.spiffe]\n{identity}\n{tables}'
    )
    daemon = DaemonProcess(
        home, extra_env={"TACHI_LOAD_PLUGINS": "websocket,spiffe"}, config=config
    )
    daemon.start()
    try:
        status = json.loads(daemon.run("daemon", "status", "--json", check=True).stdout)
        url = next(x["url"] for x in status["listeners"] if x["transport"] == "websocket")
    except BaseException:
        daemon.stop()
        raise
    return daemon, url


def svid_flags(
    url: str, cert: Path, key: Path, bundle: Path, server_id: str = SERVER_ID
) -> list[str]:
    """The remote CLI's flags to reach ``url`` with an X.509-SVID, checking the
    daemon's own against ``bundle`` and ``server_id``."""
    return [
        "--host", url, "--svid-cert", str(cert), "--svid-key", str(key),
        "--trust-bundle", str(bundle), "--server-id", server_id,
    ]  # fmt: skip
