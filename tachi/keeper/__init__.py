"""The session keeper: a small process that keeps sessions alive across daemons.

tachid spawns every session process through the keeper, which is their parent
(and a subreaper for their descendants) and holds a duplicate of each PTY
master. The daemon gets its own copy of the master and a pidfd over a Unix
socket (``SCM_RIGHTS``) and reads and writes the PTY directly, as before: the
keeper is on no output or input path. When the daemon dies, the keeper's copy
keeps every PTY open, output waits in the kernel's buffer (the program blocks
when it is full), and the keeper reaps processes that end and keeps their exit
status. The next daemon connects, receives every descriptor back and adopts the
sessions. See docs/survival.md.

This package is the keeper's whole code and its wire format. It imports only
the standard library (no plugin, no tachi module): whatever the daemon loads,
the keeper cannot be broken by it.

Wire format, on a ``SOCK_SEQPACKET`` Unix socket: each message is one packet
of UTF-8 JSON (an object), with descriptors attached to it, if any.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from typing import Any

#: Bumped when a message changes meaning; a daemon refuses a keeper of another version.
PROTOCOL = 1
#: Packets are at most this long (a spawn request carries the whole environment).
MAX_PACKET = 1 << 20
#: SCM_RIGHTS carries at most this many descriptors a message (the kernel's SCM_MAX_FD is 253).
MAX_FDS = 4


def keeper_socket(daemon_socket: str | os.PathLike[str]) -> str:
    """Where the keeper of the daemon listening on ``daemon_socket`` listens."""
    return os.fspath(daemon_socket) + ".keeper"


def send(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()
) -> None:
    """Send one message (and ``fds``, duplicated into the receiver)."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_PACKET:
        raise ValueError(f"keeper message of {len(data)} bytes is over {MAX_PACKET}")
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors that came with it; ``(None, [])`` at the end.

    Raises ``ValueError`` for a packet that is not a JSON object (its
    descriptors are closed first).
    """
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(
        MAX_PACKET, socket.CMSG_SPACE(MAX_FDS * fds.itemsize)
    )
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % fds.itemsize
            fds.frombytes(payload[:usable])
    received = list(fds)
    if not data:
        for fd in received:
            os.close(fd)
        return None, []
    try:
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        for fd in received:
            os.close(fd)
        raise ValueError(f"bad keeper message: {exc}") from None
    return message, received


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end, as the kernel reports it."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])
