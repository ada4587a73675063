"""Who is asking: a local user (from the socket's peer credentials) or a token holder."""

from __future__ import annotations

import pwd
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class Principal:
    """An authenticated caller.

    ``user`` is the local user name, or ``token:<grant id>`` for a bearer token
    with no user; ``source`` is where the request came from (``uid:1000``,
    ``ip:203.0.113.5``); ``grant_id`` is set when a token authenticated it.
    """

    user: str
    uid: int | None
    source: str
    grant_id: str | None = None
    grant_session: str | None = None
    grant_role: str | None = None
    peer_ip: str | None = None

    @classmethod
    def local(cls, uid: int, pid: int | None = None) -> Principal:
        return cls(
            user=user_name(uid), uid=uid, source=f"uid:{uid}" + (f",pid:{pid}" if pid else "")
        )

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "uid": self.uid, "source": self.source, "grant": self.grant_id}


def user_name(uid: int) -> str:
    """The login name for ``uid``, or the number as text if it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
