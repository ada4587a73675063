"""tachi-ssh: an SSH transport, so a plain OpenSSH client can use tachi sessions.

Enabled by ``[transports.ssh] listen = "HOST:PORT"`` in config.toml; see
``docs/ssh.md``. Registers the transport and the authenticator that turns an
SSH principal (vouched for by the transport's key or certificate check) into a
tachi ``Principal``.
"""

from __future__ import annotations

import os
from typing import Any

from tachi.core.peer import Peer
from tachi.core.principal import Principal, user_name
from tachi.hookspecs import hookimpl

#: The URLs ``tachi_connect`` opens: a client for others does not import this plugin.
URL_SCHEMES = ("ssh",)
#: What the warm CLI imports ahead of remote commands (``tachi.cli.warm_server``).
WARM_PRELOAD = ("tachi_ssh.client",)

__version__ = "0.1.0"

#: SSH principals that act as the daemon's own user (set when the transport starts).
_owner_principals: frozenset[str] = frozenset()


@hookimpl
def tachi_register_transports(register: Any, config: Any) -> None:
    """Register the SSH transport when ``[transports.ssh]`` names a ``listen`` address.

    Raises ``InvalidRequest`` naming the key for a bad setting."""
    global _owner_principals
    table = config.transport("ssh")
    if not table.get("listen"):
        return
    from tachi.paths import config_path
    from tachi_ssh import settings
    from tachi_ssh.server import SSHTransport

    s = settings.load(table, config.state_dir, config_path().parent)
    _owner_principals = frozenset(s.owner_principals)
    register(SSHTransport(s))


@hookimpl
def tachi_authenticate(peer: Peer) -> Principal | None:
    """An SSH principal proven by an authorized key or a CA-signed certificate.

    A principal listed in ``owner_principals`` (by default the daemon user's
    login name) is the daemon's own user; any other is a network identity
    that holds only what was shared with it (``tachi share --user NAME``).
    """
    if peer.transport != "ssh" or len(peer.ssh_principals) != 1:
        return None
    name = peer.ssh_principals[0]
    if name in _owner_principals:
        uid = os.getuid()
        return Principal(
            user=user_name(uid), uid=uid, source=peer.source, peer_ip=peer.address, kind="ssh"
        )
    return Principal(user=name, uid=None, source=peer.source, peer_ip=peer.address, kind="ssh")


@hookimpl
def tachi_connect(url: str, options: dict[str, Any]) -> Any:
    """Open ``ssh://[user@]host[:port]`` URLs (in the client process) with OpenSSH."""
    if url.split("://", 1)[0].lower() != "ssh":
        return None
    from tachi_ssh.client import open_connection

    return open_connection(url, options)
