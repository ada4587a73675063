"""An attached client's own terminal, read and written by the daemon itself.

An attach normally puts the client process on both legs of every keystroke:
it reads the terminal and sends a frame, the daemon writes the PTY, and the
echo comes back the same way. For a client on this host the daemon can use
that terminal itself and take the client off the path: keys go from the
terminal to the PTY, and output from the PTY to the terminal, inside one
process. The client keeps everything else (the prefix key's commands, copy
mode, prompts, signals) and takes either direction back when it needs it; the
protocol is in ``docs/protocol.md`` under ``client.terminal``.

The daemon uses only a terminal the peer itself opened and sent over the Unix
socket (``SCM_RIGHTS``): it never opens a terminal with its own credentials.
Opening ``/proc/PID/fd/0`` of the peer did, and a peer could put there an
``O_PATH`` descriptor of a terminal it may not open (a root daemon then wrote
into another user's terminal and read its keys). A descriptor is taken only
open for reading and writing (never ``O_PATH``: that proves nothing), non-blocking
(its own file description: the daemon must never block on it, nor change the
flags of one it shares), a terminal, and owned by the peer's user unless the
peer is the daemon's own user (:meth:`DirectTerminal.adopt`).

Transports read their sockets with ``recv`` (uvloop's in C), which discards
(closes) descriptors that come along. So the descriptor has a step of its own:
the client asks (``descriptor: "offer"``), the daemon stops the transport's
reading and reads the socket with ``recvmsg`` itself
(:class:`DescriptorReceiver`), answers, and the client's next request carries
the descriptor. At most one is kept; any other is closed at once.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import socket
import stat
import struct
import termios
from collections.abc import Callable
from typing import Any

from tachi.errors import InvalidRequest, PermissionDenied

#: Read at most this much from the terminal per callback (a paste comes in pieces).
READ_SIZE = 65536


class DirectTerminal:
    """A terminal the client opened anew and handed over (its own file
    description, non-blocking; receiving it never makes it the daemon's
    controlling terminal), with a buffered writer and a reader.

    It has the ``write``/``buffered``/``drained``/``close`` of a
    :class:`~tachi.core.clients.Wire`, so a client's output goes to it by the
    same code as to a socket. A write or read that fails (the terminal hung up)
    marks it broken: its buffer is dropped, ``on_broken`` is called once, and
    every later write is a no-op.
    """

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        self._loop = loop
        self._out = bytearray()
        self._drained: list[Callable[[], None]] = []
        self._reader: Callable[[bytes], None] | None = None
        self.broken = False
        self.closed = False
        #: Called once, when the terminal fails (EIO after a hang-up, say).
        self.on_broken: Callable[[], None] | None = None

    @classmethod
    def adopt(cls, fd: int, peer_uid: int, loop: asyncio.AbstractEventLoop) -> DirectTerminal:
        """Take ``fd``, a descriptor the peer (user ``peer_uid``) sent, as its
        terminal if it may be used: open for reading and writing (not
        ``O_PATH``), non-blocking, a terminal, and the peer's own (or the peer is
        the daemon's user). Otherwise ``fd`` is closed and ``PermissionDenied``
        (a terminal that is not the peer's to hand over) or ``InvalidRequest``
        says why."""
        try:
            _check_terminal(fd, peer_uid)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, loop)

    # -- output -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Write now what the terminal takes; buffer the rest (never blocks)."""
        if self.broken or self.closed or not data:
            return
        if self._out:
            self._out += data
            return
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._break()
            return
        if n < len(data):
            self._out += memoryview(data)[n:]
            self._loop.add_writer(self.fd, self._flush)

    def _flush(self) -> None:
        try:
            n = os.write(self.fd, self._out)
        except BlockingIOError:
            return
        except OSError:
            self._break()
            return
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self.fd)
            self._run_drained()

    def buffered(self) -> int:
        return len(self._out)

    def size(self) -> tuple[int, int] | None:
        """The terminal's (rows, cols) as the kernel has them now (``None`` if gone)."""
        if self.broken or self.closed:
            return None
        try:
            rows, cols, _, _ = struct.unpack(
                "HHHH", fcntl.ioctl(self.fd, termios.TIOCGWINSZ, bytes(8))
            )
        except OSError:
            return None
        return rows, cols

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything written has reached the terminal (at
        once if it has), or the terminal has failed."""
        if not self._out or self.broken or self.closed:
            callback()
        else:
            self._drained.append(callback)

    async def drained(self) -> None:
        done = self._loop.create_future()
        self.when_drained(lambda: done.done() or done.set_result(None))
        await done

    def _run_drained(self) -> None:
        callbacks, self._drained = self._drained, []
        for callback in callbacks:
            callback()

    # -- input --------------------------------------------------------------------
    def start_reading(self, on_data: Callable[[bytes], None]) -> None:
        """Hand every read to ``on_data`` until :meth:`stop_reading`."""
        if self.broken or self.closed:
            return
        if self._reader is None:
            self._loop.add_reader(self.fd, self._read)
        self._reader = on_data

    def stop_reading(self) -> None:
        if self._reader is not None:
            self._reader = None
            if not self.closed:
                self._loop.remove_reader(self.fd)

    @property
    def reading(self) -> bool:
        return self._reader is not None

    def _read(self) -> None:
        if self._reader is None:
            return  # stopped in this turn of the loop: leave the keys to the client
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO after a hang-up, mostly: the terminal is gone either way
        if not data:
            self._break()
            return
        self._reader(data)

    # -- the end --------------------------------------------------------------------
    def _break(self) -> None:
        if self.broken:
            return
        self.broken = True
        self._out.clear()
        self.stop_reading()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(self.fd)
        self._run_drained()
        if self.on_broken is not None:
            self.on_broken()

    def close(self) -> None:
        """Stop reading and writing (what is buffered is dropped) and close it."""
        if self.closed:
            return
        self.stop_reading()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(self.fd)
        self.closed = True
        self._out.clear()
        self._run_drained()
        os.close(self.fd)


def _check_terminal(fd: int, peer_uid: int) -> None:
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        info = os.fstat(fd)
    except OSError as exc:
        raise InvalidRequest(f"cannot check the terminal handed over: {exc.strerror}") from None
    # An O_PATH descriptor can be had for any file one can name, and is
    # readable by nobody: holding it proves no right to the terminal.
    if flags & getattr(os, "O_PATH", 0) or flags & os.O_ACCMODE != os.O_RDWR:
        raise PermissionDenied(
            "the terminal handed over is not open for reading and writing"
            " (the client must open it itself)"
        )
    if not stat.S_ISCHR(info.st_mode) or not os.isatty(fd):
        raise InvalidRequest("the descriptor handed over is not a terminal")
    if info.st_uid != peer_uid and peer_uid != os.geteuid():
        raise PermissionDenied("the terminal handed over belongs to another user")
    if not flags & os.O_NONBLOCK:
        # Never blocking, and never changing flags another process shares.
        raise InvalidRequest(
            "the terminal handed over is not non-blocking (open it anew with O_NONBLOCK)"
        )


#: Room for exactly one descriptor (not CMSG_SPACE, whose padding fits two): the
#: kernel installs no more, and closes the rest of a message's.
_ONE_FD = socket.CMSG_LEN(array.array("i").itemsize)
#: Read at most this much per ``recvmsg`` while waiting for a descriptor.
_RECV_SIZE = 65536


class DescriptorReceiver:
    """Reads a stream socket with ``recvmsg`` in its transport's stead, for a while,
    to take the one descriptor the peer sends (:meth:`expect`, :meth:`take`).

    Bytes read go to ``feed`` in order, exactly as the transport would have
    handed them over. It also stands between the connection's flow control and
    the transport (:meth:`pause_reading`, :meth:`resume_reading`), so that only
    one of the two reads the socket at a time.
    """

    def __init__(self, transport: Any, feed: Callable[[bytes], None]) -> None:
        self._transport = transport
        self._feed = feed
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._fd: int | None = None

    def pause_reading(self) -> None:
        """Stop reading the socket, whoever reads it now (flow control)."""
        self._paused = True
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
        else:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read the socket again, here while a descriptor is expected, else in the transport."""
        self._paused = False
        if self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._read)
        else:
            self._transport.resume_reading()

    def expect(self, timeout: float) -> None:
        """Read the socket here until a descriptor comes, or for ``timeout``
        seconds. What the transport already read stays ahead of it: the peer
        sends its descriptor only once it has the answer to its offer."""
        self._discard()
        if self._sock is not None:
            self._reset_timer(timeout)
            return
        raw = self._transport.get_extra_info("socket")
        if raw is None or self._transport.is_closing():
            raise InvalidRequest("the connection is closing")
        # A second descriptor of the socket: the loop refuses a reader on the
        # transport's own, and this one is closed after, leaving the transport's.
        fd = os.dup(raw.fileno())
        try:
            self._sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            raise InvalidRequest("cannot read this connection's socket") from None
        self._sock.setblocking(False)
        self._transport.pause_reading()
        if not self._paused:
            self._loop.add_reader(self._sock.fileno(), self._read)
        self._reset_timer(timeout)

    def take(self) -> int | None:
        """Stop reading here; the descriptor that came (now the caller's), if any."""
        self._stop()
        fd, self._fd = self._fd, None
        return fd

    def close(self) -> None:
        """The connection is gone: stop, and close a descriptor nobody took."""
        self._stop()
        self._discard()

    def _reset_timer(self, timeout: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(timeout, self._stop)

    def _read(self) -> None:
        assert self._sock is not None
        try:
            data, ancdata, _flags, _ = self._sock.recvmsg(
                _RECV_SIZE, _ONE_FD, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancdata = b"", []
        fds = _descriptors(ancdata)
        if fds:
            # Kept before the bytes it came with (its request) are fed.
            self._discard()
            self._fd = fds[0]
            for extra in fds[1:]:
                os.close(extra)
        if fds or not data:
            # Done here; at an end or error the transport sees it again itself.
            self._stop()
        if data:
            self._feed(data)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is None:
            return
        sock, self._sock = self._sock, None
        if not self._paused:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        if not self._paused and not self._transport.is_closing():
            self._transport.resume_reading()

    def _discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _descriptors(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Every descriptor in ``recvmsg``'s ancillary data (the caller owns them)."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % received.itemsize])
            fds.extend(received)
    return fds
