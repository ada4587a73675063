"""One SSH session channel: the tachi CLI run as the SSH principal, bridged to the channel.

For each ``exec`` or ``shell`` request the daemon opens a private Unix socket
(in the daemon socket's 0700 directory) that it serves as the channel's
principal, and starts ``tachi_ssh.runner`` with ``TACHI_SOCKET`` set to it.
With a pty-request the runner gets a new PTY of the requested size (so
``tachi attach`` works unchanged: raw mode, prefix key, SIGWINCH on
window-change); without one, pipes (so scripts get stdout, stderr and the
exit status apart). The runner's exit status becomes the SSH exit status.
A ``tachi`` subsystem request instead carries protocol frames
(``tachi_ssh.frames``), with no process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shlex
import signal
import struct
import sys
import termios
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from tachi_ssh.frames import SUBSYSTEM, FrameBridge
from tachi_ssh.runner_socket import RunnerSocket

if TYPE_CHECKING:
    from tachi_ssh.login import SSHLogin

log = logging.getLogger("tachi.ssh")
#: Unsent input past this pauses reading from the SSH client.
_INPUT_HIGH_WATER = 256 * 1024
#: After the runner exits, how long its last output may take to arrive.
_DRAIN_SECONDS = 2.0


class SessionChannel(asyncssh.SSHServerSession):  # type: ignore[misc]
    """An SSH session channel running one tachi command (or the menu)."""

    def __init__(self, login: SSHLogin) -> None:
        self.login = login
        self.chan: asyncssh.SSHServerChannel | None = None
        self.argv: list[str] | None = None
        self.bad_command: str | None = None
        self.term_type: str | None = None
        self.term_size: tuple[int, int, int, int] = (80, 24, 0, 0)
        self.proc: asyncio.subprocess.Process | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._master: int | None = None
        self._pending_input = bytearray()
        self._output_done = asyncio.Event()
        self._closed = False
        # Input and EOF that arrive before the runner is up are kept for it.
        self._early: bytearray | None = bytearray()
        self._early_eof = False
        self._run_started = False
        #: Set for the ``tachi`` subsystem: frames, no CLI process.
        self.frames: FrameBridge | None = None

    # -- requests from the client ------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self.term_type = term_type or "xterm-256color"
        if term_size:
            self.term_size = tuple(term_size)  # (cols, rows, xpixel, ypixel)
        return True

    def shell_requested(self) -> bool:
        self.argv = []
        return True

    def exec_requested(self, command: str) -> bool:
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            self.argv = []
            self.bad_command = f"tachi: cannot parse the command: {exc}"
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != SUBSYSTEM or self.chan is None:
            return False
        self.frames = FrameBridge(self.login, self.chan)
        return True

    def session_started(self) -> None:
        self._run_started = True
        self.login.spawn(self._serve_frames() if self.frames else self._run())

    async def _serve_frames(self) -> None:
        assert self.frames is not None
        try:
            await self.frames.serve()
        finally:
            self.login.channels.discard(self)

    # -- data from the client ------------------------------------------------------
    def data_received(self, data: bytes, datatype: Any) -> None:
        self.login.touch()
        if self.frames is not None:
            self.frames.feed(data)
        elif self._early is not None:
            self._early += data
            if len(self._early) > _INPUT_HIGH_WATER and self.chan is not None:
                self.chan.pause_reading()
        elif self._master is not None:
            self._pending_input += data
            self._flush_input()
        elif self.proc is not None and self.proc.stdin is not None:
            stdin = self.proc.stdin
            if stdin.is_closing():
                return
            stdin.write(data)
            if stdin.transport.get_write_buffer_size() > _INPUT_HIGH_WATER and self.chan:
                self.chan.pause_reading()
                self.login.spawn(self._resume_after_drain(stdin))

    async def _resume_after_drain(self, stdin: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await stdin.drain()
        if self.chan is not None and not self._closed:
            self.chan.resume_reading()

    def eof_received(self) -> bool:
        if self.frames is not None:
            self.frames.end()
        elif self._early is not None:
            self._early_eof = True
        elif self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
        return True  # keep our side open: output and the exit status still follow

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.term_size = (width, height, pixwidth, pixheight)
        if self._master is not None:
            _set_size(self._master, self.term_size)

    def pause_writing(self) -> None:
        self._writable.clear()
        if self.frames is not None:
            self.frames.pause_writing()
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)

    def resume_writing(self) -> None:
        self._writable.set()
        if self.frames is not None:
            self.frames.resume_writing()
        if self._master is not None and not self._output_done.is_set():
            asyncio.get_running_loop().add_reader(self._master, self._pty_readable)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._writable.set()
        if self.frames is not None:
            self.frames.lost()
        self._hang_up()
        if not self._run_started:
            self.login.channels.discard(self)  # closed before it ran anything

    # -- the runner --------------------------------------------------------------------
    async def _run(self) -> None:
        assert self.chan is not None
        status = 1
        listener = RunnerSocket(self.login)
        try:
            if self.bad_command:
                self.chan.write_stderr(self.bad_command.encode() + b"\r\n")
                status = 2
                return
            await listener.open()
            env = self._environment(listener.path)
            argv = [sys.executable, "-m", "tachi_ssh.runner", *(self.argv or [])]
            if self.term_type is not None:
                status = await self._run_on_pty(argv, env, listener)
            else:
                status = await self._run_on_pipes(argv, env, listener)
        except Exception:
            log.exception("ssh channel of %s failed", self.login.peer.source)
            with contextlib.suppress(Exception):
                self.chan.write_stderr(b"tachi: internal error in the SSH transport\r\n")
        finally:
            listener.close()
            self._close_master()
            self.login.channels.discard(self)
            if not self._closed:
                with contextlib.suppress(Exception):
                    self.chan.exit(status)

    def _runner_started(self) -> None:
        """Hand the runner what the client sent while it was starting (or hang
        up on it at once if the client left meanwhile)."""
        if self._closed:
            self._hang_up()
        early, self._early = self._early or bytearray(), None
        if self.chan is not None and not self._closed:
            self.chan.resume_reading()
        if early:
            self.data_received(bytes(early), None)
        if self._early_eof:
            self.eof_received()

    def _environment(self, socket_path: Path) -> dict[str, str]:
        # Not the daemon's own session markers (it may have been started inside
        # a tachi session), tokens, or SSH variables such as its agent socket.
        dropped = ("TACHI_TOKEN", "TACHI_SESSION", "SSH_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped) and k != "TACHI"}
        env["TACHI_SOCKET"] = str(socket_path)
        env["TERM"] = self.term_type or "dumb"
        return env

    async def _run_on_pipes(
        self, argv: list[str], env: dict[str, str], listener: RunnerSocket
    ) -> int:
        assert self.chan is not None
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=Path.home(),
            start_new_session=True,
        )
        listener.runner_pid = self.proc.pid
        self._runner_started()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        await asyncio.gather(
            self._copy(self.proc.stdout, self.chan.write),
            self._copy(self.proc.stderr, self.chan.write_stderr),
        )
        return _exit_status(await self.proc.wait())

    async def _copy(self, stream: asyncio.StreamReader, write: Any) -> None:
        while data := await stream.read(65536):
            await self._writable.wait()
            if self._closed:
                continue  # keep reading so the runner is never blocked on a full pipe
            self.login.touch()
            write(data)

    async def _run_on_pty(
        self, argv: list[str], env: dict[str, str], listener: RunnerSocket
    ) -> int:
        master, slave = os.openpty()
        try:
            _set_size(slave, self.term_size)
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=Path.home(),
                start_new_session=True,
            )
        finally:
            os.close(slave)  # the runner holds it now; its exit gives us EIO
        listener.runner_pid = self.proc.pid
        os.set_blocking(master, False)
        self._master = master
        self._runner_started()
        if self._writable.is_set():
            asyncio.get_running_loop().add_reader(master, self._pty_readable)
        returncode = await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._output_done.wait(), _DRAIN_SECONDS)
        return _exit_status(returncode)

    def _pty_readable(self) -> None:
        assert self._master is not None and self.chan is not None
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: the runner (and everything holding the PTY) is gone
        if not data:
            asyncio.get_running_loop().remove_reader(self._master)
            self._output_done.set()
            return
        self.login.touch()
        if not self._closed:
            self.chan.write(data)

    def _flush_input(self) -> None:
        assert self._master is not None
        loop = asyncio.get_running_loop()
        while self._pending_input:
            try:
                n = os.write(self._master, self._pending_input)
            except BlockingIOError:
                break
            except OSError:
                self._pending_input.clear()  # the runner is gone: nobody will read it
                break
            del self._pending_input[:n]
        if self._pending_input:
            loop.add_writer(self._master, self._flush_input)
            if len(self._pending_input) > _INPUT_HIGH_WATER and self.chan is not None:
                self.chan.pause_reading()
        else:
            loop.remove_writer(self._master)
            if self.chan is not None and not self._closed:
                self.chan.resume_reading()

    def _close_master(self) -> None:
        if self._master is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._master)
            loop.remove_writer(self._master)
            os.close(self._master)
            self._master = None

    def _hang_up(self) -> None:
        """The client went away: the runner gets SIGHUP (``tachi attach`` detaches)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGHUP)
            self.login.spawn(self._kill_later(self.proc))

    async def _kill_later(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close the channel (the runner gets SIGHUP when asyncssh reports it closed)."""
        if self.chan is not None and not self._closed:
            self.chan.close()

    def notify(self, message: str) -> None:
        """Tell the client why its connection is about to end (on stderr)."""
        if self.chan is not None and not self._closed:
            with contextlib.suppress(Exception):
                self.chan.write_stderr(f"\r\ntachi: {message}\r\n".encode())


def _set_size(fd: int, term_size: tuple[int, ...]) -> None:
    cols, rows, xpix, ypix = [*term_size, 0, 0, 0, 0][:4]
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpix, ypix))


def _exit_status(returncode: int) -> int:
    """A signalled runner exits like a shell reports it: 128 + the signal."""
    return 128 - returncode if returncode < 0 else returncode & 0xFF


__all__ = ["SessionChannel"]
