"""A live session: its windows (through the multiplexer), its clients, its limits."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tachi.core.command_marks import CommandMarks
from tachi.core.patterns import Pattern, compile_pattern
from tachi.core.pty import INPUT_HIGH_WATER, INPUT_QUEUE_LIMIT
from tachi.core.screen_budget import ScreenBudget
from tachi.core.shell_integration import integrate
from tachi.core.window import WindowRuntime, strip_escapes
from tachi.errors import Conflict
from tachi.gotime import now_ns
from tachi.models import (
    MAX_COLS,
    MAX_ROWS,
    CloseReason,
    PTYConfig,
    Session,
    SessionState,
    visible,
)

if TYPE_CHECKING:
    from tachi.core.clients import AttachedClient
    from tachi.core.keeper_link import KeeperLink, Kept
    from tachi.core.screen import Screen


class SessionEvents:
    """Callbacks from a session to whoever owns it (the manager)."""

    def __init__(
        self,
        *,
        create_screen: Callable[[int, int], Screen],
        make_multiplexer: Callable[[SessionRuntime], Any],
        changed: Callable[[SessionRuntime, str, dict[str, Any]], None],
        closed: Callable[[SessionRuntime], None],
        budget: ScreenBudget | None = None,
        history_lines: int = 0,
        shell_dir: Path | None = None,
    ) -> None:
        self.create_screen = create_screen
        #: Where shell-integration files go (``None``: no integration).
        self.shell_dir = shell_dir
        self.budget = budget or ScreenBudget(1 << 62)
        #: Where window processes are spawned so they outlive the daemon (``None``: here).
        self.keeper: KeeperLink | None = None
        self.history_lines = history_lines
        self.make_multiplexer = make_multiplexer
        self.changed = changed
        self.closed = closed


class SessionRuntime:
    """Everything the daemon holds for one running session.

    ``info`` is the seed's ``Session`` record, kept current. Windows are owned by
    the multiplexer (``self.mux``); attached clients by ``self.clients``.
    """

    def __init__(
        self,
        info: Session,
        *,
        owner_uid: int | None,
        env: dict[str, str],
        cwd: str | None,
        size_policy: str,
        events: SessionEvents,
    ) -> None:
        self.info = info
        self.owner_uid = owner_uid
        self.env = env
        self.cwd = cwd
        self.size_policy = size_policy
        self.events = events
        self.clients: dict[int, AttachedClient] = {}
        self.output_listeners: list[Callable[[WindowRuntime, bytes], None]] = []
        self.switch_listeners: list[Callable[[WindowRuntime], None]] = []
        self._waiters: list[_OutputWaiter] = []
        self._exit_waiters: list[asyncio.Future[int | None]] = []
        self.warned_max_duration = False
        #: Processes kept while no daemon ran, by window id, for ``spawn_window`` to adopt.
        self.adopting: dict[int, Kept] = {}
        self.mux = events.make_multiplexer(self)

    # -- identity -------------------------------------------------------
    @property
    def id(self) -> str:
        return self.info.id

    @property
    def closed(self) -> bool:
        return self.info.state == SessionState.CLOSED

    def to_model(self) -> Session:
        active = self.mux.active
        self.info.windows = [w.to_model(w is active) for w in self.mux.windows()]
        self.info.clients = len(self.clients)
        return self.info

    # -- WindowHost -----------------------------------------------------
    def spawn_window(
        self, window_id: int, command: Sequence[str], name: str | None
    ) -> WindowRuntime:
        pty = self.info.pty or PTYConfig()
        argv = list(command) or list(self.info.command)
        budget = self.events.budget
        budget.reserve([(self.id, window_id)], pty.cols, pty.rows, self.events.history_lines)
        try:
            return self._new_window(window_id, argv, name, pty)
        except BaseException:
            budget.release((self.id, window_id))
            raise

    def _new_window(
        self, window_id: int, argv: list[str], name: str | None, pty: PTYConfig
    ) -> WindowRuntime:
        spawn, env = argv, self.env
        if self.events.shell_dir is not None:
            spawn, env = integrate(argv, env, self.events.shell_dir)
        window = WindowRuntime(
            window_id,
            # The default comes from the command, which may hold anything.
            name=name or visible(os.path.basename(argv[0]))[:64],
            command=argv,
            spawn=spawn,
            env=env,
            cwd=self.cwd,
            pty=pty,
            screen=self.events.create_screen(pty.cols, pty.rows),
            history=self.events.history_lines,
            on_output=self._window_output,
            on_exit=self._window_exit,
            keeper=self.events.keeper,
            keep_key=f"{self.id}/{window_id}",
            adopt=self.adopting.pop(window_id, None),
        )
        window.marks = CommandMarks(
            lambda kind, details: self.events.changed(self, kind, {"window": window_id, **details})
        )
        return window

    def active_window_changed(self, old: WindowRuntime | None, new: WindowRuntime | None) -> None:
        if new is None:
            return
        for client in list(self.clients.values()):
            self._redraw(client, new)
        for listener in self.switch_listeners:
            listener(new)
        if old is not None:
            self.events.changed(self, "window-switched", {"from": old.id, "to": new.id})

    # -- output -----------------------------------------------------------
    def _window_output(self, window: WindowRuntime, seq: int, data: bytes) -> None:
        self.info.lastActivity = now_ns()
        if window is self.mux.active:
            for client in self.clients.values():
                client.send_output(window.id, seq, data)
            for listener in self.output_listeners:
                listener(window, data)
        if self._waiters:
            for waiter in list(self._waiters):
                waiter.feed(window, data)

    def _window_exit(self, window: WindowRuntime, code: int) -> None:
        self.events.budget.release((self.id, window.id))
        self.events.changed(self, "window-exited", {"window": window.id, "exitCode": code})
        for waiter in list(self._waiters):
            waiter.window_gone(window)
        if self.mux.window_exited(window) is None:
            self.finish(CloseReason.EXIT, code)

    def _redraw(self, client: AttachedClient, window: WindowRuntime) -> None:
        seq, ansi = window.snapshot()
        client.send_screen(window.id, seq, ansi, (window.screen.rows, window.screen.cols))

    def snapshot_active(self) -> tuple[int, int, str, tuple[int, int]]:
        """The active window's id, output offset, screen and (rows, cols)."""
        window = self.mux.get(None)
        seq, ansi = window.snapshot()
        return window.id, seq, ansi, (window.screen.rows, window.screen.cols)

    # -- input --------------------------------------------------------------
    def write(self, data: bytes, window_id: int | None = None) -> None:
        """Queue input for a window's PTY (the active one by default), all of it.

        Raises ``NotFound`` for an unknown window and ``Conflict`` (before
        queueing anything) if the window already holds so much unread input
        that ``data`` would go past ``INPUT_QUEUE_LIMIT``.
        """
        child = self.mux.get(window_id).child
        if child.input_pending + len(data) > INPUT_QUEUE_LIMIT:
            raise Conflict(
                f"window {self.mux.get(window_id).id} has {child.input_pending} bytes of input"
                f" its program has not read yet; nothing of these {len(data)} bytes was sent"
            )
        child.write(data)
        self.info.lastActivity = now_ns()

    def write_now(self, data: bytes) -> bool:
        """Queue input for the active window unless its PTY is already far behind;
        returns False (nothing queued) if it is, or if ``write`` would refuse it.
        The synchronous half of :meth:`write_paced`, for a caller that has no
        time to await (a transport's ``data_received``)."""
        child = self.mux.get(None).child
        if child.input_pending + len(data) > INPUT_HIGH_WATER:
            return False
        self.write(data)
        return True

    async def write_paced(self, data: bytes) -> None:
        """Queue input for the active window, then wait while its PTY is far behind:
        an interactive client that pastes faster than the program reads is slowed
        down (its connection is not read meanwhile) instead of losing input."""
        child = self.mux.get(None).child
        self.write(data)
        await child.input_below(INPUT_HIGH_WATER)

    # -- clients ------------------------------------------------------------
    def attach(
        self, client: AttachedClient, *, window_id: int | None, resume_seq: int | None
    ) -> None:
        """Add a client and bring it up to date: exact tail on resume, else a snapshot."""
        if window_id is not None:
            self.mux.select(window_id)
        window = self.mux.get(None)
        self.clients[client.id] = client
        if client.writable and client.size is not None:
            client.size_changed_at = now_ns()
        self._set_state()
        self.apply_size_policy()
        tail = window.backlog_since(resume_seq) if resume_seq is not None else None
        if tail is not None and resume_seq is not None:
            client.send_output(window.id, resume_seq, tail)
        else:
            self._redraw(client, window)

    def detach(self, client: AttachedClient) -> None:
        if self.clients.pop(client.id, None) is not None:
            self._set_state()
            self.apply_size_policy()

    def client_resized(self, client: AttachedClient, size: PTYConfig) -> None:
        client.size = size
        client.size_changed_at = now_ns()
        self.apply_size_policy()

    def apply_size_policy(self) -> None:
        """Size every window from the writable clients (observers never count)."""
        sized = [c for c in self.clients.values() if c.writable and c.size is not None]
        if not sized:
            return
        if self.size_policy == "smallest":
            rows = min(c.size.rows for c in sized if c.size)
            cols = min(c.size.cols for c in sized if c.size)
            xpix = ypix = 0
        elif self.size_policy == "largest":
            rows = max(c.size.rows for c in sized if c.size)
            cols = max(c.size.cols for c in sized if c.size)
            xpix = ypix = 0
        else:
            latest = max(sized, key=lambda c: c.size_changed_at).size
            assert latest is not None
            rows, cols, xpix, ypix = latest.rows, latest.cols, latest.xPixel, latest.yPixel
        # A client's terminal may be bigger than a window may be: the window stops
        # at the limit and the client shows the rest as unused area.
        rows, cols = min(rows, MAX_ROWS), min(cols, MAX_COLS)
        term = self.info.pty.term if self.info.pty else ""
        try:
            self.resize(PTYConfig(term, rows, cols, xpix, ypix))
        except Conflict as exc:
            # Out of screen memory: keep the current size; clients see unused area.
            self.broadcast({"event": "notice", "level": "warning", "message": str(exc)})

    def resize(self, pty: PTYConfig) -> bool:
        """Resize every window (tmux does the same, so switching never shows a
        wrongly sized window). Returns whether anything changed."""
        pty.validate()
        current = self.info.pty
        assert current is not None
        if (current.rows, current.cols, current.xPixel, current.yPixel) == (
            pty.rows,
            pty.cols,
            pty.xPixel,
            pty.yPixel,
        ):
            return False
        self.events.budget.reserve(
            [(self.id, w.id) for w in self.mux.windows()],
            pty.cols,
            pty.rows,
            self.events.history_lines,
        )
        self.info.pty = PTYConfig(current.term, pty.rows, pty.cols, pty.xPixel, pty.yPixel)
        for window in self.mux.windows():
            window.resize(self.info.pty)
        self.broadcast({"event": "resized", "rows": pty.rows, "cols": pty.cols})
        # Every client's cursor and contents were laid out for the old size: redraw
        # them from the resized screen, so output that follows lands in place.
        active = self.mux.get(None)
        for client in list(self.clients.values()):
            self._redraw(client, active)
        self.events.changed(self, "resized", self.info.pty.to_json())
        return True

    def _set_state(self) -> None:
        if self.closed:
            return
        new = SessionState.ACTIVE if self.clients else SessionState.SUSPENDED
        if new != self.info.state:
            self.info.state = new
            self.events.changed(self, "state", {"state": str(new)})

    def broadcast(self, event: dict[str, Any]) -> None:
        for client in list(self.clients.values()):
            client.send_event(event)

    # -- waiting --------------------------------------------------------------
    async def wait_match(self, pattern: str, window_id: int | None, timeout: float | None) -> str:
        """Wait until ``pattern`` matches the window's current screen or the output
        it produces from now on (escape sequences removed). Returns the match."""
        # RE2, linear time: a caller's pattern must not be able to stall the loop.
        regex = compile_pattern(pattern)
        window = self.mux.get(window_id)
        if m := regex.search(window.screen.text()):
            return m.group(0)
        waiter = _OutputWaiter(regex, window)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter.future, timeout)
        finally:
            self._waiters.remove(waiter)

    async def wait_exit(self, timeout: float | None) -> int | None:
        """Wait for the session to close; returns its exit code."""
        if self.closed:
            return self.info.exitCode
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._exit_waiters.append(fut)
        return await asyncio.wait_for(fut, timeout)

    # -- closing ---------------------------------------------------------------
    def close(self) -> None:
        """Hang up every window; the session finishes when the last one exits."""
        for window in self.mux.windows():
            window.child.hangup()

    def finish(self, reason: CloseReason, exit_code: int | None = None) -> None:
        """Mark the session closed, end every client, wake every waiter."""
        if self.closed:
            return
        if self.mux.windows():
            # Closed for a reason other than its processes exiting: hang them up.
            self.close()
        self.info.state = SessionState.CLOSED
        self.info.closeReason = reason
        self.info.exitCode = exit_code
        self.info.closedAt = now_ns()
        message = f"session {self.info.id} closed ({reason}"
        message += f", exit code {exit_code})" if exit_code is not None else ")"
        for client in list(self.clients.values()):
            client.send_event(
                {
                    "event": "closed",
                    "session": self.id,
                    "reason": str(reason),
                    "exitCode": exit_code,
                }
            )
            client.end("closed", message)
        self.clients.clear()
        for fut in self._exit_waiters:
            if not fut.done():
                fut.set_result(exit_code)
        for waiter in self._waiters:
            waiter.window_gone(None)
        self.events.closed(self)


