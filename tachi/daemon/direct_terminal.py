"""An attached client's own terminal, read and written by the daemon itself.

An attach normally puts the client process on both legs of every keystroke:
it reads the terminal and sends a frame, the daemon writes the PTY, and the
echo comes back the same way. For a client on this host the daemon can open
that terminal itself, as ``/proc/PID/fd/0`` of the peer the kernel names on
the Unix socket (``SO_PEERCRED``), and take the client off the path: keys go
from the terminal to the PTY, and output from the PTY to the terminal, inside
one process. The client keeps everything else (the prefix key's commands,
copy mode, prompts, signals) and takes either direction back when it needs
it; the protocol is in ``docs/protocol.md`` under ``client.terminal``.

Opening ``/proc/PID/fd/0`` is allowed only where the kernel would let the
daemon read that process's memory (the same user, or root), and it names the
very terminal the peer holds: a client cannot point the daemon at another.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
from collections.abc import Callable

from tachi.errors import InvalidRequest

#: Read at most this much from the terminal per callback (a paste comes in pieces).
READ_SIZE = 65536


class DirectTerminal:
    """A terminal device opened anew (its own file description, non-blocking, not
    the daemon's controlling terminal), with a buffered writer and a reader.

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
    def of_peer(cls, pid: int | None, loop: asyncio.AbstractEventLoop) -> DirectTerminal:
        """Open the terminal the process ``pid`` has on its stdin, checking that
        its stdout is the same terminal. Raises ``InvalidRequest`` saying why not."""
        if not pid:
            raise InvalidRequest("the daemon does not know this client's process")
        flags = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(f"/proc/{pid}/fd/0", flags)
        except OSError as exc:
            raise InvalidRequest(f"cannot open the client's terminal: {exc.strerror}") from None
        try:
            if not os.isatty(fd):
                raise InvalidRequest("the client's stdin is not a terminal")
            if os.stat(f"/proc/{pid}/fd/1").st_rdev != os.fstat(fd).st_rdev:
                raise InvalidRequest("the client's stdout is not the terminal on its stdin")
        except OSError as exc:
            os.close(fd)
            raise InvalidRequest(f"cannot check the client's terminal: {exc.strerror}") from None
        except InvalidRequest:
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
