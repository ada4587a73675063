"""The local transport: a Unix socket (dir 0700, socket 0600), identity from SO_PEERCRED."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tachi import protocol
from tachi.core.principal import Principal
from tachi.hookspecs import hookimpl
from tachi.paths import ensure_private_dir

if TYPE_CHECKING:
    from tachi.daemon.server import Daemon

log = logging.getLogger("tachi.unix")
_CREDS = struct.Struct("3i")
# Past this much unsent output asyncio's drain() waits; AttachedClient's own
# limit (config client_buffer) decides when a client is resynchronised instead.
_HIGH_WATER = 256 * 1024


class StreamWire:
    """``tachi.core.clients.Wire`` over an asyncio stream."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        writer.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    def buffered(self) -> int:
        return self._writer.transport.get_write_buffer_size()

    async def drained(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def close(self) -> None:
        self._writer.close()


def peer_principal(sock: socket.socket) -> Principal:
    """The connecting process's user, from the kernel (never from what it claims)."""
    pid, uid, _gid = _CREDS.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    )
    return Principal.local(uid, pid)


class UnixSocketTransport:
    name = "unix"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._daemon: Daemon | None = None

    async def start(self, daemon: Daemon) -> None:
        """Listen on ``path``. Raises ``RuntimeError`` if another daemon answers there."""
        self._daemon = daemon
        ensure_private_dir(self.path.parent, owned=False)
        if self.path.exists() or self.path.is_symlink():
            if await _answers(self.path):
                raise RuntimeError(f"another tachid is already listening on {self.path}")
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    def grant_local_access(self, uid: int) -> None:
        """Let another local user reach the socket (for sessions shared with them)."""
        _set_acl(self.path.parent, uid, "x")
        _set_acl(self.path, uid, "rw")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._daemon is not None
        sock = writer.get_extra_info("socket")
        principal = peer_principal(sock)
        wire = StreamWire(writer)
        await self._daemon.serve_connection(principal, wire, lambda: protocol.read_frame(reader))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _set_acl(path: Path, uid: int, perms: str) -> None:
    import subprocess

    try:
        subprocess.run(
            ["setfacl", "-m", f"u:{uid}:{perms}", str(path)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        log.warning("could not grant uid %d access to %s: %s", uid, path, exc)


@hookimpl
def tachi_register_transports(register: Any, config: Any) -> None:
    register(UnixSocketTransport(config.socket))
