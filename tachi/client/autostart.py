"""Reach the daemon, starting it first when nobody answers.

No sleep-and-hope: after spawning ``tachid`` the client polls the socket until
it accepts, and if the daemon process exits first, the error names its log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tachi.errors import DaemonUnavailable
from tachi.paths import state_dir

START_TIMEOUT = 10.0


def daemon_log_path() -> Path:
    return state_dir() / "daemon.log"


def connect_socket(path: Path, *, autostart: bool) -> socket.socket:
    """A connected Unix socket to the daemon at ``path``.

    Raises ``DaemonUnavailable`` when it is not running (and ``autostart`` is
    false) or could not be started.
    """
    try:
        return _connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        if not autostart:
            raise DaemonUnavailable(
                f"no tachi daemon at {path} ({exc.strerror}); start one with 'tachi daemon start'"
            ) from None
    except PermissionError:
        raise DaemonUnavailable(
            f"permission denied on {path}: the daemon belongs to another user"
        ) from None
    start_daemon(path)
    return _connect(path)


def start_daemon(
    path: Path, *, timeout: float = START_TIMEOUT, extra_args: tuple[str, ...] = ()
) -> int:
    """Spawn ``tachid`` for ``path`` in the background and wait until it accepts.

    Returns the daemon's pid. Raises ``DaemonUnavailable`` naming the log file if
    it exits or does not answer within ``timeout`` seconds.
    """
    log_path = daemon_log_path()
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        proc = subprocess.Popen(
            # -P: the directory it was started from is not on its import path (a
            # module planted there must not load into the daemon, and its changes
            # must not look like tachi's code changing to the warm CLI).
            [sys.executable, "-P", "-m", "tachi.daemon.server", "--socket", str(path), *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        try:
            _connect(path).close()
            return proc.pid
        except OSError:
            pass
        if proc.poll() is not None:
            # It may have lost a race with another daemon that is now serving.
            try:
                _connect(path).close()
                return proc.pid
            except OSError:
                raise DaemonUnavailable(
                    f"tachid exited with status {proc.returncode} while starting: "
                    f"{_last_line(log_path)} (log: {log_path})"
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise DaemonUnavailable(
        f"tachid did not answer on {path} within {timeout:g}s (log: {log_path})"
    )


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
