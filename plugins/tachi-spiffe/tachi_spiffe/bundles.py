"""Per-trust-domain bundles, and the check that a peer's SVID chains to its own.

SPIFFE federation keeps one bundle per trust domain: an SVID for
``spiffe://example.org/…`` is valid only if it chains to a CA of
``example.org``'s bundle. One OpenSSL context cannot do that (it trusts the
union of all CAs it was given), so the TLS handshake checks the chain against
every configured CA, and :func:`check_issuer` then requires that the path ends
at a CA of the peer's own trust domain: otherwise partner.org's CA could mint
``spiffe://example.org/ci/builder``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from tachi.errors import InvalidRequest, PermissionDenied

Bundles = Mapping[str, tuple[x509.Certificate, ...]]


def read_certificates(path: Path) -> list[x509.Certificate]:
    """The PEM certificates in ``path``. Raises ``InvalidRequest`` naming it."""
    try:
        data = path.read_bytes()
        # Empty: a domain the Workload API has sent no bundle for (yet).
        return x509.load_pem_x509_certificates(data) if data.strip() else []
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"identity.spiffe: trust bundle {path}: {exc}") from None


def domain_of(ca: x509.Certificate) -> str | None:
    """The trust domain a CA speaks for, from its ``spiffe://DOMAIN`` URI SAN
    (SPIFFE signing certificates carry one), or ``None``."""
    try:
        sans = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://") :].split("/", 1)[0] or None
    return None


def load(
    trust_domains: Iterable[str], per_domain: Mapping[str, Path], shared: Path | None
) -> dict[str, tuple[x509.Certificate, ...]]:
    """Each trust domain's CAs: from its own file (``trust_bundles``), and from
    the one ``trust_bundle`` file, where a CA belongs to the domain its
    ``spiffe://DOMAIN`` URI SAN names, or to the only domain without a file of
    its own. Raises ``InvalidRequest`` for a CA whose domain cannot be told."""
    out: dict[str, list[x509.Certificate]] = {}
    for domain, path in per_domain.items():
        out.setdefault(domain, []).extend(read_certificates(path))
    if shared is not None:
        rest = [d for d in trust_domains if d not in per_domain]
        for ca in read_certificates(shared):
            domain = domain_of(ca)
            if domain is None:
                if len(rest) != 1:
                    raise InvalidRequest(
                        f"identity.spiffe: trust bundle {shared}: CA"
                        f" {ca.subject.rfc4514_string()} names no trust domain (no"
                        " spiffe://DOMAIN URI SAN); with several trust domains give each"
                        " its own file in [identity.spiffe.trust_bundles]"
                    )
                domain = rest[0]
            out.setdefault(domain, []).append(ca)
    return {domain: tuple(cas) for domain, cas in out.items()}


def is_ca(cert: x509.Certificate) -> bool:
    """A certificate that may sign others: CA=true and, if it says, keyCertSign."""
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_time(cert: x509.Certificate, at: datetime.datetime | None) -> None:
    if at is not None and not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise PermissionDenied(
            f"certificate {cert.subject.rfc4514_string()} is not valid now (valid"
            f" {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to"
            f" {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )


def check_issuer(
    chain: Sequence[bytes], domain: str, bundles: Bundles, at: datetime.datetime | None = None
) -> None:
    """Require that the peer's chain (DER, leaf first; the handshake verified
    it) leads to a CA in ``domain``'s own bundle, through the intermediates
    the peer presented. Raises ``PermissionDenied`` saying whose CA signed it.

    With ``at`` (where no TLS handshake checked the chain: a proof through a
    relay), every certificate on the path, the anchor included, must also be
    valid at that time."""
    certs = [x509.load_der_x509_certificate(der) for der in chain]
    anchors = bundles.get(domain, ())
    current = certs[0]
    for _ in range(len(certs)):  # bounded: each step moves one link up the chain
        _check_time(current, at)
        anchor = next((ca for ca in anchors if _issued_by(current, ca)), None)
        if anchor is not None:
            _check_time(anchor, at)
            return
        parent = next(
            # Only a CA may be a link: a leaf of the right domain that "signed"
            # another certificate proves nothing.
            (c for c in certs[1:] if c is not current and is_ca(c) and _issued_by(current, c)),
            None,
        )
        if parent is None:
            break
        current = parent
    raise PermissionDenied(
        f"SVID for {domain} is not signed by a CA of {domain}'s trust bundle"
        f" (issuer: {current.issuer.rfc4514_string()})"
    )
