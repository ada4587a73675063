"""A typed facade over tachi's hooks: one method per hook, for tachi's own call sites.

``pm.hook.tachi_*`` takes and returns ``Any``, and a plugin's answer is only
noticed to be wrong when it is used, in the middle of a session. :class:`Hooks`
is what the daemon calls instead (as tox 4 wraps pluggy): each method has the
hook's arguments and result types, the decision hooks run one implementation at
a time with deadlines (:class:`~tachi.core.guarded_hooks.CheckedHook`), the
audit shippers run on their own thread, and what the daemon builds its
machinery from at start (the multiplexer, the recorders, the screen factories)
is checked there: a plugin that answers garbage is named in one log line and
left out, and the built-in answers instead.

Attribute access to ``tachi_*`` names falls through to pluggy's ``pm.hook``, so
a plugin that calls ``daemon.hooks.tachi_server_tls(...)`` keeps working.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tachi.core.guarded_hooks import CheckedHook, GuardedHook, OffLoopHook, Verdict
from tachi.core.principal import Principal
from tachi.errors import TachiError

if TYPE_CHECKING:
    import socket
    import ssl

    import click
    import pluggy

    from tachi.config import Config
    from tachi.core.actions import ActionRegistry
    from tachi.core.peer import Peer
    from tachi.core.screen import Screen

log = logging.getLogger("tachi.plugins")

#: What the session and the operations use of a multiplexer class (docs/plugins.md).
MULTIPLEXER_MEMBERS = (
    "active",
    "windows",
    "get",
    "new_window",
    "select",
    "cycle",
    "rename",
    "close",
    "window_exited",
)
#: The methods every screen must have (``history`` and ``has_scroll_region`` are optional).
SCREEN_METHODS = ("feed", "resize", "lines", "cursor", "ansi")
#: The size a screen factory is tried with at start.
PROBE_SIZE = (80, 24, 100)


class PluginError(TachiError):
    """No plugin (built-ins included) gave the daemon something it can run with."""

    code = "plugin"


def _is_vote(answer: Any) -> bool:
    return answer is None or isinstance(answer, bool)


def _is_identity(answer: Any) -> bool:
    return answer is None or isinstance(answer, Principal)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def multiplexer_problem(answer: Any) -> str | None:
    """Why ``answer`` is not a multiplexer class (``None`` if it looks like one)."""
    if not isinstance(answer, type):
        return f"returned {_short(answer)}, not a class"
    missing = [m for m in MULTIPLEXER_MEMBERS if not hasattr(answer, m)]
    if missing:
        return f"returned {answer.__qualname__}, which lacks {', '.join(missing)}"
    return None


def screen_problem(answer: Any) -> str | None:
    """Why ``answer`` is not a :class:`~tachi.core.screen.Screen` (``None`` if it is one)."""
    missing = [m for m in SCREEN_METHODS if not callable(getattr(answer, m, None))]
    if missing:
        return f"returned {_short(answer)}, which lacks {', '.join(missing)}"
    return None


def recorder_problem(recorder: Any) -> str | None:
    """Why ``recorder`` cannot be used as a recorder (``None`` if it can)."""
    problems = []
    fmt = getattr(recorder, "format", None)
    if not isinstance(fmt, str) or not fmt:
        problems.append("no format (a non-empty str)")
    if not isinstance(getattr(recorder, "extension", None), str):
        problems.append("no extension (a str)")
    if not callable(getattr(recorder, "open", None)):
        problems.append("no open()")
    if hasattr(recorder, "repair") and not callable(recorder.repair):
        problems.append("a repair that cannot be called")
    factory = getattr(recorder, "worker_factory", None)
    if factory is not None and (not isinstance(factory, str) or ":" not in factory):
        problems.append("a worker_factory that is not 'module:callable'")
    if problems:
        return f"registered {_short(recorder)} with {', '.join(problems)}"
    return None


class _Impls:
    """A hook caller narrowed to the implementations ``keep`` accepts (for :class:`CheckedHook`)."""

    def __init__(self, caller: Any, keep: Callable[[Any], bool]) -> None:
        self._caller = caller
        self._keep = keep
        self.name = caller.name

    def get_hookimpls(self) -> list[Any]:
        return [impl for impl in self._caller.get_hookimpls() if self._keep(impl)]


def _in_call_order(caller: Any) -> list[Any]:
    """A hook's plain implementations in the order pluggy calls them (last registered,
    ``tryfirst`` first; ``trylast`` last)."""
    return [
        impl
        for impl in reversed(caller.get_hookimpls())
        if not (impl.hookwrapper or getattr(impl, "wrapper", False))
    ]


class Hooks:
    """Every tachi hook as a typed method (see ``tachi.hookspecs`` for what each means).

    ``on_failure(plugin, hook, why)`` is told when a decision hook's plugin fails
    (the daemon audits it). Build it after every plugin is registered: which
    ``tachi_authorize`` implementations want input (``data``) is read here once,
    so that keystrokes cost nothing more when none does.
    """

    def __init__(
        self,
        pm: pluggy.PluginManager,
        *,
        on_failure: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.pm = pm
        self.raw = pm.hook
        self._authorize = CheckedHook(
            pm.hook.tachi_authorize,
            valid=_is_vote,
            expected="True, False or None",
            firstresult=False,
            on_failure=on_failure,
        )
        self._input_policies = _Impls(pm.hook.tachi_authorize, lambda i: "data" in i.argnames)
        self._authorize_input = CheckedHook(
            self._input_policies,
            valid=_is_vote,
            expected="True, False or None",
            firstresult=False,
            on_failure=on_failure,
        )
        #: Whether some policy filters input: only then is input shown to ``tachi_authorize``.
        self.filters_input = bool(self._input_policies.get_hookimpls())
        self._authenticate = CheckedHook(
            pm.hook.tachi_authenticate,
            valid=_is_identity,
            expected="a Principal or None",
            firstresult=True,
            on_failure=on_failure,
        )
        # Audit shippers talk to the network: they run on their own thread.
        self._audit_event = OffLoopHook(GuardedHook(pm.hook.tachi_audit_event, deadline=None))
        #: The ``tachi_create_screen`` implementations that passed :meth:`check_screens`.
        self._screens: list[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        # Plugins reach hooks as ``daemon.hooks.tachi_*``: that stays pluggy's.
        if name.startswith("tachi_"):
            return getattr(self.raw, name)
        raise AttributeError(name)

    # -- decisions, on the event loop ------------------------------------------
    def authenticate(self, peer: Peer) -> Verdict:
        """``tachi_authenticate``: who ``peer`` is; ``Verdict.result`` is a
        ``Principal`` or ``None``, ``Verdict.refusal`` a plugin's refusal."""
        return self._authenticate(peer=peer)

    def authorize(self, principal: Principal, action: str, session: Any) -> Verdict:
        """``tachi_authorize`` for an action (``data`` is ``None``): every policy's vote."""
        return self._authorize(principal=principal, action=action, session=session, data=None)

    def authorize_input(self, principal: Principal, session: Any, data: bytes) -> Verdict:
        """``tachi_authorize`` with ``action="session.write"`` and the input, asked
        only of the implementations that take ``data`` (see :attr:`filters_input`)."""
        return self._authorize_input(
            principal=principal, action="session.write", session=session, data=data
        )

    # -- what the daemon is built from, checked at start ------------------------
    def multiplexer(self) -> type:
        """``tachi_multiplexer``: the first answer that is a multiplexer class.

        A plugin that raises or answers something else is logged (naming it)
        and passed over. Raises :class:`PluginError` when no answer is usable.
        """
        refused = []
        for impl in _in_call_order(self.raw.tachi_multiplexer):
            try:
                answer = impl.function()
            except Exception as exc:
                problem = f"raised {type(exc).__name__}: {exc}"
            else:
                if answer is None:
                    continue
                problem = multiplexer_problem(answer)
                if problem is None:
                    return answer  # type: ignore[no-any-return]
            refused.append(impl.plugin_name)
            log.error(
                "plugin %s is not used for tachi_multiplexer: it %s", impl.plugin_name, problem
            )
        raise PluginError(
            "no usable multiplexer (tachi_multiplexer)"
            + (f": refused {', '.join(refused)}" if refused else ": no plugin offers one")
        )

    def check_screens(self) -> None:
        """Try every ``tachi_create_screen`` implementation once (80x24): one that
        raises or answers something that is not a screen is logged, naming it,
        and never asked again. Raises :class:`PluginError` when none is left."""
        sane = []
        cols, rows, history = PROBE_SIZE
        kwargs = {"cols": cols, "rows": rows, "history": history}
        for impl in _in_call_order(self.raw.tachi_create_screen):
            try:
                answer = impl.function(*[kwargs[name] for name in impl.argnames])
            except Exception as exc:
                problem: str | None = f"raised {type(exc).__name__}: {exc}"
            else:
                problem = None if answer is None else screen_problem(answer)
            if problem is not None:
                log.error(
                    "plugin %s is not used for tachi_create_screen: it %s",
                    impl.plugin_name,
                    problem,
                )
                continue
            sane.append(impl)
        if not sane:
            raise PluginError("no usable terminal emulator (tachi_create_screen)")
        self._screens = sane

    def create_screen(self, cols: int, rows: int, history: int) -> Screen | None:
        """``tachi_create_screen``: the first screen the (checked) implementations make.

        One that answers something that is not a screen now is logged and
        skipped for this window (the next one answers)."""
        impls = self._screens
        if impls is None:
            impls = _in_call_order(self.raw.tachi_create_screen)
        kwargs = {"cols": cols, "rows": rows, "history": history}
        for impl in impls:
            answer = impl.function(*[kwargs[name] for name in impl.argnames])
            if answer is None:
                continue
            problem = screen_problem(answer)
            if problem is None:
                return answer  # type: ignore[no-any-return]
            log.error("plugin %s failed in tachi_create_screen: it %s", impl.plugin_name, problem)
        return None

    def recorders(self) -> dict[str, Any]:
        """``tachi_recorders``: every usable recorder by format; the first to register a
        format wins (plugins before built-ins). A plugin that raises or registers
        something without ``format``, ``extension`` and ``open`` is logged, naming
        it, and what it registered is not used."""
        found: dict[str, Any] = {}
        for impl in _in_call_order(self.raw.tachi_recorders):
            registered: list[Any] = []
            try:
                impl.function(*[{"register": registered.append}[n] for n in impl.argnames])
            except Exception as exc:
                log.error(
                    "plugin %s is not used for tachi_recorders: it raised %s: %s",
                    impl.plugin_name,
                    type(exc).__name__,
                    exc,
                )
                continue
            for recorder in registered:
                problem = recorder_problem(recorder)
                if problem is not None:
                    log.error(
                        "plugin %s is not used for tachi_recorders: it %s",
                        impl.plugin_name,
                        problem,
                    )
                    continue
                found.setdefault(recorder.format, recorder)
        return found

    def actions(self) -> ActionRegistry:
        """``tachi_register_actions``: the built-in actions, then each plugin's
        (``register(Action(...))``). A plugin that raises, or registers something
        that is not an ``Action``, a malformed name or one taken already, is
        logged, naming it, and that registration is not used."""
        from tachi.core.actions import ActionRegistry

        registry = ActionRegistry()
        for impl in _in_call_order(self.raw.tachi_register_actions):
            registered: list[Any] = []
            try:
                impl.function(*[{"register": registered.append}[n] for n in impl.argnames])
            except Exception as exc:
                log.error(
                    "plugin %s is not used for tachi_register_actions: it raised %s: %s",
                    impl.plugin_name,
                    type(exc).__name__,
                    exc,
                )
                continue
            for action in registered:
                try:
                    registry.register(action)
                except ValueError as exc:
                    log.error("plugin %s registered an action not used: %s", impl.plugin_name, exc)
        return registry

    def operations(self, builtin: Mapping[str, Any], actions: ActionRegistry) -> dict[str, Any]:
        """``tachi_register_operations``: ``builtin`` (the daemon's own table), then
        each plugin's declared operations. A plugin that raises, or registers a
        function that is not declared (``tachi.daemon.ops.operation``), a name
        taken already or a declaration ``actions`` cannot satisfy, is logged,
        naming it, and that operation is not served."""
        from tachi.daemon.dispatch import table_problems
        from tachi.daemon.ops import Operation

        table = dict(builtin)
        for impl in _in_call_order(self.raw.tachi_register_operations):
            registered: list[Any] = []
            try:
                impl.function(*[{"register": registered.append}[n] for n in impl.argnames])
            except Exception as exc:
                log.error(
                    "plugin %s is not used for tachi_register_operations: it raised %s: %s",
                    impl.plugin_name,
                    type(exc).__name__,
                    exc,
                )
                continue
            for function in registered:
                op = getattr(function, "__tachi_operation__", function)
                if not isinstance(op, Operation):
                    problem = f"{function!r} is not declared with tachi.daemon.ops.operation"
                elif op.name in table:
                    problem = f"operation {op.name!r} is declared already"
                else:
                    problem = "; ".join(table_problems({op.name: op}, actions)) or None
                if problem is not None:
                    log.error(
                        "plugin %s registered an operation not served: %s",
                        impl.plugin_name,
                        problem,
                    )
                    continue
                table[op.name] = op
        return table

    # -- notifications ---------------------------------------------------------
    def audit_event(self, event: dict[str, Any]) -> None:
        """``tachi_audit_event``: queued for the shippers' own thread, in order."""
        self._audit_event(event=event)

    def ships_audit_events(self) -> bool:
        """Whether any plugin implements ``tachi_audit_event``."""
        return self._audit_event.implemented()

    def close_audit_events(self, timeout: float = 5.0) -> None:
        """Give queued audit records ``timeout`` seconds to be shipped, then stop the thread."""
        self._audit_event.close(timeout=timeout)

    def session_event_hook(self) -> GuardedHook:
        """``tachi_session_event`` guarded: failures isolated per plugin, on the loop."""
        return GuardedHook(self.raw.tachi_session_event)

    # -- elsewhere: the server's TLS, the client, the CLI ------------------------
    def server_tls(self, transport: str, config: Config) -> ssl.SSLContext | None:
        """``tachi_server_tls``: a listener's TLS context from an identity plugin."""
        return self.raw.tachi_server_tls(transport=transport, config=config)  # type: ignore[no-any-return]

    def client_tls(self, url: str, options: dict[str, Any]) -> ssl.SSLContext | None:
        """``tachi_client_tls`` (client process)."""
        return self.raw.tachi_client_tls(url=url, options=options)  # type: ignore[no-any-return]

    def verify_server(self, url: str, options: dict[str, Any], certificate: bytes) -> None:
        """``tachi_verify_server`` (client process): raises ``PermissionDenied`` to refuse."""
        self.raw.tachi_verify_server(url=url, options=options, certificate=certificate)

    def connect(self, url: str, options: dict[str, Any]) -> socket.socket | None:
        """``tachi_connect`` (client process): a stream to the daemon at ``url``."""
        return self.raw.tachi_connect(url=url, options=options)  # type: ignore[no-any-return]

    def register_commands(self, cli: click.Group) -> None:
        """``tachi_register_commands`` (CLI process)."""
        self.raw.tachi_register_commands(cli=cli)
