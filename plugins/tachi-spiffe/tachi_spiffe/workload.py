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
    """Mirror the Workload API's default SVID and bundles into three files."""

    def __init__(self, socket: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.cert = directory / "svid.pem"
        self.key = directory / "svid_key.pem"
        self.bundle = directory / "bundle.pem"
        try:
            self.source = X509Source(socket_path=socket, timeout_in_seconds=10)
        except (PySpiffeError, ValueError) as exc:
            raise InvalidRequest(f"identity.spiffe.workload_api {socket}: {exc}") from None
        self._serial: int | None = None
        self.sync()

    def sync(self) -> bool:
        """Write the current SVID and bundles if the SVID changed; returns whether."""
        context = self.source.get_x509_context()
        svid = context.default_svid
        if svid.leaf.serial_number == self._serial:
            return False
        pem = b"".join(
            authority.public_bytes(Encoding.PEM)
            for bundle in context.x509_bundle_set.bundles
            for authority in bundle.x509_authorities
        )
        tmp = self.bundle.with_suffix(".tmp")
        tmp.write_bytes(pem)
        os.replace(tmp, self.bundle)
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
