"""A window: one PTY, its process, its screen and its output stream."""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tachi.core.command_marks import CommandMarks
from tachi.core.keeper_link import Journal
from tachi.core.pty import PtyChild
from tachi.core.screen import LazyScreen, Screen
from tachi.gotime import now_ns
from tachi.models import PTYConfig, Window

if TYPE_CHECKING:
    from tachi.core.keeper_link import KeeperLink, Kept

#: Raw output kept per window so a reconnecting client can resume exactly.
BACKLOG_BYTES = 256 * 1024
# Escape sequences removed before matching `wait --match` against output.
_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()*+][0-~]|\x1b[@-Z\\-_=>]"
)


class WindowRuntime:
    """A live window. ``seq`` counts every byte of output it has produced."""

    def __init__(
        self,
        window_id: int,
        *,
        name: str,
        command: Sequence[str],
        env: dict[str, str],
        cwd: str | None,
        pty: PTYConfig,
        screen: Screen,
        history: int = 0,
        spawn: Sequence[str] | None = None,
        on_output: Callable[[WindowRuntime, int, bytes], None],
        on_exit: Callable[[WindowRuntime, int], None],
        keeper: KeeperLink | None = None,
        keep_key: str = "",
        adopt: Kept | None = None,
    ) -> None:
        """``keeper``: spawn through it, under ``keep_key``; ``adopt``: take over
        a process the keeper kept (see :class:`~tachi.core.pty.PtyChild`)."""
        self.id = window_id
        self.name = name
        self.command = list(command)
        self.created_at = now_ns()
        self.seq = 0
        self._backlog = bytearray()
        self._on_output = on_output
        self._on_exit = on_exit
        self.screen = LazyScreen(screen, pty.cols, pty.rows, history)
        self.output_taps: list[Callable[[bytes], None]] = []
        #: Told when the window's process has exited and its output is read
        #: (before the session is): a run ends then without a task polling.
        self.exit_watchers: list[Callable[[], None]] = []
        #: Command boundaries from OSC 133 marks (the session sets the callback).
        self.marks = CommandMarks(lambda kind, details: None)
        #: ``tachi run`` types one command at a time into a window.
        self.run_lock = asyncio.Lock()
        self.child = PtyChild(
            list(spawn or self.command),
            env=env,
            cwd=cwd,
            rows=pty.rows,
            cols=pty.cols,
            xpixel=pty.xPixel,
            ypixel=pty.yPixel,
            on_output=self._output,
            on_exit=self._exited,
            keeper=keeper,
            keep_as=(keep_key, {"name": name, "command": self.command, "createdAt": now_ns()}),
            adopt=adopt,
        )
        #: Output since the last screen snapshot, kept for the next daemon (survival).
        self.journal: Journal | None = None
        if self.child.journal_fd is not None:
            fd, self.child.journal_fd = self.child.journal_fd, None
            try:
                self.journal = Journal(fd, keep_key)
            except (OSError, ValueError):
                self.journal = None
            else:
                if keeper is not None:
                    # Full: the window is saved (survival), the journal restarted.
                    self.journal.on_full = functools.partial(keeper.full_journal, keep_key)
                self.child.read = self._read_journaled

    def _exited(self, code: int) -> None:
        for watcher in list(self.exit_watchers):
            watcher()
        self._on_exit(self, code)

    @property
    def exit_code(self) -> int | None:
        return self.child.exit_code

    def _read_journaled(self, fd: int, size: int) -> bytes:
        """Read the PTY straight into the journal (which runs ahead of ``seq``
        while a callback gathers up to 64 KiB of reads)."""
        journal = self.journal
        if journal is None:
            return os.read(fd, size)
        return journal.read_from(fd, size)

    def _output(self, data: bytes) -> None:
        seq = self.seq
        self.seq += len(data)
        self._backlog += data
        if len(self._backlog) > 2 * BACKLOG_BYTES:
            del self._backlog[: len(self._backlog) - BACKLOG_BYTES]
        self._on_output(self, seq, data)
        # The screen is fed after the clients got the bytes (and lazily at that).
        self.screen.feed(data)
        self.marks.feed(data)
        for tap in self.output_taps:
            tap(data)

    def backlog_since(self, seq: int) -> bytes | None:
        """Output from offset ``seq`` on, or ``None`` if it is no longer buffered."""
        start = self.seq - len(self._backlog)
        if seq < start or seq > self.seq:
            return None
        return bytes(self._backlog[seq - start :])

    def snapshot(self) -> tuple[int, str]:
        """(seq, ansi) — the screen as of output offset ``seq``."""
        return self.seq, self.screen.ansi()

    def resize(self, pty: PTYConfig) -> None:
        self.screen.resize(pty.cols, pty.rows)
        self.child.resize(pty.rows, pty.cols, pty.xPixel, pty.yPixel)

    def to_model(self, active: bool) -> Window:
        return Window(
            id=self.id,
            name=self.name,
            active=active,
            createdAt=self.created_at,
            command=self.command,
            pid=self.child.pid,
            exitCode=self.child.exit_code,
            inputPending=self.child.input_pending,
        )


def strip_escapes(data: bytes) -> bytes:
    """Output with terminal escape sequences removed (for text matching)."""
    return _ESCAPES.sub(b"", data)
