"""What a transport knows about the other end of a new connection.

A transport fills in what it has seen (the kernel's peer credentials, a TLS
client certificate its handshake verified, an SSH key, the remote address, a
token the peer presented) and hands the ``Peer`` to the daemon, which asks the
``tachi_authenticate`` hooks who it is. Nothing here has been trusted yet
except where a field says the transport verified it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(slots=True, frozen=True)
class Peer:
    """A connecting peer, as seen by the transport it came in on.

    - ``transport``: the transport's name (``unix``, ``websocket``, ``ssh``).
    - ``address`` / ``port``: the remote IP address (no brackets) and port of a
      network peer; ``None`` for local transports.
    - ``uid`` / ``pid``: from the Unix socket's ``SO_PEERCRED`` (kernel-verified).
    - ``tls_chain``: DER certificates the peer presented, leaf first, which the
      TLS handshake has already verified against the configured trust bundle;
      empty when the peer presented none.
    - ``ssh_key``: the OpenSSH public key line the peer proved it holds, and
      ``ssh_principals``: the names the SSH layer vouches for (an
      ``authorized_keys`` option or a certificate signed by a trusted CA).
    - ``username``: the name the peer asked for (an SSH user name); a claim only.
    - ``token``: a share token the peer presented (in the protocol's hello, or
      as an SSH password); checked by the built-in token authenticator.
    - ``extra``: anything else a transport wants a plugin to see.
    """

    transport: str
    address: str | None = None
    port: int | None = None
    uid: int | None = None
    pid: int | None = None
    tls_chain: tuple[bytes, ...] = ()
    ssh_key: str | None = None
    ssh_principals: tuple[str, ...] = ()
    username: str | None = None
    token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """Where the connection came from, as audit records name it."""
        if self.address is not None:
            host = f"[{self.address}]" if ":" in self.address else self.address
            return f"{self.transport}:{host}" + (f":{self.port}" if self.port else "")
        if self.uid is not None:
            return f"uid:{self.uid}" + (f",pid:{self.pid}" if self.pid else "")
        return self.transport

    def with_token(self, token: str | None) -> Peer:
        return replace(self, token=token)
