"""tachi-acme: a token scheme of its own (``acme-…`` tokens name acme users)."""

from __future__ import annotations

import hmac

import tachi
from tachi.core.principal import Principal
from tachi.errors import PermissionDenied

KEYS = {"acme-7f3a9c": "alice"}  # in real life: ask your identity service


@tachi.hookimpl
def tachi_authenticate(peer):
    token = peer.token or ""
    if not token.startswith("acme-"):
        return None  # not ours: tachi's own tokens, other schemes, no token
    for key, user in KEYS.items():
        if hmac.compare_digest(token, key):
            return Principal(user=user, uid=None, source=peer.source, kind="acme")
    raise PermissionDenied("unknown acme token")


@tachi.hookimpl
def tachi_authorize(principal, action, session):
    if principal.kind == "acme" and action in ("session.create", "daemon.status"):
        return True
    return None
