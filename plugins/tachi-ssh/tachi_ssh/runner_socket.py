"""The private socket a channel's CLI process reaches the daemon through."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from typing import TYPE_CHECKING

from tachi import protocol
from tachi.builtins.unix_socket import StreamWire, socket_peer

if TYPE_CHECKING:
    from tachi_ssh.login import SSHLogin

_ids = itertools.count(1)


class RunnerSocket:
    """A private listener that serves every connection as one SSH principal.

    Only the runner process (checked by ``SO_PEERCRED``) may connect.
    """

    def __init__(self, login: SSHLogin) -> None:
        self.login = login
        directory = login.daemon.config.socket.parent
        self.path = directory / f"ssh-{os.getpid()}-{next(_ids)}.sock"
        self.runner_pid: int | None = None
        self._server: asyncio.AbstractServer | None = None

    async def open(self) -> None:
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = socket_peer(writer.get_extra_info("socket"))
        if peer.uid != os.getuid() or peer.pid != self.runner_pid:
            writer.close()
            return
        principal = self.login.principal
        assert principal is not None
        # A runner killed with output unread (hang-up, daemon stop) resets the
        # socket: the connection has cleaned up already; nothing to report.
        with contextlib.suppress(ConnectionError):
            await self.login.daemon.serve_connection(
                StreamWire(writer),
                protocol.StreamFrames(reader).next,
                peer=self.login.peer,
                principal=principal,
            )

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
