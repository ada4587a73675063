"""tachi-spiffe: SPIFFE X.509-SVID identities over mutual TLS (``docs/identities.md``).

Daemon side: ``tachi_server_tls`` gives network listeners our SVID and client
verification; ``tachi_authenticate`` turns a verified client SVID into a
``spiffe`` principal; ``tachi_authorize`` applies ``[identity.spiffe] roles``.
Client side: ``tachi_client_tls`` presents an SVID and ``tachi_verify_server``
checks the daemon's SPIFFE ID (``--server-id``).
"""

from __future__ import annotations

import os
from typing import Any

from tachi.core.access import COLLABORATOR_ACTIONS, OBSERVER_ACTIONS
from tachi.core.peer import Peer
from tachi.core.principal import Principal
from tachi.errors import PermissionDenied
from tachi.hookspecs import hookimpl
from tachi_spiffe import settings as settings_mod
from tachi_spiffe.bundles import check_issuer
from tachi_spiffe.svid import matches, spiffe_id_of

__version__ = "0.1.0"


class _State:
    settings: settings_mod.Settings | None = None
    #: The listener's context, with each trust domain's CAs (``bundles``).
    server: Any = None


_state = _State()


def _settings(config: Any) -> settings_mod.Settings | None:
    if _state.settings is None:
        _state.settings = settings_mod.load(config.raw)
    return _state.settings


def role_for(spiffe_id: str, s: settings_mod.Settings) -> str | None:
    """The strongest role the config gives this SPIFFE ID, or ``None``."""
    roles = [r.role for r in s.roles if matches(r.pattern, spiffe_id)]
    for role in settings_mod.ROLES:
        if role in roles:
            return role
    return None


@hookimpl
def tachi_server_tls(transport: str, config: Any) -> Any:
    server = _make_server(config)
    return None if server is None else server.context


def server_identity(config: Any) -> Any:
    """The daemon's SPIFFE identity for a transport without TLS (the NATS relay):
    the ``tls.ServerContext`` that a TLS listener uses (its ``settings`` name our
    SVID's files, its ``bundles`` each trust domain's CAs, re-read when they
    change), made now if no listener made it; ``None`` without
    ``[identity.spiffe]``. It also makes ``tachi_authenticate`` accept the
    chains such a transport puts in ``Peer.tls_chain`` once it verified them.
    Call it on the daemon's event loop. Raises ``InvalidRequest`` for bad files."""
    if _state.server is None:
        _make_server(config)
    return _state.server


def _make_server(config: Any) -> Any:
    s = _settings(config)
    if s is None:
        return None
    from tachi_spiffe.tls import ServerContext

    if s.workload_api:
        from dataclasses import replace

        from tachi_spiffe.workload import WorkloadFiles

        files = WorkloadFiles(s.workload_api, config.state_dir / "spiffe", s.trust_domains)
        files.watch()
        s = _state.settings = replace(
            s,
            svid_cert=files.cert,
            svid_key=files.key,
            trust_bundle=None,
            trust_bundles={d: files.bundle_for(d) for d in s.trust_domains},
        )
    server = _state.server = ServerContext(s)
    server.watch()
    return server


@hookimpl
def tachi_authenticate(peer: Peer) -> Principal | None:
    """A peer whose TLS client certificate is a valid SVID of a trusted domain."""
    s = _state.settings
    if s is None or not peer.tls_chain:
        return None
    parsed = spiffe_id_of(peer.tls_chain[0], s.trust_domains)
    if _state.server is not None:
        # The handshake trusted every configured CA; the SVID must chain to
        # its own trust domain's (SPIFFE federation: one bundle per domain).
        check_issuer(peer.tls_chain, str(parsed.trust_domain), _state.server.bundles)
    spiffe_id = str(parsed)
    owner = role_for(spiffe_id, s) == "owner"
    return Principal(
        user=spiffe_id,
        # The owner role acts as the daemon's own user (it may create sessions).
        uid=os.getuid() if owner else None,
        source=peer.source,
        peer_ip=peer.address,
        kind="spiffe",
        spiffe_id=spiffe_id,
    )


@hookimpl
def tachi_authorize(principal: Any, action: str, session: Any) -> bool | None:
    """Roles from config for SPIFFE principals, on every session."""
    s = _state.settings
    if s is None or principal.kind != "spiffe" or principal.spiffe_id is None or session is None:
        return None
    role = role_for(principal.spiffe_id, s)
    if role == "collaborator":
        return True if action in COLLABORATOR_ACTIONS else None
    if role == "observer":
        return True if action in OBSERVER_ACTIONS else None
    return None


@hookimpl
def tachi_client_tls(url: str, options: dict[str, Any]) -> Any:
    if not options.get("svid_cert"):
        return None
    from tachi_spiffe.tls import client_context

    missing = [k for k in ("svid_key", "trust_bundle") if not options.get(k)]
    if missing:
        raise PermissionDenied(
            f"--svid-cert needs {' and '.join('--' + m.replace('_', '-') for m in missing)}"
        )
    return client_context(options["svid_cert"], options["svid_key"], options["trust_bundle"])


@hookimpl
def tachi_verify_server(url: str, options: dict[str, Any], certificate: bytes) -> None:
    want = options.get("server_id")
    if not want:
        return
    from spiffe import SpiffeId

    domain = str(SpiffeId(want).trust_domain)
    got = str(spiffe_id_of(certificate, frozenset({domain})))
    if got != want:
        raise PermissionDenied(f"the daemon at {url} is {got}, not {want} (--server-id)")
