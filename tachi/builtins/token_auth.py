"""The built-in share-token authenticator.

It wraps every other ``tachi_authenticate`` implementation: they say who the
peer is (a local user, a SPIFFE ID, an SSH principal, or nobody), then a token
the peer presented narrows that identity to the grant's role on the grant's
session. A grant bound to an identity (``--user alice``, ``--spiffe-id …``)
only works for a peer that proved that identity, on any transport.

It answers only for tokens of tachi's own form (``tachi_`` and 43 characters):
any other token is another scheme's, which a plugin's ``tachi_authenticate``
reads from ``peer.token`` and answers for. Such a token that no plugin
accepted (the peer is nobody, or only its Unix credentials) is refused rather
than ignored.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from tachi.errors import PermissionDenied
from tachi.grants import TOKEN_PREFIX
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
        if not is_grant_token(peer.token):
            # Another scheme's token (a plugin's own): the plugin that understood
            # it answered, or nobody did, and then the token must not be ignored.
            if identity is None or _from_kernel(identity, peer):
                reason = (
                    "token not accepted: not a tachi token (tachi_...), and no plugin accepted it"
                )
                self._daemon.audit_refusal(peer, "auth.token", reason)
                raise PermissionDenied(reason)
            return identity
        return self._daemon.principal_for_token(peer.token, identity, peer)


def is_grant_token(token: str) -> bool:
    """Whether ``token`` has the form of a tachi grant's token (``tachi_`` and more)."""
    return token.startswith(TOKEN_PREFIX) and len(token) > len(TOKEN_PREFIX)


def _from_kernel(identity: Principal, peer: Peer) -> bool:
    """Whether ``identity`` is only the peer's kernel credentials (the Unix socket's
    answer), i.e. no plugin made anything of the token."""
    return identity.kind == "unix" and identity.uid is not None and identity.uid == peer.uid
