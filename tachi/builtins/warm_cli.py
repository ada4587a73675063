"""The warm CLI's keeper: the daemon starts ``tachi.cli.warm_server`` beside its
socket, starts it again when it exits, and stops it with the daemon.

It registers as a transport because it is one for the ``tachi`` command: a way
in that ``tachi daemon status`` lists. ``[cli] warm = false`` in the config
turns it off. See ``tachi.launch`` for what it is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tachi.core.helper_process import on_exit, spawn_module
from tachi.hookspecs import hookimpl
from tachi.launch import warm_socket

if TYPE_CHECKING:
    from tachi.config import Config
    from tachi.daemon.server import Daemon

log = logging.getLogger("tachi.warm")
#: The server's exit status when its code changed on disk (``warm_server.STALE``).
_STALE = 75
#: A server that ran at least this long before exiting is started again at once.
_HEALTHY_SECONDS = 30.0
#: The longest wait before starting a failing server again.
_MAX_BACKOFF = 60.0


class WarmCLI:
    """One ``tachi.cli.warm_server`` process, kept running while the daemon runs."""

    name = "warm-cli"

    def __init__(self, daemon_socket: Path) -> None:
        self.path = Path(warm_socket(str(daemon_socket)))
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = False
        self._started = 0.0
        self._backoff = 1.0
        self._restart: asyncio.TimerHandle | None = None
        #: Resolved with its exit status when the current process is reaped.
        self._done: asyncio.Future[int] | None = None
        self._stopping = False
        self.restarts = 0

    async def start(self, daemon: Daemon) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def _spawn(self) -> None:
        assert self._loop is not None
        self._restart = None
        try:
            # stdin is the lifeline (it ends when the daemon does); stdout says "ready".
            proc = self._proc = spawn_module("tachi.cli.warm_server", str(self.path))
        except OSError as exc:
            log.error("cannot start the warm CLI: %s", exc)
            self._schedule_restart()
            return
        self._started = time.monotonic()
        self._ready = False
        assert proc.stdout is not None
        self._loop.add_reader(proc.stdout.fileno(), self._on_output, proc)
        done = self._done = self._loop.create_future()

        def exited(status: int) -> None:
            done.set_result(status)
            self._exited(proc, status)

        on_exit(proc, exited)

    def _on_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and self._loop is not None
        data = os.read(proc.stdout.fileno(), 256)
        self._ready = self._ready or b"ready" in data
        if not data:
            self._loop.remove_reader(proc.stdout.fileno())

    def _exited(self, proc: subprocess.Popen[bytes], status: int) -> None:
        self._unwatch(proc)
        if self._stopping or proc is not self._proc:
            return
        self._ready = False
        ran = time.monotonic() - self._started
        if status == _STALE:
            log.info("the warm CLI's code changed on disk: starting a fresh one")
            self._backoff = 0.0
        elif ran >= _HEALTHY_SECONDS:
            log.warning("the warm CLI exited (%s) after %.0f s: starting it again", status, ran)
            self._backoff = 0.0
        else:
            self._backoff = min(max(self._backoff * 2, 1.0), _MAX_BACKOFF)
            log.warning(
                "the warm CLI exited (%s) after %.1f s: starting it again in %.0f s",
                status,
                ran,
                self._backoff,
            )
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        assert self._loop is not None
        self.restarts += 1
        self._restart = self._loop.call_later(self._backoff, self._spawn)

    def _unwatch(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop reading its output and close both pipes (which ends the lifeline)."""
        if self._loop is not None and proc.stdout is not None and not proc.stdout.closed:
            self._loop.remove_reader(proc.stdout.fileno())
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def describe(self) -> dict[str, Any]:
        return {
            "url": f"unix:{self.path}",
            "ready": self._ready,
            "pid": self._proc.pid if self._proc and self._done and not self._done.done() else None,
            "restarts": self.restarts,
        }

    async def stop(self) -> None:
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        proc, done = self._proc, self._done
        if proc is None or done is None or done.done():
            return
        # Its commands are children it does not wait for: they run to their end.
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(done), 5)
        except TimeoutError:
            proc.kill()
            await done


@hookimpl
def tachi_register_transports(register: Any, config: Config) -> None:
    if config.warm_cli:
        register(WarmCLI(config.socket))
