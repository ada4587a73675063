"""The local transport: a Unix socket (dir 0700, socket 0600), identity from SO_PEERCRED."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tachi.core.peer import Peer
from tachi.core.principal import Principal
from tachi.daemon.direct_terminal import DescriptorReceiver
from tachi.daemon.inbox import FrameInbox
from tachi.daemon.limits import ConnectionLimits
from tachi.errors import TachiError
from tachi.hookspecs import hookimpl
from tachi.paths import ensure_private_dir, ensure_shared_dir, shared_socket_path

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
        # Nothing more will be sent on a closed stream: none of it waits.
        if self._writer.is_closing():
            return 0
        return self._writer.transport.get_write_buffer_size()

    async def drained(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def close(self) -> None:
        self._writer.close()


class FrameProtocol(asyncio.Protocol):
    """One Unix-socket connection: bytes in go to a ``FrameInbox`` (keystrokes
    reach the PTY inside ``data_received``), and this is the connection's
    ``Wire`` for bytes out."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._transport: asyncio.Transport | None = None
        self._inbox: FrameInbox | None = None
        #: Clear while the transport's buffer is over its high-water mark.
        self._writable = asyncio.Event()
        self._writable.set()
        #: The connection's task (held here: the loop keeps only a weak one).
        self._task: asyncio.Task[None] | None = None
        self._receiver: DescriptorReceiver | None = None

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always a subclass of asyncio.Transport
        # (uvloop's are not).
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        # Flow control goes through the receiver: while it reads the socket for
        # a terminal's descriptor, the transport does not.
        self._receiver = DescriptorReceiver(transport, self.data_received)
        self._inbox = FrameInbox(
            self._receiver.pause_reading,
            self._receiver.resume_reading,
            limits=ConnectionLimits.of(self._daemon.config),
        )
        peer = socket_peer(transport.get_extra_info("socket"))
        self._task = asyncio.get_running_loop().create_task(
            self._daemon.serve_connection(self, self._inbox, peer=peer)
        )
        self._task.add_done_callback(_log_failure)

    def data_received(self, data: bytes) -> None:
        assert self._inbox is not None
        self._inbox.feed(data)

    def eof_received(self) -> bool:
        assert self._inbox is not None
        self._inbox.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._receiver is not None:
            self._receiver.close()
        if self._inbox is not None:
            self._inbox.feed_eof()
        # Nothing more is sent: nothing waits (a connection over its unsent
        # budget must not wait for bytes a lost transport still counts).
        self._transport = None
        self._writable.set()  # nothing will drain now: let waiters go

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- a terminal handed over (see tachi.daemon.direct_terminal) --------------
    def expect_descriptor(self, timeout: float) -> None:
        """Take the next descriptor the peer sends (within ``timeout`` seconds)."""
        assert self._receiver is not None
        self._receiver.expect(timeout)

    def take_descriptor(self) -> int | None:
        """The descriptor the peer sent since :meth:`expect_descriptor`, if any."""
        return self._receiver.take() if self._receiver is not None else None

    # -- Wire -------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def write_frames(self, frames: list[bytes]) -> None:
        """Several frames in one write (see ``tachi.core.clients.write_frames``)."""
        self.write(b"".join(frames))

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport else 0

    async def drained(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("connection failed", exc_info=task.exception())


def socket_peer(sock: socket.socket) -> Peer:
    """The connecting process's user, from the kernel (never from what it claims)."""
    pid, uid, _gid = _CREDS.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    )
    return Peer(transport="unix", uid=uid, pid=pid)


class UnixSocketTransport:
    """The primary socket (0600, owner only) and, once a session is shared with
    a local user, a second socket those users can reach (see
    ``tachi.paths.shared_socket_path``). Both identify peers by ``SO_PEERCRED``;
    the daemon admits only its owner and users holding a grant."""

    name = "unix"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shared_path = shared_socket_path(path)
        self._servers: dict[Path, asyncio.AbstractServer] = {}
        self._daemon: Daemon | None = None

    async def start(self, daemon: Daemon) -> None:
        """Listen on ``path``. Raises ``RuntimeError`` if another daemon answers there."""
        self._daemon = daemon
        ensure_private_dir(self.path.parent, owned=False)
        await self._listen(self.path, 0o600)
        if daemon.grants.users_with_grants():
            await self._open_shared()

    async def _listen(self, path: Path, mode: int) -> None:
        if path.exists() or path.is_symlink():
            if await _answers(path):
                raise RuntimeError(f"another tachid is already listening on {path}")
            path.unlink()
        old_umask = os.umask(0o177)
        assert self._daemon is not None
        daemon = self._daemon
        try:
            self._servers[path] = await asyncio.get_running_loop().create_unix_server(
                lambda: FrameProtocol(daemon), path=str(path)
            )
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)

    async def _open_shared(self) -> None:
        if self.shared_path in self._servers:
            return
        try:
            ensure_shared_dir(self.shared_path.parent)
            await self._listen(self.shared_path, 0o666)
        except (OSError, RuntimeError) as exc:
            log.error("cannot open the shared socket %s: %s", self.shared_path, exc)
            raise TachiError(f"cannot open the shared socket {self.shared_path}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": f"unix:{self.path}"}
        if self.shared_path in self._servers:
            out["shared"] = f"unix:{self.shared_path}"
        return out

    async def grant_local_access(self, uid: int) -> Path:
        """Let another local user reach the daemon; returns the socket they use."""
        await self._open_shared()
        return self.shared_path

    async def stop(self) -> None:
        for path, server in self._servers.items():
            server.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


@hookimpl
def tachi_register_transports(register: Any, config: Any) -> None:
    register(UnixSocketTransport(config.socket))


@hookimpl
def tachi_authenticate(peer: Peer) -> Principal | None:
    """A local user is who the kernel says is on the other end of the socket."""
    if peer.transport == "unix" and peer.uid is not None:
        return Principal.local(peer.uid, peer.pid)
    return None
