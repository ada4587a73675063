"""One child process on a PTY, driven from the asyncio loop without blocking it.

ptyprocess does the fork/exec; everything after that is ours, because
ptyprocess's own ``close``/``wait``/``terminate`` sleep and block. Output is read
with ``add_reader``, up to 64 KiB a callback; the child is reaped through a pidfd so no
SIGCHLD handler or child watcher can steal its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ptyprocess import PtyProcess

from tachi.core import fd_limits

if TYPE_CHECKING:
    from tachi.core.keeper_link import KeeperLink, Kept

READ_SIZE = 64 * 1024
#: A PTY master hands out at most its line discipline's buffer (4095 bytes) per
#: read, however much is queued behind it: a read this long means more may wait.
PTY_FULL_READ = 4095
#: Input queued for a PTY beyond this makes interactive senders wait (backpressure).
INPUT_HIGH_WATER = 256 * 1024
#: The most input one window holds for a program that does not read it yet;
#: a ``send`` that would go past it is refused whole, before anything is queued.
INPUT_QUEUE_LIMIT = 8 * 1024 * 1024
#: Input this recent makes the daemon interactive...
INTERACTIVE_SECONDS = 0.1
#: ... and then a window flooding output (its PTY held more than one full
#: read: the daemon is behind on it) reads at most ``SHARED_READ`` bytes a
#: callback and stops reading for ``BULK_YIELD_SECONDS`` after each, unless it
#: is the one being typed into. A keystroke that arrives while the flood is
#: being read waits for one such callback, not for a 64 KiB one (about 1 ms
#: here, most of it the sixteen PTY reads). The flood waits in its PTY;
#: nothing is lost.
SHARED_READ = 2 * PTY_FULL_READ
BULK_YIELD_SECONDS = 0.001


class InputClock:
    """When any of the daemon's PTYs was last given input."""

    def __init__(self) -> None:
        self.last = 0.0

    def typed(self) -> float:
        self.last = time.monotonic()
        return self.last


INPUT_CLOCK = InputClock()


def default_signals() -> None:
    """In a child before exec: every signal back to its default disposition.

    Python ignores SIGPIPE, and the daemon may have been started with SIGINT
    ignored (by a job-control-less shell or a test runner); exec keeps ignored
    signals ignored, so `yes | head` would spin on EPIPE and Ctrl-C would do
    nothing. The open-file limit, too, is the one the daemon started with.
    """
    for sig in (
        signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
        signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
    ):  # fmt: skip
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    fd_limits.restore_in_child()


