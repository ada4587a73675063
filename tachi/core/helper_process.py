"""Python processes the daemon keeps beside itself (the recorder worker, the
warm CLI): started the same way, and reaped without blocking the event loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable


def spawn_module(module: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``python -m module args`` with pipes on its standard input and
    output, the daemon's standard error, and a session of its own (a Ctrl-C
    meant for a foreground daemon is not its business).

    It gets the daemon's import path, so it imports the same tachi, and the
    modules plugins name, however the daemon was started (an embedding program,
    a test's in-process daemon). Raises ``OSError`` if it cannot be started.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        # -P: not the working directory on its import path (see autostart).
        [sys.executable, "-P", "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        env=env,
        start_new_session=True,
    )


def on_exit(proc: subprocess.Popen[bytes], callback: Callable[[int], None]) -> None:
    """Call ``callback(returncode)`` on the running loop once ``proc`` exits,
    reaping it through a pidfd (as ``tachi.core.pty`` reaps sessions)."""
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(proc.pid)

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        callback(proc.wait())

    loop.add_reader(pidfd, exited)
