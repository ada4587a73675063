"""SPIFFE X.509-SVIDs across the NATS relay, where there is no end-to-end TLS.

Each side proves its SVID by signing the connection's *binding* with the SVID's
key: a hash of the handshake transcript (both ephemeral X25519 keys, the
daemon's transport key, the connection id the daemon chose) followed by a
value only the two ends can derive from the key exchange
(``transport.SessionKeys.binding``). A signature therefore holds for one
virtual connection only: a relay that kept one (or sat in the middle of an
unpinned first connection) cannot use it on another, where the binding
differs. The role (``client`` / ``daemon``) is signed too, so one side's proof
is never the other's.

- The daemon proves its SVID in the connect reply when the client asks
  (``--server-id``), sealed with the daemon-to-client key; the client checks
  the chain against the bundle of the ID's own trust domain (``--trust-bundle``)
  and the ID against ``--server-id`` before it sends anything.
- The client proves its SVID (``--svid-cert``/``--svid-key``) in the first
  message of the connection (kind PROOF, sealed); the daemon checks it with
  tachi-spiffe's rules and bundles (``[identity.spiffe]``), answers with a
  PROOF (accepted, or why not: audited, then the connection ends), and hands
  the verified chain to the core as ``Peer.tls_chain``, where tachi-spiffe's
  ``tachi_authenticate`` makes the same ``spiffe`` principal as over mutual TLS.

tachi-spiffe is optional: without it, an SVID proof is refused with a reason.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tachi.errors import InvalidRequest, PermissionDenied

if TYPE_CHECKING:
    from tachi.daemon.server import Daemon

#: What a proof signs: this label, the role, then the connection's binding.
LABEL = b"tachi-nats-svid-proof-v1\0"
CLIENT, DAEMON = "client", "daemon"
NOT_INSTALLED = "cannot check SPIFFE SVIDs through NATS: the tachi-spiffe plugin is not installed"


def message(role: str, binding: bytes) -> bytes:
    """The bytes a ``role`` signs to prove its SVID on the connection whose
    binding is ``binding``."""
    return LABEL + role.encode() + b"\0" + binding


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode(chain: tuple[bytes, ...], signature: bytes) -> bytes:
    """A proof's JSON body."""
    return json.dumps({"chain": [_b64(c) for c in chain], "sig": _b64(signature)}).encode()


def decode(body: bytes) -> tuple[tuple[bytes, ...], bytes]:
    """(chain, signature) of a proof's body. Raises ``PermissionDenied`` for a
    malformed one."""
    try:
        doc = json.loads(body)
        chain = tuple(base64.b64decode(c, validate=True) for c in doc["chain"])
        signature = base64.b64decode(doc["sig"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise PermissionDenied("a malformed SVID proof") from None
    if not chain:
        raise PermissionDenied("an SVID proof without a certificate")
    return chain, signature


def prove(cert: Path | str, key: Path | str, role: str, binding: bytes) -> bytes:
    """The proof body for the SVID in ``cert``/``key``, as ``role``. Raises
    ``InvalidRequest`` for unreadable files or tachi-spiffe missing."""
    try:
        from tachi_spiffe import proof
    except ImportError:
        raise InvalidRequest(NOT_INSTALLED) from None
    chain, private = proof.load_svid(cert, key)
    return encode(chain, proof.sign(private, message(role, binding)))


class DaemonIdentity:
    """The daemon's side: its SVID and trust bundles from tachi-spiffe
    (``[identity.spiffe]``), or the reason it has none (then an SVID proof is
    refused with that reason, and ``--server-id`` clients refuse the daemon)."""

    def __init__(self, server: Any = None, unavailable: str | None = None) -> None:
        self._server = server
        self.unavailable = unavailable

    @classmethod
    def of(cls, daemon: Daemon) -> DaemonIdentity:
        """What this daemon can do with SVIDs: tachi-spiffe installed, loaded
        (its ``tachi_authenticate`` makes the principal) and configured. Call on
        the daemon's loop (the bundles are re-read every second there)."""
        # Only a loaded plugin is asked: importing tachi-spiffe where it is not
        # loaded would pull in its Workload API client (grpc: ~18 MiB of RSS).
        tachi_spiffe = sys.modules.get("tachi_spiffe")
        if tachi_spiffe is None or not daemon.hooks.pm.is_registered(tachi_spiffe):
            if importlib.util.find_spec("tachi_spiffe") is None:
                return cls(unavailable=NOT_INSTALLED)
            return cls(
                unavailable="cannot check SPIFFE SVIDs through NATS: the tachi-spiffe plugin"
                " is not loaded in this daemon"
            )
        try:
            server = tachi_spiffe.server_identity(daemon.config)
        except InvalidRequest as exc:
            return cls(unavailable=f"cannot check SPIFFE SVIDs: {exc.message}")
        if server is None:
            return cls(unavailable="this daemon has no [identity.spiffe] to check an SVID against")
        return cls(server)

    def prove(self, binding: bytes) -> bytes | None:
        """The daemon's proof for a connection (``None`` without an SVID). The
        files are read each time: SVIDs rotate."""
        if self._server is None:
            return None
        settings = self._server.settings
        return prove(settings.svid_cert, settings.svid_key, DAEMON, binding)

    def verify(self, body: bytes, binding: bytes) -> tuple[str, tuple[bytes, ...]]:
        """(SPIFFE ID, chain) the client's proof ``body`` proves on the connection
        with ``binding``. Raises ``PermissionDenied`` saying why not."""
        if self._server is None:
            raise PermissionDenied(self.unavailable or NOT_INSTALLED)
        from tachi_spiffe import proof

        chain, signature = decode(body)
        spiffe_id = proof.verify(
            chain,
            signature,
            message(CLIENT, binding),
            self._server.settings.trust_domains,
            self._server.bundles,
        )
        return str(spiffe_id), chain


def check_daemon(body: bytes | None, binding: bytes, server_id: str, trust_bundle: str) -> str:
    """The client's check of the daemon's proof: its SVID is ``server_id``, chains
    to a CA of that ID's trust domain in ``trust_bundle``, and signed this
    connection's binding. Returns the ID; raises ``PermissionDenied``."""
    if body is None:
        raise PermissionDenied(
            f"the daemon proved no SPIFFE ID (it has no SVID), not {server_id} (--server-id)"
        )
    try:
        from spiffe import SpiffeId
        from tachi_spiffe import bundles, proof
    except ImportError:
        raise PermissionDenied(NOT_INSTALLED) from None
    try:
        domain = str(SpiffeId(server_id).trust_domain)
    except Exception as exc:  # the spiffe library's own error types
        raise InvalidRequest(f"--server-id {server_id!r}: {exc}") from None
    try:
        anchors = bundles.load([domain], {}, Path(trust_bundle))
    except InvalidRequest as exc:
        raise InvalidRequest(f"--trust-bundle: {exc.message}") from None
    chain, signature = decode(body)
    got = str(
        proof.verify(chain, signature, message(DAEMON, binding), frozenset({domain}), anchors)
    )
    if got != server_id:
        raise PermissionDenied(f"the daemon is {got}, not {server_id} (--server-id)")
    return got