class PtyChild:
    """A running child on a PTY.

    ``on_output(data)`` is called on the loop for each chunk read; ``on_exit(code)``
    exactly once, after the child has exited and its output is drained. ``code`` is
    the exit status, or ``128 + signal`` if it was killed by a signal (shell style).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        cwd: str | None,
        rows: int,
        cols: int,
        xpixel: int = 0,
        ypixel: int = 0,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int], None],
        keeper: KeeperLink | None = None,
        keep_as: tuple[str, dict[str, Any]] = ("", {}),
        adopt: Kept | None = None,
    ) -> None:
        """Spawn ``argv``. Raises ``FileNotFoundError`` if the command does not exist,
        ``OSError`` if the PTY or fork fails, and ``Conflict`` if the daemon is
        too close to its open-file limit.

        With a ``keeper``, the keeper spawns it (and is its parent, so it
        outlives this daemon), filed under ``keep_as`` (key, metadata); with
        ``adopt``, nothing is spawned: the child is one the keeper kept while no
        daemon ran (``argv`` is then only what it was started with)."""
        fd_limits.check_headroom()
        self._proc: PtyProcess | None = None
        self._keeper = keeper
        pidfd: int | None = None
        #: The output journal's memfd the keeper gave (the window maps it), if any.
        self.journal_fd: int | None = None
        if adopt is not None:
            self.pid, self.fd, pidfd = adopt.pid, adopt.master, adopt.pidfd
            self.journal_fd, adopt.journal = adopt.journal, None
        elif keeper is not None and not keeper.broken:
            self.pid, self.fd, pidfd, self.journal_fd = keeper.spawn(
                list(argv), env=env, cwd=cwd, rows=rows, cols=cols, xpixel=xpixel,
                ypixel=ypixel, key=keep_as[0], meta=keep_as[1],
            )  # fmt: skip
        else:
            self._keeper = None
            self._proc = PtyProcess.spawn(
                list(argv), env=env, cwd=cwd, dimensions=(rows, cols), preexec_fn=default_signals
            )
            self.pid = self._proc.pid
            self.fd = self._proc.fd
        self.exit_code: int | None = None
        self._on_output = on_output
        #: How the PTY is read, ``(fd, size) -> bytes``: the window's journal reads
        #: it straight into its memfd, so a daemon killed while it gathers 64 KiB
        #: of reads, or inside one, loses none of what it read.
        self.read: Callable[[int, int], bytes] = os.read
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._eof = False
        self._typed_at = 0.0
        self._yielding = False
        #: Times this window stopped reading to let input elsewhere go first.
        self.yields = 0
        self._exited_status: int | None = None
        self._finished = False
        self._paused = False
        #: Who paused reading (see pause_reading): it resumes once all have resumed.
        self._pausers: set[object] = set()
        # Input the PTY has not taken yet, written in order as it makes room:
        # input is never dropped while the child lives.
        self._input = bytearray()
        self._input_waiters: list[tuple[int, asyncio.Future[None]]] = []
        os.set_blocking(self.fd, False)
        if xpixel or ypixel:
            self.resize(rows, cols, xpixel, ypixel)
        self._loop.add_reader(self.fd, self._read_ready)
        if adopt is not None and adopt.status is not None:
            # It ended while no daemon ran: what it printed last still waits in the PTY.
            self._pidfd = -1
            self._exited_status = adopt.status
            self._loop.call_soon(self._exited)
            return
        self._pidfd = os.pidfd_open(self.pid) if pidfd is None else pidfd
        self._loop.add_reader(self._pidfd, self._exit_ready)

    # -- input/output -------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue input for the PTY; it is written in order as the PTY makes room.

        Never blocks and never drops input while the child lives (see
        :meth:`input_below` for backpressure); input for a finished child is
        discarded.
        """
        if self._finished or not data:
            return
        self._typed_at = INPUT_CLOCK.typed()
        if not self._input:
            data = data[self._write_some(data) :]
            if not data:
                return
            self._loop.add_writer(self.fd, self._flush_input)
        self._input += data

    @property
    def input_pending(self) -> int:
        """Bytes of input queued and not yet taken by the PTY."""
        return len(self._input)

    async def input_below(self, level: int) -> None:
        """Return once at most ``level`` bytes of input are pending (or the child is gone)."""
        if len(self._input) <= level or self._finished:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._input_waiters.append((level, fut))
        await fut

    def _write_some(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF):
                raise
            # The terminal is gone: nothing will ever read this input.
            self._drop_input()
            return len(data)

    def _flush_input(self) -> None:
        try:
            written = self._write_some(self._input)
        except OSError:
            self._drop_input()
            return
        del self._input[:written]
        if not self._input:
            self._loop.remove_writer(self.fd)
        self._wake_input_waiters()

    def _drop_input(self) -> None:
        if self._input:
            self._input.clear()
            self._loop.remove_writer(self.fd)
        self._wake_input_waiters(everyone=True)

    def _wake_input_waiters(self, everyone: bool = False) -> None:
        pending = len(self._input)
        still = []
        for level, fut in self._input_waiters:
            if everyone or pending <= level:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((level, fut))
        self._input_waiters = still

    def _read_ready(self) -> None:
        try:
            data = self.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        if len(data) >= PTY_FULL_READ:
            sharing = self._input_elsewhere()
            data = self._read_more(data, SHARED_READ if sharing else READ_SIZE)
            if sharing and len(data) > PTY_FULL_READ:
                self._yield_to_input()
        if data:
            self._on_output(data)
            return
        # EIO or b"": every slave fd is closed. Wait for the exit status.
        self._eof = True
        self._loop.remove_reader(self.fd)
        self._maybe_finish()

    def _read_more(self, first: bytes, limit: int) -> bytes:
        """After a full read, whatever else the PTY holds (up to ``limit`` in all):
        a flood then costs one callback and one frame per 16-64 KiB, not per 4 KiB.
        A short read (a keystroke's echo) never gets here, so it is not delayed."""
        chunks, total = [first], len(first)
        while total < limit:
            try:
                more = self.read(self.fd, limit - total)
            except OSError:  # EAGAIN, or EIO at the end: the next callback sees it
                break
            if not more:
                break
            chunks.append(more)
            total += len(more)
            if len(more) < PTY_FULL_READ:
                break
        return first if len(chunks) == 1 else b"".join(chunks)

    def _input_elsewhere(self) -> bool:
        """Someone is typing, and not into this window (whose echo is in its output)."""
        now = time.monotonic()
        return (
            now - INPUT_CLOCK.last < INTERACTIVE_SECONDS
            and now - self._typed_at >= INTERACTIVE_SECONDS
        )

    def _yield_to_input(self) -> None:
        """Stop reading this flood for ``BULK_YIELD_SECONDS``, so keystrokes and
        echoes elsewhere get the daemon and the CPU first."""
        if self._yielding:
            return
        self._yielding = True
        self.yields += 1
        self._loop.remove_reader(self.fd)
        self._loop.call_later(BULK_YIELD_SECONDS, self._end_yield)

    def _end_yield(self) -> None:
        self._yielding = False
        if not self._paused and not self._eof and not self._finished:
            self._loop.add_reader(self.fd, self._read_ready)

    def _exit_ready(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if self._proc is not None:
            _, status = os.waitpid(self.pid, 0)
            self._exited_status = os.waitstatus_to_exitcode(status)
            self._proc.terminated = True
        else:  # the keeper is its parent: it collected the status
            assert self._keeper is not None
            self._exited_status = self._keeper.reap(self.pid)
        self._exited()

    def _exited(self) -> None:
        # Output written just before exit may still sit in the PTY: drain it now,
        # without waiting for EIO, which never comes if a background child keeps
        # the slave open.
        self._drain()
        self._maybe_finish(force=True)

    def _drain(self) -> None:
        for _ in range(64):
            if self._eof:
                return
            try:
                data = self.read(self.fd, READ_SIZE)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._on_output(data)

    def _maybe_finish(self, force: bool = False) -> None:
        if self._finished or self._exited_status is None or not (self._eof or force):
            return
        self._finished = True
        if not self._eof:
            self._loop.remove_reader(self.fd)
        self._drop_input()
        self._close_master()
        code = self._exited_status
        self.exit_code = 128 - code if code < 0 else code
        self._on_exit(self.exit_code)

    def _close_master(self) -> None:
        # Close through ptyprocess's own file object and mark it closed. A bare
        # os.close() leaves that object believing it owns the fd number: its
        # finalizer would close the number again later, when it may belong to a
        # new session's PTY, and the kernel would hang that session up (SIGHUP).
        if self._proc is None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            return
        self._proc.closed = True
        with contextlib.suppress(OSError):
            self._proc.fileobj.close()

    # -- flow control -------------------------------------------------------
    def pause_reading(self, holder: object = None) -> None:
        """Stop reading the PTY (the program then waits, as on a full pipe)
        until ``holder`` resumes, and every other holder that paused it too:
        several readers pace one window (a run's caller, its followers), and
        one catching up must not let output pile up for another still behind."""
        if self._eof or self._finished:
            return
        self._pausers.add(self if holder is None else holder)
        if not self._paused:
            self._paused = True
            self._loop.remove_reader(self.fd)

    def resume_reading(self, holder: object = None) -> None:
        """``holder`` no longer holds reading back (see :meth:`pause_reading`)."""
        self._pausers.discard(self if holder is None else holder)
        if self._paused and not self._pausers and not self._eof and not self._finished:
            self._paused = False
            if not self._yielding:
                self._loop.add_reader(self.fd, self._read_ready)

    # -- terminal control ---------------------------------------------------
    def resize(self, rows: int, cols: int, xpixel: int = 0, ypixel: int = 0) -> None:
        """Set the window size; the kernel sends SIGWINCH to the foreground group."""
        if self._finished:
            return
        winsize = struct.pack("HHHH", rows, cols, xpixel, ypixel)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, winsize)

    def foreground_pgrp(self) -> int:
        """The PTY's foreground process group (what Ctrl-C would signal)."""
        try:
            return os.tcgetpgrp(self.fd)
        except OSError:
            return self.pid

    def send_signal(self, sig: int) -> None:
        """Deliver ``sig`` to the foreground process group, as the terminal would."""
        if self._finished:
            return
        try:
            os.killpg(self.foreground_pgrp(), sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def hangup(self, grace: float = 2.0) -> None:
        """Hang up like a closed terminal (SIGHUP + SIGCONT to the session's groups),
        then SIGKILL after ``grace`` seconds if the child is still there."""
        if self._finished:
            return
        for sig in (signal.SIGHUP, signal.SIGCONT):
            for target in {self.pid, self.foreground_pgrp()}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(target, sig)
        self._loop.call_later(grace, self._kill)

    def _kill(self) -> None:
        if self._exited_status is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    @property
    def finished(self) -> bool:
        return self._finished
