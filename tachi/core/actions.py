"""Every action a principal can be allowed or refused, in one registry.

An action is what ``tachi_authorize`` is asked about (``session.write``,
``exec``); each control operation declares the actions it needs
(:mod:`tachi.daemon.ops`), and the daemon refuses to start with an operation
that names an action nobody registered. The built-in actions are listed here;
a plugin adds its own with the ``tachi_register_actions`` hook (as datasette's
``register_actions``), so its policies and its own requests speak the same
vocabulary as tachi's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$")


@dataclass(frozen=True, slots=True)
class Action:
    """One action: its ``name``, what it lets a principal do, and whether it is
    asked about a session (``on_session``) or the daemon itself."""

    name: str
    description: str
    on_session: bool = True


BUILTIN_ACTIONS: tuple[Action, ...] = (
    Action("session.create", "start a session", on_session=False),
    Action("session.get", "see that a session exists, and its details"),
    Action("session.read", "read what a session shows (capture, output, wait, events)"),
    Action("session.attach", "attach to a session"),
    Action("session.write", "send input to a session"),
    Action("session.resize", "resize a session"),
    Action("session.signal", "signal a session's processes"),
    Action("session.detach", "detach a session's clients"),
    Action("session.close", "close a session"),
    Action("session.rename", "rename a session"),
    Action("session.handoff", "hand a session to another user"),
    Action("session.prune", "forget closed sessions", on_session=False),
    Action("window.new", "open a window"),
    Action("window.select", "switch a session's window"),
    Action("window.rename", "rename a window"),
    Action("window.close", "close a window"),
    Action("record.start", "start recording a session"),
    Action("record.stop", "stop recording a session"),
    Action("record.read", "read a session's recordings"),
    Action("record.list", "list recordings of sessions that are gone", on_session=False),
    Action("record.rm", "remove a recording"),
    Action("share.create", "share a session (a grant and its token)"),
    Action("share.list", "list a session's grants"),
    Action("share.revoke", "revoke a session's grant"),
    Action("token.rotate", "rotate a session's share tokens"),
    Action("exec", "run a command under the daemon, with no session", on_session=False),
    Action("daemon.status", "see the daemon's status and plugins", on_session=False),
    Action("daemon.stop", "stop the daemon", on_session=False),
)


class ActionRegistry:
    """The actions known to this daemon: the built-ins, then the plugins'."""

    def __init__(self, actions: Iterable[Action] = BUILTIN_ACTIONS) -> None:
        self._actions: dict[str, Action] = {}
        for action in actions:
            self.register(action)

    def register(self, action: Action) -> None:
        """Add ``action``. Raises ``ValueError`` for a malformed name or one that
        is taken: a plugin cannot redefine what ``session.write`` means."""
        if not isinstance(action, Action):
            raise ValueError(f"not a tachi.core.actions.Action: {action!r}")
        if not _NAME.match(action.name):
            raise ValueError(f"malformed action name {action.name!r} (like 'myplugin.use')")
        if action.name in self._actions:
            raise ValueError(f"action {action.name!r} is registered already")
        self._actions[action.name] = action

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def __iter__(self) -> Iterator[Action]:
        return iter(self._actions.values())

    def __len__(self) -> int:
        return len(self._actions)

    def get(self, name: str) -> Action | None:
        return self._actions.get(name)
