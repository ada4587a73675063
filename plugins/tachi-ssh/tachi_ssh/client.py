"""The client side: ``tachi --host ssh://[user@]host[:port]`` and ``Client(url="ssh://…")``.

Runs the OpenSSH client (``ssh -s HOST tachi``), so the user's keys, agent,
``~/.ssh/config`` and ``known_hosts`` apply as for any ssh, and bridges its
stdin/stdout to one end of a ``socketpair``: the core's clients then speak
frames over the other end as over the local socket. ``TACHI_SSH_COMMAND``
replaces the ``ssh`` command (e.g. ``ssh -i ~/.ssh/tachi -o BatchMode=yes``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

from tachi.errors import DaemonUnavailable, InvalidRequest
from tachi_ssh.frames import SUBSYSTEM

SCHEME = "ssh"


def ssh_argv(url: str) -> list[str]:
    """The ssh command line for ``url``. Raises ``InvalidRequest`` for a URL
    without a host, with a path, or with a bad port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise InvalidRequest(f"{url}: bad port") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise InvalidRequest(f"{url} is not ssh://[user@]host[:port]")
    base = shlex.split(os.environ.get("TACHI_SSH_COMMAND") or "ssh")
    argv = [*base, "-T"]
    if port is not None:
        argv += ["-p", str(port)]
    if parts.username:
        argv += ["-l", unquote(parts.username)]
    return [*argv, "-s", parts.hostname, SUBSYSTEM]


def open_connection(url: str, options: dict[str, Any]) -> socket.socket:
    """A local socket carrying frames to and from the daemon at ``url``.

    ssh's own prompts and errors (host key, password or share token, "Permission
    denied") reach the terminal directly. Raises ``DaemonUnavailable`` when
    ssh cannot be started.
    """
    argv = ssh_argv(url)
    if shutil.which(argv[0]) is None:
        raise DaemonUnavailable(f"cannot reach {url}: no {argv[0]!r} command (OpenSSH client)")
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen(argv, stdin=theirs, stdout=theirs, close_fds=True)
    except OSError as exc:
        ours.close()
        raise DaemonUnavailable(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    finally:
        theirs.close()
    # ssh ends when we close our end (EOF on its stdin); reap it then.
    threading.Thread(target=proc.wait, name="tachi-ssh-client", daemon=True).start()
    return _SshSocket(url, proc, ours)


#: How long a socket whose ssh has gone waits for ssh's exit status.
EXIT_WAIT = 2.0


class _SshSocket(socket.socket):
    """Our end of the socketpair, which knows its ssh process.

    When the stream ends (EOF, a reset, a broken pipe) before anything came
    from the daemon, ssh never reached it (connection refused, unknown host,
    key refused): that is reported as ``DaemonUnavailable`` naming the URL and
    ssh's exit status, ssh's own message being on the terminal already, rather
    than as a connection lost. Once frames have arrived, an end is left to the
    client as for any transport."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._url = url
        self._proc = proc
        self._heard = False

    def _never_reached(self) -> None:
        """Raise ``DaemonUnavailable`` if ssh exited without reaching the daemon."""
        if self._heard:
            return
        try:
            status = self._proc.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            return
        if status == 0:
            return
        why = (
            f"ssh was killed by signal {-status}"
            if status < 0
            else f"ssh exited with status {status} (its message is above)"
        )
        raise DaemonUnavailable(f"cannot reach {self._url}: {why}")

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            data = super().recv(bufsize, flags)
        except (ConnectionError, BrokenPipeError):
            self._never_reached()
            raise
        if not data:
            self._never_reached()
        self._heard = True
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        try:
            n = super().recv_into(buffer, nbytes, flags)
        except (ConnectionError, BrokenPipeError):
            self._never_reached()
            raise
        if not n:
            self._never_reached()
        self._heard = True
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except (ConnectionError, BrokenPipeError):
            self._never_reached()
            raise

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            super().sendall(data, flags)
        except (ConnectionError, BrokenPipeError):
            self._never_reached()
            raise
