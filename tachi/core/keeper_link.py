"""The daemon's side of the session keeper (see :mod:`tachi.keeper`).

Requests are synchronous on one ``SOCK_SEQPACKET`` connection, made from the
event loop: a spawn costs the keeper a fork and an exec (as spawning here
did), a reap one ``waitpid`` of a process already gone. Neither is on the
output or input path, which stays the daemon's own reads and writes of the
PTY master.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tachi.core import fd_limits
from tachi.keeper import PROTOCOL, keeper_socket, peer_uid, recv, send

log = logging.getLogger("tachi.keeper_link")

#: A keeper that does not answer within this long is treated as gone.
TIMEOUT = 5.0
#: Exit code reported for a session process whose status nobody could collect
#: (the keeper died before it ended): the shell's "unknown" status.
UNKNOWN_EXIT = 255
#: Bytes of output journal per window (see :class:`Journal`): a window snapshots
#: early when it would overflow, so in a flood one snapshot per this much output.
JOURNAL_BYTES = 8 << 20


class KeeperError(OSError):
    """The keeper could not be reached, or answered something unusable."""


@dataclass
class Kept:
    """A process the keeper holds, as handed to a starting daemon."""

    key: str
    pid: int
    #: The daemon's own copy of the PTY master.
    master: int
    #: A pidfd while the process has not been reaped; ``None`` once it has.
    pidfd: int | None
    #: ``os.waitstatus_to_exitcode`` of a process that ended while no daemon ran.
    status: int | None
    meta: dict[str, Any] = field(default_factory=dict)
    #: The window's output journal (a memfd the keeper holds), if it has one.
    journal: int | None = None

    def close(self) -> None:
        for fd in (self.master, self.pidfd, self.journal):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


class Journal:
    """A window's output since its last screen snapshot, in a memfd the keeper
    holds, mapped ``MAP_SHARED``: what the daemon writes there is in the
    kernel's pages at once, with no system call, and stays there when the
    daemon is killed; the next daemon gets the memfd back and replays it on
    top of the snapshot (docs/survival.md, "Output journal").

    Layout: a header (magic, ``base``: the window's output offset of the first
    byte kept, ``used``: bytes kept), then the bytes. It never wraps: when a
    write would not fit, ``on_full`` must save the window's screen and
    :meth:`reset` the journal to the offset saved; only if that fails are
    unsaved bytes overwritten (logged).

    The PTY is read straight into the mapping (:meth:`read_from`), so a daemon
    killed inside ``read`` (the kernel has consumed the bytes and copied them)
    leaves them in the memfd, past ``used``. What lies past ``used`` is kept
    zero, so the next daemon takes what is not zero there as that read's bytes
    (:data:`READ_MAX` at most; a NUL byte at the very end of that one read is
    the only thing it cannot tell from nothing).
    """

    _MAGIC = b"TJRN\x02\x00\x00\x00"
    #: A journal of an older daemon: the same, but past ``used`` is not kept zero.
    _MAGIC_1 = b"TJRN\x01\x00\x00\x00"
    #: The most one read puts in the journal (tachi.core.pty reads 64 KiB at most).
    READ_MAX = 64 * 1024
    _HEADER = struct.Struct("<8sQQ")
    #: Where the bytes start (a cache line after the header).
    DATA = 64

    def __init__(self, fd: int, key: str) -> None:
        """Map ``fd`` (closed here: the mapping keeps the memfd alive while the
        keeper's copy keeps it for the next daemon). Raises ``OSError``/``ValueError``
        for a descriptor that is not a usable journal."""
        try:
            size = os.fstat(fd).st_size
            if size <= self.DATA:
                raise ValueError(f"journal of {size} bytes")
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.key = key
        #: Zero with writes rather than giving pages back (while a flood fills it).
        self._keep_pages = False
        self.capacity = size - self.DATA
        magic, base, used = self._HEADER.unpack_from(self._map, 0)
        self.base = base
        self.used = used
        if magic not in (self._MAGIC, self._MAGIC_1) or used > self.capacity:
            self.base = self.used = 0  # a new one
            self._zero(0, self.capacity)
        elif magic == self._MAGIC:
            # A read the last daemon was killed in: its bytes are there, uncounted.
            cut = self._map[self.DATA + used : self.DATA + min(self.capacity, used + self.READ_MAX)]
            if cut_n := len(cut.rstrip(b"\0")):
                self.used += cut_n
                log.info("journal of %s: %d bytes of a read cut short by a crash kept", key, cut_n)
        else:
            self._zero(used, self.capacity)
        self._HEADER.pack_into(self._map, 0, self._MAGIC, self.base, self.used)
        self.on_full: Callable[[], None] | None = None
        #: Times it filled up (each cost one early snapshot).
        self.fills = 0

    def write(self, seq: int, data: bytes) -> None:
        """Keep ``data``, the window's output from offset ``seq`` on. The bytes
        go first, the new length after: a daemon killed in between leaves a
        journal that simply ends before them."""
        n = len(data)
        if self.base + self.used != seq:  # not a continuation (cannot happen): start over
            log.warning("journal of %s at %d, output at %d", self.key, self.base + self.used, seq)
            self.reset(seq)
        data = self._room(seq, data)
        n = len(data)
        start = self.DATA + self.used
        self._map[start : start + n] = data
        self.used += n
        struct.pack_into("<Q", self._map, 16, self.used)

    def read_from(self, fd: int, size: int) -> bytes:
        """Read up to ``size`` bytes (at most :data:`READ_MAX`) of the window's
        output from ``fd`` straight into the journal and return them: they are
        in the memfd the moment the kernel has copied them. Raises what
        ``os.read`` raises."""
        size = min(size, self.READ_MAX)
        self._room(self.base + self.used, b"", size)
        start = self.DATA + self.used
        view = memoryview(self._map)[start : start + size]
        try:
            got = os.readv(fd, [view])
        finally:
            view.release()
        data = self._map[start : start + got]
        self.used += got
        struct.pack_into("<Q", self._map, 16, self.used)
        return data

    def _room(self, seq: int, data: bytes, size: int = 0) -> bytes:
        """Make room for ``data`` (or ``size`` bytes), saving the window first
        (``on_full``); returns what of ``data`` fits."""
        n = len(data) or size
        if self.used + n > self.capacity:
            self.fills += 1
            if self.on_full is not None:
                # A flood: the journal keeps its pages for the bytes that follow
                # (a page given back and faulted in again cost each 4 KiB read
                # 4 us, 9 % of a flood's throughput); a snapshot at a quieter
                # moment gives them back.
                self._keep_pages = True
                try:
                    self.on_full()
                finally:
                    self._keep_pages = False
            if self.used + n > self.capacity:
                log.warning("journal of %s full and not saved: its start is lost", self.key)
                self.reset(seq)
            if n > self.capacity:
                data = data[n - self.capacity :]
                self.base += n - self.capacity
                struct.pack_into("<Q", self._map, 8, self.base)
        return data

    def reset(self, seq: int) -> None:
        """Everything before offset ``seq`` is saved elsewhere: start again there.
        The length is cleared before the base moves, so no moment pairs the new
        base with the old bytes."""
        struct.pack_into("<Q", self._map, 16, 0)
        self._zero(0, self.used)
        self.used = 0
        self.base = seq
        struct.pack_into("<Q", self._map, 8, seq)

    def _zero(self, start: int, end: int) -> None:
        """Zero the bytes ``start``-``end`` (of the data): whole pages are given
        back to the system (``MADV_REMOVE``), the rest written."""
        a, b = self.DATA + start, self.DATA + end
        if b <= a:
            return
        if self._keep_pages:
            import ctypes

            view = (ctypes.c_char * (b - a)).from_buffer(self._map, a)
            ctypes.memset(view, 0, b - a)
            del view  # the mmap may not close while it is exported
            return
        page = mmap.PAGESIZE
        pa, pb = -(-a // page) * page, b // page * page
        if pb > pa:
            try:
                self._map.madvise(mmap.MADV_REMOVE, pa, pb - pa)
            except (OSError, AttributeError, ValueError):
                pa = pb = b
        else:
            pa = pb = b
        self._map[a:pa] = bytes(pa - a)
        self._map[pb:b] = bytes(b - pb)

    def trim(self, seq: int) -> None:
        """Drop what is before offset ``seq`` (saved elsewhere) and keep the rest:
        output a recording has not handed over yet (tachi.core.survival). The
        length is cleared while the bytes move, so a crash meanwhile finds an
        empty journal (the snapshot has all but those bytes), never a wrong one."""
        end = self.base + self.used
        if seq <= self.base:
            return
        if seq >= end:
            self.reset(seq)
            return
        n = end - seq
        struct.pack_into("<Q", self._map, 16, 0)
        self._map.move(self.DATA, self.DATA + seq - self.base, n)
        self._zero(n, self.used)
        self.base = seq
        struct.pack_into("<Q", self._map, 8, seq)
        self.used = n
        struct.pack_into("<Q", self._map, 16, n)

    def since(self, seq: int) -> bytes | None:
        """The output kept from offset ``seq`` on (``b""`` if none); ``None`` if
        the journal does not reach back to ``seq`` (output between is unknown)."""
        if seq < self.base:
            return None
        if seq >= self.base + self.used:
            return b""
        return self._map[self.DATA + seq - self.base : self.DATA + self.used]

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()


class KeeperLink:
    """One daemon's connection to its keeper."""

    def __init__(self, path: str, sock: socket.socket, pid: int) -> None:
        self.path = path
        self._sock = sock
        #: The keeper's pid (for status and tests).
        self.pid = pid
        self.broken = False
        #: Called with a window's key when its journal is about to overflow: it
        #: must save the window's screen and reset the journal (tachi.core.survival).
        self.journal_full: Callable[[str], None] | None = None

    @classmethod
    def open(cls, daemon_socket: os.PathLike[str] | str) -> tuple[KeeperLink, list[Kept]]:
        """Connect to the keeper of ``daemon_socket``, starting one if none
        answers; returns the link and every process it already keeps (whose
        descriptors the caller now owns). Raises ``KeeperError``."""
        path = keeper_socket(daemon_socket)
        try:
            sock = _connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            _start(path)
            sock = _connect(path)
        try:
            return cls._hello(path, sock)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def _hello(cls, path: str, sock: socket.socket) -> tuple[KeeperLink, list[Kept]]:
        send(sock, {"op": "hello", "protocol": PROTOCOL, "journals": True})
        answer = _answer(sock)
        if answer.get("protocol") != PROTOCOL:
            raise KeeperError(
                f"the keeper on {path} speaks protocol {answer.get('protocol')}, not {PROTOCOL}"
            )
        kept: list[Kept] = []
        try:
            while True:
                message, fds = recv(sock)
                if message is None:
                    raise KeeperError("the keeper hung up while handing over its sessions")
                if message.get("end"):
                    break
                journal = fds.pop() if message.get("journal") and len(fds) > 1 else None
                kept.append(
                    Kept(
                        key=str(message["key"]),
                        pid=int(message["pid"]),
                        master=fds[0],
                        pidfd=fds[1] if len(fds) > 1 else None,
                        status=message.get("status"),
                        meta=message.get("meta") or {},
                        journal=journal,
                    )
                )
        except BaseException:
            for k in kept:
                k.close()
            raise
        return cls(path, sock, int(answer["pid"])), kept

    def full_journal(self, key: str) -> None:
        """The journal of window ``key`` is full: have it saved (see ``journal_full``)."""
        if self.journal_full is not None:
            self.journal_full(key)

    # -- requests -------------------------------------------------------------
    def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str | None,
        rows: int,
        cols: int,
        xpixel: int,
        ypixel: int,
        key: str,
        meta: dict[str, Any],
    ) -> tuple[int, int, int, int | None]:
        """Start ``argv`` through the keeper: (pid, master, pidfd, journal), the
        descriptors owned by the caller (``journal``, a memfd for a
        :class:`Journal`, is ``None`` if the keeper has none to give). Raises
        ``OSError`` as the exec failed (e.g. ``FileNotFoundError``),
        ``KeeperError`` if the keeper is gone."""
        answer, fds = self._call(
            {
                "op": "spawn",
                "argv": argv,
                "env": env,
                "cwd": cwd,
                "rows": rows,
                "cols": cols,
                "xpixel": xpixel,
                "ypixel": ypixel,
                "nofile": fd_limits.inherited(),
                "key": key,
                "meta": meta,
                "journal": JOURNAL_BYTES,
            }
        )
        if not answer.get("ok"):
            raise OSError(int(answer.get("errno") or 0), str(answer.get("error")))
        journal = fds.pop() if answer.get("journal") and len(fds) == 3 else None
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise KeeperError("the keeper answered a spawn without its descriptors")
        return int(answer["pid"]), fds[0], fds[1], journal

    def reap(self, pid: int) -> int:
        """The exit status (``os.waitstatus_to_exitcode`` form) of a kept process
        whose pidfd fired; ``UNKNOWN_EXIT`` if the keeper cannot say."""
        try:
            answer, _ = self._call({"op": "reap", "pid": pid})
        except OSError as exc:
            log.warning("exit status of pid %d unknown: %s", pid, exc)
            return UNKNOWN_EXIT
        status = answer.get("status")
        if not isinstance(status, int):
            log.warning("the keeper does not know how pid %d ended", pid)
            return UNKNOWN_EXIT
        return status

    def close_all(self) -> None:
        """The daemon stops for good: the keeper kills what is left and goes."""
        with contextlib.suppress(OSError):
            self._call({"op": "close"})
        self.detach()

    def detach(self) -> None:
        """Let go of the keeper, leaving it every session (a crash does the same)."""
        self.broken = True
        self._sock.close()

    def _call(self, request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        if self.broken:
            raise KeeperError("the keeper connection is closed")
        try:
            send(self._sock, request)
            message, fds = recv(self._sock)
        except (OSError, ValueError) as exc:
            self.broken = True
            raise KeeperError(f"the keeper did not answer: {exc}") from None
        if message is None:
            self.broken = True
            raise KeeperError("the keeper is gone")
        return message, fds


def keeper_request(
    daemon_socket: os.PathLike[str] | str, request: dict[str, Any], timeout: float = TIMEOUT
) -> dict[str, Any]:
    """One request (``ping``, ``reexec``) to the keeper of ``daemon_socket`` on a
    connection of its own, for the CLI; its answer (``ok`` false included).
    Raises ``KeeperError`` if no keeper answers there."""
    path = keeper_socket(daemon_socket)
    try:
        sock = _connect(path)
    except OSError as exc:
        raise KeeperError(f"no session keeper on {path}: {exc}") from None
    try:
        sock.settimeout(timeout)
        send(sock, request)
        message, fds = recv(sock)
        for fd in fds:
            os.close(fd)
    except (OSError, ValueError) as exc:
        raise KeeperError(f"the keeper on {path} did not answer: {exc}") from None
    finally:
        sock.close()
    if message is None:
        raise KeeperError(f"the keeper on {path} hung up")
    return message


def keeper_alive(daemon_socket: os.PathLike[str] | str) -> bool:
    """Whether a keeper accepts connections for ``daemon_socket`` (it holds
    sessions a restarted daemon adopts). Only the keeper's own user can tell."""
    try:
        _connect(keeper_socket(daemon_socket)).close()
    except OSError:
        return False
    return True


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(path)
        uid = peer_uid(sock)
        if uid != os.getuid():
            raise KeeperError(f"the keeper socket {path} is served by uid {uid}, not by you")
    except BaseException:
        sock.close()
        raise
    return sock


def _start(path: str) -> None:
    """Start a keeper on ``path`` and return once it listens."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        # -P: not the working directory on its import path.
        [sys.executable, "-P", "-m", "tachi.keeper", path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env=env,
        timeout=TIMEOUT * 2,
        check=False,
    )
    if result.returncode != 0:
        raise KeeperError(f"the keeper did not start (exit {result.returncode})")


def _answer(sock: socket.socket) -> dict[str, Any]:
    message, fds = recv(sock)
    for fd in fds:
        os.close(fd)
    if message is None or not message.get("ok"):
        raise KeeperError(f"the keeper refused: {message}")
    return message
