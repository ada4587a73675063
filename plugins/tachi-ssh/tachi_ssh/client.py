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
    return ours
