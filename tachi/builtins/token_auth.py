"""The built-in share-token authenticator.

It wraps every other ``tachi_authenticate`` implementation: they say who the
peer is (a local user, a SPIFFE ID, an SSH principal, or nobody), then a token
the peer presented narrows that identity to the grant's role on the grant's
session. A grant bound to an identity (``--user alice``, ``--spiffe-id …``)
only works for a peer that proved that identity, on any transport.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from tachi.hookspecs import hookimpl

if TYPE_CHECKING:
    from tachi.core.peer import Peer
    from tachi.core.principal import Principal
    from tachi.daemon.server import Daemon


class TokenAuthenticator:
    """Registered by the daemon (it needs the daemon's grant store)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    @hookimpl(wrapper=True, tryfirst=True)
    def tachi_authenticate(self, peer: Peer) -> Generator[Any, Any, Principal | None]:
        identity: Principal | None = yield
        if peer.token is None:
            return identity
        return self._daemon.principal_for_token(peer.token, identity, peer)
