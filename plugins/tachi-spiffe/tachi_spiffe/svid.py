"""SPIFFE IDs from peer certificates, by the X.509-SVID rules.

The ``spiffe`` library's types parse and validate IDs (``SpiffeId``), load
bundles (``X509Bundle``) and our own SVID (``X509Svid``, which checks the leaf
rules and that the key matches). A *peer's* SVID comes without its key, which
``X509Svid`` requires, so the leaf checks for peers are done here with
cryptography: exactly one URI SAN, a valid SPIFFE ID with a path, the leaf
rules (BasicConstraints CA=false; KeyUsage digitalSignature, no keyCertSign or
cRLSign), and a trust domain we accept. The chain itself is verified by the TLS
handshake against the trust bundles, and by ``bundles.check_issuer`` against
the peer's own domain's bundle.
"""

from __future__ import annotations

from cryptography import x509
from spiffe import SpiffeId
from spiffe.errors import PySpiffeError

from tachi.errors import PermissionDenied


def spiffe_id_of(der: bytes, trust_domains: frozenset[str]) -> SpiffeId:
    """The SPIFFE ID of a verified peer leaf certificate (DER).

    Raises ``PermissionDenied`` with one line saying which rule it breaks.
    """
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise PermissionDenied(f"not an X.509-SVID: {len(uris)} URI SANs (exactly one is required)")
    try:
        spiffe_id = SpiffeId(uris[0])
    except (PySpiffeError, ValueError) as exc:
        raise PermissionDenied(f"not an X.509-SVID: {exc}") from None
    if not spiffe_id.path:
        raise PermissionDenied(
            f"not an X.509-SVID: {spiffe_id} names a trust domain, not a workload"
        )
    _check_leaf(cert)

    if str(spiffe_id.trust_domain) not in trust_domains:
        raise PermissionDenied(f"SPIFFE ID {spiffe_id} is from an untrusted trust domain")
    return spiffe_id


def _check_leaf(cert: x509.Certificate) -> None:
    """The leaf rules of the X.509-SVID spec, as the spiffe library applies
    them to our own SVID: BasicConstraints with CA=false, KeyUsage with
    digitalSignature and neither keyCertSign nor cRLSign. A leaf with no
    BasicConstraints is not "not a CA": it may still sign certificates."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise PermissionDenied("not an X.509-SVID: the leaf has no BasicConstraints") from None
    if constraints.ca:
        raise PermissionDenied("not an X.509-SVID: the leaf certificate is a CA")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise PermissionDenied("not an X.509-SVID: the leaf has no KeyUsage") from None
    if not usage.digital_signature:
        raise PermissionDenied("not an X.509-SVID: the leaf's KeyUsage lacks digitalSignature")
    if usage.key_cert_sign or usage.crl_sign:
        raise PermissionDenied("not an X.509-SVID: the leaf may sign certificates or CRLs")


def matches(pattern: str, spiffe_id: str) -> bool:
    """An exact SPIFFE ID, or a path prefix ending in ``/*``."""
    if pattern.endswith("/*"):
        return spiffe_id.startswith(pattern[:-1])
    return spiffe_id == pattern
