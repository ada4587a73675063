"""The SVID and bundle from a SPIRE agent's Workload API (``workload_api``).

The ``spiffe`` library's ``X509Source`` keeps the SVID and bundles current in
the background (the agent pushes rotations). They are written to files in the
state directory (key 0600), which the listener's context re-reads when they
change, the same path as file-based configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import X509Source
from spiffe.errors import PySpiffeError

from tachi.errors import InvalidRequest

log = logging.getLogger("tachi.spiffe")
SYNC_SECONDS = 1.0


class WorkloadFiles:
    """Mirror the Workload API's default SVID, and each trust domain's bundle, into files."""

    def __init__(self, socket: str, directory: Path, domains: frozenset[str]) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.domains = domains
        self.cert = directory / "svid.pem"
        self.key = directory / "svid_key.pem"
        try:
            self.source = X509Source(socket_path=socket, timeout_in_seconds=10)
        except (PySpiffeError, ValueError) as exc:
            raise InvalidRequest(f"identity.spiffe.workload_api {socket}: {exc}") from None
        self._serial: int | None = None
        self.sync()

    def bundle_for(self, domain: str) -> Path:
        """The file holding ``domain``'s CAs (empty until the agent sends them)."""
        return self.directory / f"bundle-{domain}.pem"

    def sync(self) -> bool:
        """Write the current SVID and bundles if the SVID changed; returns whether."""
        context = self.source.get_x509_context()
        svid = context.default_svid
        if svid.leaf.serial_number == self._serial:
            return False
        # One file per trust domain: a peer's SVID must chain to its own
        # domain's CAs (bundles.check_issuer), as SPIFFE federation says.
        by_domain = {
            str(bundle.trust_domain): b"".join(
                authority.public_bytes(Encoding.PEM) for authority in bundle.x509_authorities
            )
            for bundle in context.x509_bundle_set.bundles
        }
        for domain in self.domains:
            path = self.bundle_for(domain)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(by_domain.get(domain, b""))
            os.replace(tmp, path)
        # Key first, then the certificate: a reader never pairs a new certificate
        # with the old key.
        svid.save(self.cert.with_suffix(".new"), self.key, Encoding.PEM)
        os.replace(self.cert.with_suffix(".new"), self.cert)
        self._serial = svid.leaf.serial_number
        log.info("SVID %s from the Workload API", svid.spiffe_id)
        return True

    def watch(self) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            try:
                self.sync()
            except (PySpiffeError, OSError) as exc:
                log.warning("Workload API: %s (keeping the current SVID)", exc)
            loop.call_later(SYNC_SECONDS, tick)

        loop.call_later(SYNC_SECONDS, tick)
