"""Messages from a remote daemon read back as one byte stream, on the caller's thread.

A transport that carries tachi frames in messages of its own (WebSocket
binary messages, NATS ``MSG``\\s) and is spoken on the caller's thread, with
no bridge thread and socketpair, hands ``tachi.client.wire.WireConnection``
an object with the socket calls it makes. This is their common part: the
timeout, ``recv``/``recv_into`` over the messages received and not handed
out yet, and ``send``. A transport supplies ``_sock`` (what ``select()``
waits on), ``sendall``, ``close`` and ``_read`` (take what has arrived,
without blocking, into ``_inbox``; set ``_eof`` at the end); it may extend
``_take`` (to acknowledge what was handed out, say).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

#: ``socket.MSG_DONTWAIT`` as a plain int: ``&`` on the enum runs Python code
#: (``Flag.__and__``) on every read of an attached client.
_DONTWAIT = int(socket.MSG_DONTWAIT)


class MessageStream:
    """See the module docstring."""

    _sock: socket.socket | None

    def __init__(self) -> None:
        #: Held for every read of ``_inbox`` and every call on the connection:
        #: a transport's watchdog thread may use it meanwhile.
        self._lock = threading.Lock()
        #: Whole messages received, not handed out yet; the first one from ``_offset``.
        self._inbox: list[bytes] = []
        self._offset = 0
        self._eof = False
        self._timeout: float | None = None

    def _read(self) -> None:
        """Take what has arrived into ``_inbox`` without blocking; ``_eof``
        once the connection ended. Called with ``_lock`` held."""
        raise NotImplementedError

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        self.sendall(data)
        return len(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        buf = bytearray(size)
        n = self.recv_into(buf, size, flags)
        return bytes(buf[:n])

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Message bytes into ``buffer`` (0 at the end of the connection).
        Raises ``BlockingIOError`` (``MSG_DONTWAIT``, or a zero timeout) or
        ``TimeoutError`` (the timeout passed) when nothing has arrived."""
        view = memoryview(buffer).cast("B")
        nbytes = nbytes or len(view)
        wait = not (int(flags) & _DONTWAIT) and self._timeout != 0
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                if not self._inbox and not self._eof:
                    self._read()
                if self._inbox:
                    return self._take(view, nbytes)
                if self._eof:
                    return 0
            if not wait:
                raise BlockingIOError(11, "no message has arrived")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("timed out")
            select.select([self._sock], [], [], left)

    def _take(self, view: memoryview, nbytes: int) -> int:
        """Copy queued message bytes into ``view``, up to ``nbytes``; the lock held."""
        n = 0
        inbox = self._inbox
        while inbox and n < nbytes:
            first = inbox[0]
            chunk = min(len(first) - self._offset, nbytes - n)
            view[n : n + chunk] = memoryview(first)[self._offset : self._offset + chunk]
            n += chunk
            self._offset += chunk
            if self._offset == len(first):
                inbox.pop(0)
                self._offset = 0
        return n
