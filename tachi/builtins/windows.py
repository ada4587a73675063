"""The built-in multiplexer: tmux-style windows in a session.

It owns the set of windows and which one is active; spawning and screen
handling stay with the session. Selection falls back to the most recently used
window when the active one closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tachi.errors import NotFound
from tachi.hookspecs import hookimpl

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tachi.core.window import WindowRuntime


class WindowHost(Protocol):
    """What a multiplexer needs from its session."""

    def spawn_window(
        self, window_id: int, command: Sequence[str], name: str | None
    ) -> WindowRuntime:
        """Start a window's process; raises ``FileNotFoundError``/``OSError``."""

    def active_window_changed(self, old: WindowRuntime | None, new: WindowRuntime | None) -> None:
        """Redraw attached clients, mark the recording, notify plugins."""


class WindowMultiplexer:
    """Windows with ids from 0, never reused; one active; most-recently-used fallback."""

    def __init__(self, host: WindowHost) -> None:
        self._host = host
        self._windows: dict[int, WindowRuntime] = {}
        self._mru: list[int] = []
        self._next_id = 0

    @property
    def active(self) -> WindowRuntime | None:
        return self._windows[self._mru[-1]] if self._mru else None

    def windows(self) -> list[WindowRuntime]:
        return [self._windows[i] for i in sorted(self._windows)]

    def get(self, window_id: int | None) -> WindowRuntime:
        """The window with that id, or the active one for ``None``. Raises ``NotFound``."""
        if window_id is None:
            if self.active is None:
                raise NotFound("the session has no windows left")
            return self.active
        try:
            return self._windows[window_id]
        except KeyError:
            raise NotFound(f"no window {window_id} in this session") from None

    def new_window(
        self,
        command: Sequence[str],
        name: str | None = None,
        *,
        select: bool = True,
        window_id: int | None = None,
    ) -> WindowRuntime:
        """Start a window. ``window_id`` is for a daemon re-creating a window it
        adopted (ids stay unique: later windows get higher ones)."""
        if window_id is None or window_id in self._windows:
            window_id = self._next_id
        window = self._host.spawn_window(window_id, command, name)
        self._next_id = max(self._next_id, window_id + 1)
        self._windows[window_id] = window
        if select or not self._mru:
            self._activate(window)
        else:
            self._mru.insert(0, window_id)
        return window

    def select(self, window_id: int) -> WindowRuntime:
        window = self.get(window_id)
        if window is not self.active:
            self._activate(window)
        return window

    def cycle(self, step: int) -> WindowRuntime:
        """Select the next (``step=1``) or previous (``-1``) window by id order."""
        ids = sorted(self._windows)
        current = self.get(None).id
        return self.select(ids[(ids.index(current) + step) % len(ids)])

    def rename(self, window_id: int, name: str) -> WindowRuntime:
        window = self.get(window_id)
        window.name = name
        return window

    def close(self, window_id: int) -> None:
        """Hang up the window's process; it is removed when the process exits."""
        self.get(window_id).child.hangup()

    def window_exited(self, window: WindowRuntime) -> WindowRuntime | None:
        """Forget an exited window; returns the new active window (``None`` if none)."""
        old_active = self.active
        self._windows.pop(window.id, None)
        if window.id in self._mru:
            self._mru.remove(window.id)
        new_active = self.active
        if old_active is window:
            self._host.active_window_changed(old_active, new_active)
        return new_active

    def _activate(self, window: WindowRuntime) -> None:
        old = self.active
        if window.id in self._mru:
            self._mru.remove(window.id)
        self._mru.append(window.id)
        self._host.active_window_changed(old, window)


@hookimpl(trylast=True)
def tachi_multiplexer() -> type[WindowMultiplexer]:
    return WindowMultiplexer
