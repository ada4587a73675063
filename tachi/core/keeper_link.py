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
    """

    _MAGIC = b"TJRN\x01\x00\x00\x00"
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
        self.capacity = size - self.DATA
        magic, base, used = self._HEADER.unpack_from(self._map, 0)
        if magic != self._MAGIC or used > self.capacity:
            magic, base, used = self._MAGIC, 0, 0  # a new one (all zeros)
            self._HEADER.pack_into(self._map, 0, magic, base, used)
        self.base = base
        self.used = used
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
        if self.used + n > self.capacity:
            self.fills += 1
            if self.on_full is not None:
                self.on_full()
            if self.used + n > self.capacity:
                log.warning("journal of %s full and not saved: its start is lost", self.key)
                self.reset(seq)
            if n > self.capacity:
                data = data[n - self.capacity :]
                self.base += n - self.capacity
                n = self.capacity
        start = self.DATA + self.used
        self._map[start : start + n] = data
        self.used += n
        struct.pack_into("<Q", self._map, 16, self.used)

    def reset(self, seq: int) -> None:
        """Everything before offset ``seq`` is saved elsewhere: start again there.
        The length is cleared before the base moves, so no moment pairs the new
        base with the old bytes."""
        struct.pack_into("<Q", self._map, 16, 0)
        self.used = 0
        self.base = seq
        struct.pack_into("<Q", self._map, 8, seq)

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
