"""Who holds which role on a session: owner, collaborator or observer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tachi.errors import NotFound
from tachi.gotime import now_ns

if TYPE_CHECKING:
    from tachi.core.principal import Principal

ROLES = ("owner", "collaborator", "observer")
#: Actions each role may perform on a session it holds.
OBSERVER_ACTIONS = frozenset({"session.get", "session.read", "session.attach"})
COLLABORATOR_ACTIONS = OBSERVER_ACTIONS | {
    "session.write",
    "session.resize",
    "session.signal",
    "session.detach",
    "window.new",
    "window.select",
    "window.rename",
    "window.close",
}


class SessionAccess:
    """The owner of a session and a view of its grants.

    ``grants`` is the daemon's grant store (or ``None`` before sharing exists);
    a token principal holds exactly the role of its grant, on that session only.
    """

    def __init__(
        self, session_id: str, owner_uid: int | None, owner_user: str, grants: Any
    ) -> None:
        self.session_id = session_id
        self.owner_uid = owner_uid
        self.owner_user = owner_user
        self.grants = grants

    def role_of(self, principal: Principal) -> str | None:
        return self.role_and_end(principal)[0]

    def role_and_end(self, principal: Principal) -> tuple[str | None, int | None]:
        """The principal's role now (``None``: none) and when the grant that gives
        it ends (ns since the epoch; ``None``: never, or no grant behind it).

        Past that end the role must be asked for again: a weaker grant may still
        hold (a user with a collaborator and an observer grant), or nothing.
        """
        if principal.grant_id is not None:
            if principal.grant_session == "*":
                # A daemon token acts as the daemon's user: owner of what it owns.
                if principal.uid != self.owner_uid or self.grants is None:
                    return None, None
                return self._grant_role("*", principal.grant_id, "owner")
            if principal.grant_session != self.session_id or self.grants is None:
                return None, None
            # Checked live, so a revoked or expired token loses its rights at once
            # even on a connection opened before.
            return self._grant_role(self.session_id, principal.grant_id, None)
        if principal.uid is not None and principal.uid == self.owner_uid:
            return "owner", None
        if self.grants is not None:
            grant = self.grants.for_user(self.session_id, principal.user, kind=principal.kind)
            if grant is not None:
                return grant.role, grant.ends_at()
        return None, None

    def _grant_role(
        self, session_id: str, grant_id: str, role: str | None
    ) -> tuple[str | None, int | None]:
        try:
            grant = self.grants.get(session_id, grant_id)
        except NotFound:
            return None, None
        if not grant.active(now_ns()):
            return None, None
        return role or grant.role, grant.ends_at()
