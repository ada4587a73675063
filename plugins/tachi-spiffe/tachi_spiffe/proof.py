"""An X.509-SVID proved by a signature instead of a TLS handshake.

Where there is no end-to-end TLS (the NATS relay: ``docs/fleet.md``), a
workload proves its SVID by signing a message its peer chose for this one
connection with the SVID's key. The peer then checks what a TLS handshake
would have: the leaf is an X.509-SVID of an accepted trust domain
(``svid.spiffe_id_of``), its chain leads to a CA of *that* domain's own bundle
(``bundles.check_issuer``, SPIFFE federation), every certificate on the path is
valid now, and the signature is the leaf key's over the message.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from spiffe import SpiffeId

from tachi.errors import InvalidRequest, PermissionDenied
from tachi_spiffe.bundles import Bundles, check_issuer
from tachi_spiffe.svid import spiffe_id_of

#: The most certificates a proof may carry (leaf and intermediates): a bound on
#: the work a peer can ask for.
MAX_CHAIN = 8


def load_svid(cert: Path | str, key: Path | str) -> tuple[tuple[bytes, ...], Any]:
    """(the chain as DER, leaf first; the private key) from PEM files (the
    certificate file may hold intermediates after the leaf). Raises
    ``InvalidRequest`` naming the file."""
    try:
        certs = x509.load_pem_x509_certificates(Path(cert).read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"SVID {cert}: {exc}") from None
    try:
        private = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"SVID key {key}: {exc}") from None
    chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
    if _public_der(certs[0].public_key()) != _public_der(private.public_key()):
        raise InvalidRequest(f"SVID key {key} is not the key of the certificate in {cert}")
    return chain, private


def _public_der(public: Any) -> bytes:
    return bytes(
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def sign(private: Any, message: bytes) -> bytes:
    """``message`` signed with an SVID's key (ECDSA with SHA-256, RSA-PSS with
    SHA-256, or Ed25519/Ed448). Raises ``InvalidRequest`` for another key type."""
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return private.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(message, _pss(), hashes.SHA256())
    if isinstance(private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return private.sign(message)
    raise InvalidRequest(f"an SVID key of type {type(private).__name__} cannot sign a proof")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def _check_signature(leaf: x509.Certificate, signature: bytes, message: bytes) -> None:
    public = leaf.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, _pss(), hashes.SHA256())
        elif isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public.verify(signature, message)
        else:
            raise PermissionDenied(f"an SVID key of type {type(public).__name__} is not supported")
    except InvalidSignature:
        raise PermissionDenied(
            "the SVID's signature does not match this connection (made for another one?)"
        ) from None


def verify(
    chain: Sequence[bytes],
    signature: bytes,
    message: bytes,
    trust_domains: frozenset[str],
    bundles: Bundles,
    now: datetime.datetime | None = None,
) -> SpiffeId:
    """The SPIFFE ID that ``chain`` (DER, leaf first) proves, if ``signature`` is
    its leaf key's over ``message`` and the chain is a valid SVID of an accepted
    trust domain, signed by a CA of that domain's own bundle and valid ``now``.
    Raises ``PermissionDenied`` with one line saying what failed."""
    if not chain or len(chain) > MAX_CHAIN:
        raise PermissionDenied(f"an SVID proof carries 1 to {MAX_CHAIN} certificates")
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
        for der in chain[1:]:
            x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise PermissionDenied(f"not an X.509 certificate: {exc}") from None
    spiffe_id = spiffe_id_of(chain[0], trust_domains)
    at = now or datetime.datetime.now(datetime.UTC)
    check_issuer(chain, str(spiffe_id.trust_domain), bundles, at=at)
    _check_signature(leaf, signature, message)
    return spiffe_id
