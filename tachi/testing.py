"""pytest fixtures for tachi and for plugin authors (loaded through ``pytest11``).

``tachi_daemon`` starts a real daemon process on a private socket and state
directory and stops it afterwards; ``tachi_daemon.run(...)`` runs the real CLI
against it. Plugin authors get the same fixtures by installing tachi.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


class DaemonProcess:
    """A running ``tachid`` for one test, with helpers to drive it."""

    def __init__(
        self,
        home: Path,
        extra_env: dict[str, str] | None = None,
        config: str | None = None,
        *,
        address_space: int | None = None,
        open_files: tuple[int, int] | None = None,
    ) -> None:
        """``address_space`` caps the daemon's virtual memory (``RLIMIT_AS``, bytes),
        like ``prlimit --as``, to test how it behaves when memory runs out;
        ``open_files`` sets its (soft, hard) ``RLIMIT_NOFILE``, like ``prlimit -n``."""
        self.address_space = address_space
        self.open_files = open_files
        self.home = home
        self.socket = home / "s.sock"
        self.uid = os.getuid()
        if config is not None:
            (home / "config.toml").write_text(config)
        self.env = {
            **os.environ,
            "TACHI_HOME": str(home),
            "TACHI_SOCKET": str(self.socket),
            "TACHI_LOAD_PLUGINS": os.environ.get("TACHI_LOAD_PLUGINS", ""),
            **(extra_env or {}),
        }
        self.env.pop("TACHI_TOKEN", None)
        self.log = home / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _set_limits(self) -> None:
        import resource

        if self.address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.address_space, self.address_space))
        if self.open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files)

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    def start(self, timeout: float = 15.0) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "tachi.daemon.server", "--socket", str(self.socket)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            preexec_fn=self._set_limits if self.address_space or self.open_files else None,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"tachid exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            if self.socket.exists():
                try:
                    from tachi.client.sync import Client

                    Client(self.socket, autostart=False).disconnect()
                    return
                except Exception:
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"tachid did not start:\n{self.log.read_text()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            # Killed earlier: its session keeper still holds the sessions.
            self.end_keeper()
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise RuntimeError(f"tachid ignored SIGTERM:\n{self.log.read_text()}") from None

    def end_keeper(self) -> None:
        """End the session keeper of this socket and every process it keeps
        (what a clean stop does), if one is left, e.g. after :meth:`kill`."""
        import socket as socket_mod

        from tachi.keeper import keeper_socket, recv, send

        with socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_SEQPACKET) as sock:
            sock.settimeout(5)
            try:
                sock.connect(keeper_socket(self.socket))
                send(sock, {"op": "close"})
                recv(sock)
            except OSError:
                pass

    def kill(self) -> None:
        """SIGKILL the daemon (a crash), leaving its state behind; the session
        keeper keeps its sessions for the next daemon on this socket."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    @property
    def shared_socket(self) -> Path:
        """The socket local users with a grant connect to (see ``tachi share --user``)."""
        from tachi.paths import shared_socket_path

        return shared_socket_path(self.socket, self.uid, self.env.get("TACHI_SHARED_DIR"))

    def client(self, *, shared: bool = False, **kwargs: Any) -> Any:
        """A ``tachi.Client`` on this daemon; ``shared=True`` uses the socket that
        other local users reach (for code running as them)."""
        from tachi.client.sync import Client

        return Client(self.shared_socket if shared else self.socket, autostart=False, **kwargs)

    def run(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 30,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tachi ARGS`` as a real process against this daemon."""
        result = subprocess.run(
            [sys.executable, "-m", "tachi", *args],
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"tachi {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def tachi_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tachi", *args]

    def new(self, *command: str, **options: Any) -> dict[str, Any]:
        """``tachi new -d --json`` → the session as JSON."""
        import json

        flags: list[str] = []
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                flags.append(flag)
            elif value is not None and value is not False:
                flags += [flag, str(value)]
        result = self.run("new", "-d", "--json", *flags, "--", *command, check=True)
        return json.loads(result.stdout)


#: How tests and benchmarks launch Chromium (headless, in a container running as
#: root, nothing fetched in the background that could skew a measurement).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def command_lines() -> Iterator[tuple[int, list[bytes]]]:
    """Each running process's PID and command line (its arguments, split at NUL)
    from /proc, skipping those that end meanwhile: to find processes that
    detached from the test (a dtach master, a connection keeper)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        yield int(proc.name), argv


def chromium_path() -> str:
    """The Chromium to drive with Playwright: ``chromium`` on PATH, else Debian's."""
    return shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """Chromium launched by Playwright (``CHROMIUM_ARGS``), one per test module;
    Playwright is imported only by tests that ask for it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def short_tempdir() -> Iterator[Path]:
    """A private directory with a short path (Unix socket paths max out near 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tachi-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tachi_home() -> Iterator[Path]:
    with short_tempdir() as home:
        yield home


@pytest.fixture
def tachi_daemon(tachi_home: Path) -> Iterator[DaemonProcess]:
    """A real daemon process on a private socket, stopped after the test."""
    daemon = DaemonProcess(tachi_home)
    daemon.start()
    try:
        yield daemon
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()


@contextlib.asynccontextmanager
async def inprocess_daemon(home: Path, plugins: Any = (), **config: Any) -> Any:
    """Run a real daemon inside the test's event loop, with ``plugins`` registered.

    For plugin tests: the daemon is the real one on a real socket, but its plugin
    manager holds objects defined in the test. Use ``tachi.AsyncClient`` against
    ``daemon.config.socket`` (a blocking client would stall the loop).
    """
    import asyncio

    from tachi.config import Config
    from tachi.daemon.server import Daemon
    from tachi.plugins import make_plugin_manager

    pm = make_plugin_manager(load_entrypoints=False)
    for plugin in plugins:
        pm.register(plugin)
    # An embedded daemon keeps no warm CLI unless the test asks (warm_cli=True).
    cfg = Config(state_dir=home / "state", socket=home / "s.sock", warm_cli=False)
    for key, value in config.items():
        setattr(cfg, key, value)
    daemon = Daemon(cfg, pm)
    task = asyncio.get_running_loop().create_task(daemon.run())
    for _ in range(500):
        if cfg.socket.exists() or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
