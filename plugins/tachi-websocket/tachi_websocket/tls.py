"""TLS for the listener: the configured certificate or a self-signed one made
once, and SHA-256 fingerprints to pin it from clients."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import ssl
from pathlib import Path

from tachi.errors import InvalidRequest


def fingerprint(der: bytes) -> str:
    """``SHA256:`` and the base64 (unpadded) digest of a DER certificate, as OpenSSH
    prints key fingerprints."""
    digest = hashlib.sha256(der).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def normalise_fingerprint(text: str) -> bytes:
    """The digest a user's ``--fingerprint`` names: ``SHA256:<base64>``, or hex with
    or without colons. Raises ``InvalidRequest`` for anything else."""
    value = text.strip()
    if value.upper().startswith("SHA256:"):
        value = value[7:]
    hexed = value.replace(":", "")
    if len(hexed) == 64:
        try:
            return bytes.fromhex(hexed)
        except ValueError:
            pass
    try:
        digest = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise InvalidRequest(f"--fingerprint {text!r} is not a SHA-256 fingerprint")
    return digest


def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """The listener's self-signed certificate and key in ``directory``, made on first
    use (ECDSA P-256, ten years, SANs for ``host``, localhost and loopback)."""
    cert_path, key_path = directory / "websocket-cert.pem", directory / "websocket-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for address in {"127.0.0.1", "::1", host}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tachid {host}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context. Raises ``InvalidRequest`` naming an unreadable file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidRequest(f"transports.websocket: cannot load {cert} / {key}: {exc}") from None
    return ctx


def certificate_der(cert: Path) -> bytes:
    """The first certificate of a PEM file, as DER."""
    return ssl.PEM_cert_to_DER_cert(cert.read_text())
