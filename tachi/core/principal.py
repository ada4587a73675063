"""Who is asking: a local user, a network identity, or a token holder."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from typing import Any

#: Kinds of principal the built-ins produce; plugins may add their own.
KINDS = ("unix", "token", "spiffe", "ssh")


@dataclass(slots=True, frozen=True)
class Principal:
    """An authenticated caller.

    - ``kind``: how it was authenticated (``unix``, ``token``, ``spiffe``, ``ssh``,
      or a plugin's own kind).
    - ``user``: its stable name: the local login name, the SPIFFE ID, the SSH
      principal, or ``token:<grant id>`` for a bearer token with no identity.
    - ``uid``: the local user id, set only for local users (peer credentials),
      never for network identities.
    - ``source``: where the request came from (``uid:1000,pid:42``,
      ``websocket:127.0.0.2:50122``).
    - ``spiffe_id``: the SPIFFE ID proven by an X.509-SVID, if any.
    - ``grant_*``: set when a share token authenticated it.
    - ``peer_ip``: the remote address of a network peer.
    """

    user: str
    uid: int | None
    source: str
    grant_id: str | None = None
    grant_session: str | None = None
    grant_role: str | None = None
    peer_ip: str | None = None
    kind: str = "unix"
    spiffe_id: str | None = None

    @classmethod
    def local(cls, uid: int, pid: int | None = None) -> Principal:
        return cls(
            user=user_name(uid), uid=uid, source=f"uid:{uid}" + (f",pid:{pid}" if pid else "")
        )

    @property
    def is_local_owner(self) -> bool:
        """The daemon's own user, proven by the kernel (peer credentials on the
        Unix socket), with no token: not an SSH or SPIFFE principal that *acts
        as* the daemon's user, whose key or certificate may be taken away."""
        return self.kind == "unix" and self.grant_id is None and self.uid == os.getuid()

    @property
    def identity(self) -> tuple[str, str]:
        """What makes two principals the same owner: the uid for local users, the
        kind and name otherwise (so a SPIFFE ID never matches a login name)."""
        if self.uid is not None:
            return ("uid", str(self.uid))
        return (self.kind, self.user)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "user": self.user,
            "uid": self.uid,
            "source": self.source,
            "grant": self.grant_id,
        }
        if self.spiffe_id:
            out["spiffeId"] = self.spiffe_id
        return out


def user_name(uid: int) -> str:
    """The login name for ``uid``, or the number as text if it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
