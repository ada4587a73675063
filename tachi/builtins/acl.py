"""The built-in authorisation policy: per-session roles, and the daemon's owner.

Daemon-level actions (``session.create``, ``session.list``, ``daemon.*``,
``audit.*``) belong to the user the daemon runs as. On a session, the owner may
do everything; collaborators read and write; observers only read. Everyone else
gets no answer from this policy, which means denied unless a plugin allows.
"""

from __future__ import annotations

import os
from typing import Any

from tachi.core.access import COLLABORATOR_ACTIONS, OBSERVER_ACTIONS
from tachi.core.principal import Principal
from tachi.hookspecs import hookimpl
from tachi.models import Session


def role_on(principal: Principal, session: Any) -> str | None:
    """The principal's role on a live session or a closed session's record."""
    if isinstance(session, Session):
        # Owners are local users (live sessions compare the uid): a network
        # identity that merely shares the owner's name (an SSH principal
        # "root", say) owns nothing.
        if (
            (principal.grant_id is None or principal.grant_session == "*")
            and principal.uid is not None
            and principal.user == session.userId
        ):
            return "owner"
        return None
    return session.access.role_of(principal)


#: What the daemon's own user may do to any session, even one handed to someone else.
DAEMON_OWNER_ON_ANY_SESSION = frozenset({"session.close", "session.get"})


@hookimpl
def tachi_authorize(principal: Principal, action: str, session: Any) -> bool | None:
    # A daemon token (``tachi token create``) is the daemon's user too; the daemon
    # has checked that its grant is live before asking.
    is_daemon_owner = principal.uid == os.getuid() and (
        principal.grant_id is None or principal.grant_session == "*"
    )
    if session is None:
        return True if is_daemon_owner else None
    if is_daemon_owner and action in DAEMON_OWNER_ON_ANY_SESSION:
        # Every process runs as the daemon's user, whoever owns the session now:
        # that user can always end what runs under its name.
        return True
    role = role_on(principal, session)
    if role == "owner":
        return True
    if role == "collaborator":
        return True if action in COLLABORATOR_ACTIONS else None
    if role == "observer":
        return True if action in OBSERVER_ACTIONS else None
    return None
