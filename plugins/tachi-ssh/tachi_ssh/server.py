"""The SSH listener (asyncssh): its host key, settings and open connections.

Each accepted connection is an ``SSHLogin`` (``tachi_ssh.login``), which
authenticates it and owns its channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import asyncssh

from tachi.errors import TachiError
from tachi_ssh.keys import LoginKeys, fingerprint, load_or_create_host_key
from tachi_ssh.login import SSHLogin

if TYPE_CHECKING:
    from tachi.daemon.server import Daemon
    from tachi_ssh.settings import SSHSettings

log = logging.getLogger("tachi.ssh")


class SSHTransport:
    """``tachi_register_transports`` transport: an SSH server on ``settings.listen``."""

    name = "ssh"

    def __init__(self, settings: SSHSettings) -> None:
        self.settings = settings
        self.daemon: Daemon | None = None
        self.keys: LoginKeys | None = None
        self.host_key: asyncssh.SSHKey | None = None
        self.port = settings.port
        self.logins: set[SSHLogin] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None

    async def start(self, daemon: Daemon) -> None:
        """Listen. Raises ``TachiError`` naming what is wrong: the address is
        taken, or a key file cannot be read or is not a key."""
        self.daemon = daemon
        s = self.settings
        if not log.isEnabledFor(logging.DEBUG):
            # asyncssh logs every connection and channel at INFO: keep the daemon's log readable.
            logging.getLogger("asyncssh").setLevel(logging.WARNING)
        try:
            self.host_key = load_or_create_host_key(s.host_key)
        except (OSError, ValueError) as exc:  # KeyImportError is a ValueError
            raise TachiError(f"ssh: cannot use the host key {s.host_key}: {exc}") from None
        try:
            self.keys = LoginKeys(s.authorized_keys, s.ca_keys)
        except (OSError, ValueError) as exc:
            raise TachiError(f"ssh: cannot read ca_keys {s.ca_keys}: {exc}") from None
        try:
            self._acceptor = await asyncssh.create_server(
                lambda: SSHLogin(self),
                s.host,
                s.port,
                server_host_keys=[self.host_key],
                encoding=None,
                line_editor=False,
                keepalive_interval=s.keepalive_interval,
                keepalive_count_max=s.keepalive_count_max,
                login_timeout=s.login_timeout,
                agent_forwarding=False,
                x11_forwarding=False,
                allow_scp=False,
                server_version="tachi",
            )
        except OSError as exc:
            raise TachiError(f"ssh: cannot listen on {s.listen}: {exc.strerror or exc}") from None
        sockets = self._acceptor.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("ssh listening on %s:%d, host key %s", s.host, self.port, self.fingerprint)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.host_key) if self.host_key is not None else ""

    def describe(self) -> dict[str, Any]:
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        assert self.host_key is not None
        return {
            "url": f"ssh://{host}:{self.port}",
            "hostKey": self.fingerprint,
            "hostKeyFile": str(self.settings.host_key),
            "hostKeyLine": self.host_key.export_public_key().decode().strip(),
            "connections": sum(1 for login in self.logins if login.principal is not None),
        }

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
        for login in list(self.logins):
            login.end("the tachi daemon is stopping")
        for login in list(self.logins):
            await login.finished()
        if self._acceptor is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._acceptor.wait_closed(), 5.0)