class _OutputWaiter:
    """Matches a regex against new output (bounded to the last 1 MiB) and, shortly
    after each burst of output, against the screen: a full-screen program can
    reveal text without printing it again (leaving the alternate screen)."""

    LIMIT = 1 << 20
    SCREEN_CHECK_DELAY = 0.05

    def __init__(self, regex: Pattern, window: WindowRuntime) -> None:
        self.regex = regex
        self.window = window
        self.text = ""
        self._loop = asyncio.get_running_loop()
        self.future: asyncio.Future[str] = self._loop.create_future()
        self._screen_check: asyncio.TimerHandle | None = None
        self.future.add_done_callback(lambda _: self._screen_check and self._screen_check.cancel())

    def feed(self, window: WindowRuntime, data: bytes) -> None:
        if window is not self.window or self.future.done():
            return
        self.text += strip_escapes(data).decode("utf-8", "replace")
        if len(self.text) > self.LIMIT:
            self.text = self.text[-self.LIMIT // 2 :]
        if m := self.regex.search(self.text):
            self.future.set_result(m.group(0))
        elif self._screen_check is None:
            self._screen_check = self._loop.call_later(self.SCREEN_CHECK_DELAY, self._check_screen)

    def _check_screen(self) -> None:
        self._screen_check = None
        if not self.future.done() and (m := self.regex.search(self.window.screen.text())):
            self.future.set_result(m.group(0))

    def window_gone(self, window: WindowRuntime | None) -> None:
        if (window is None or window is self.window) and not self.future.done():
            from tachi.errors import NotFound

            self.future.set_exception(NotFound("the window closed before the pattern appeared"))
