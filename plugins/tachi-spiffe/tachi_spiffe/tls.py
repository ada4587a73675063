"""TLS contexts from SVID and bundle files, re-read when the files change.

SVIDs are short-lived: a SPIRE agent (or spiffe-helper) rewrites the files
every few minutes. The daemon's context reloads its certificate chain in
place, so new handshakes use the new SVID without a restart; added trust
bundle CAs take effect the same way (a CA removed from the bundle stays
trusted until the daemon restarts: OpenSSL cannot drop one from a context).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import X509Svid
from spiffe.errors import PySpiffeError

from tachi.errors import InvalidRequest
from tachi_spiffe import bundles
from tachi_spiffe.settings import Settings

log = logging.getLogger("tachi.spiffe")
RELOAD_SECONDS = 1.0


def check_files(settings: Settings) -> dict[str, tuple[x509.Certificate, ...]]:
    """Validate our SVID (leaf rules, key match) with the spiffe library, and
    read each trust domain's CAs. Raises ``InvalidRequest`` naming the file."""
    try:
        X509Svid.load(settings.svid_cert, settings.svid_key, Encoding.PEM)
    except (PySpiffeError, OSError, ValueError) as exc:
        raise InvalidRequest(f"identity.spiffe: SVID {settings.svid_cert}: {exc}") from None
    return bundles.load(settings.trust_domains, settings.trust_bundles, settings.trust_bundle)


def _stamp(paths: list[Path]) -> tuple[float, ...]:
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


class ServerContext:
    """The listener's context: our SVID, clients verified against the bundle."""

    def __init__(self, settings: Settings) -> None:
        check_files(settings)
        self.settings = settings
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.verify_mode = (
            ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
        )
        self._paths = [settings.svid_cert, settings.svid_key, *settings.bundle_files()]
        self._stamp: tuple[float, ...] = ()
        #: Each trust domain's CAs, for ``bundles.check_issuer`` (a CA removed
        #: from a file stops counting at the next reload, unlike OpenSSL's store).
        self.bundles: dict[str, tuple[x509.Certificate, ...]] = {}
        self.reload()

    def reload(self) -> bool:
        """Re-read the files if they changed; returns whether it did."""
        stamp = _stamp(self._paths)
        if stamp == self._stamp:
            return False
        try:
            loaded = check_files(self.settings)
            self.context.load_cert_chain(self.settings.svid_cert, self.settings.svid_key)
            for path in self.settings.bundle_files():
                if path.stat().st_size:  # a domain the Workload API has no bundle for yet
                    self.context.load_verify_locations(path)
        except (InvalidRequest, OSError, ssl.SSLError) as exc:
            if not self._stamp:
                raise InvalidRequest(f"identity.spiffe: {exc}") from None
            # Half-written files during a rotation: keep the last good SVID.
            log.warning("keeping the previous SVID: %s", exc)
            return False
        if self._stamp:
            log.info("reloaded the SVID and trust bundle")
        self.bundles = loaded
        self._stamp = stamp
        return True

    def watch(self) -> None:
        """Check the files every second for as long as the event loop runs."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.reload()
            loop.call_later(RELOAD_SECONDS, tick)

        loop.call_later(RELOAD_SECONDS, tick)


def client_context(svid_cert: str, svid_key: str, trust_bundle: str) -> ssl.SSLContext:
    """Present our SVID and verify the daemon's chain against the bundle; its
    identity is its SPIFFE ID (checked after the handshake), not a host name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(svid_cert, svid_key)
        ctx.load_verify_locations(trust_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidRequest(f"cannot load the SVID or trust bundle: {exc}") from None
    return ctx
