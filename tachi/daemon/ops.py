"""Declared control operations, and the helpers they share.

Each operation is an async function ``(ctx, args) -> result`` declared with
``@operation("session.send", action="session.write")``: its name, the action
(:mod:`tachi.core.actions`) it needs and on what, whether keystrokes sent
after it wait for it (``ordered``). The declaration is all: the dispatcher
(:mod:`tachi.daemon.dispatch`) finds the target, asks ``tachi_authorize``
(auditing a denial) and only then runs the body, which never authorises
anything itself. :mod:`tachi.daemon.operations` lists the modules whose
operations the daemon serves; declaring one registers nothing by import.

What an operation may declare it needs (the dispatcher checks, in this order):

- ``attached``: the connection is attached; the target is its session.
- ``exec_job``: the connection runs a command (``exec.start``).
- ``session``: the argument naming the target session (``live``: running), or
  ``target``: a function finding the target (a recording), or naming a session
  with a :class:`SessionRef` for the dispatcher to resolve (a run's).
- ``action``: asked on the target; a string, or a function of the request's
  arguments when a flag decides (``events.subscribe`` with ``output``).
- ``also``: a function of the context and arguments giving more actions (or
  :class:`AnyOf` them) the request needs once the target is known.
- ``may``: actions asked without refusing; the body reads ``ctx.may(action)``
  (``session.attach`` is read-only without ``session.write``).
- ``filters``: the action (or a function giving a :class:`Need`) each item of
  the result is filtered by; the body asks ``ctx.shows(item)``.
- ``owner``: only the daemon's user proven by the kernel (``"local"``), or
  that or a live daemon token (``"local-or-daemon-token"``).
- ``needs``: for an operation that only acts on its own connection, what it
  needs in words (``client.detach``: "its own attachment").

Arguments are checked here so a malformed request gets a precise error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tachi.errors import InvalidRequest

if TYPE_CHECKING:
    from tachi.config import Config
    from tachi.core.clients import AttachedClient, Wire
    from tachi.core.manager import SessionManager
    from tachi.core.principal import Principal
    from tachi.core.recording import RecordingManager
    from tachi.core.session import SessionRuntime
    from tachi.core.tasks import TaskSet
    from tachi.daemon.services import Auditor, Lifecycle, Services, SessionEffects
    from tachi.daemon.sharing import SharingService
    from tachi.grants import GrantStore


class ConnectionLike(Protocol):
    """What operations use of a connection (``tachi.daemon.connection.Connection``)."""

    wire: Wire
    closers: list[Callable[[], None]]
    exec_job: Any
    attached: AttachedClient | None
    session: SessionRuntime | None
    terminal: Any
    terminal_client: AttachedClient | None
    #: Work a request leaves running: awaited (with a grace) when the connection ends.
    tasks: TaskSet

    @property
    def principal(self) -> Principal: ...

    def send(self, message: dict[str, Any]) -> None: ...
    def send_with_reply(self) -> None: ...
    def attach(self, session: SessionRuntime, client: AttachedClient) -> None: ...
    def detach(self, reason: str) -> None: ...
    def require_attached(self) -> tuple[SessionRuntime, AttachedClient]: ...
    def deny_if_read_only(self, what: str) -> None: ...
    def open_terminal(self) -> Any: ...
    def expect_terminal(self) -> None: ...
    def adopt_terminal(self) -> Any: ...
    def read_terminal(self, prefix: bytes) -> None: ...
    def stop_terminal_input(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Need:
    """An action asked on a target (``None``: the daemon itself)."""

    action: str
    target: Any = None


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Allowed if any of ``needs`` is; refused (and audited) as the last one."""

    needs: tuple[Need, ...]


@dataclass(frozen=True, slots=True)
class SessionRef:
    """A ``target`` function's answer naming a session by id or name, for the
    dispatcher to resolve with the declared action; ``missing`` is raised
    instead of the lookup's ``NotFound`` (a run's id must not reveal the id of
    a session the caller may not see)."""

    ref: str
    missing: Exception | None = None


Handler = Callable[["RequestContext", dict[str, Any]], Awaitable[Any]]
Owner = Literal["local", "local-or-daemon-token"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation's declaration (see the module docstring)."""

    name: str
    handler: Handler
    action: str | Callable[[dict[str, Any]], str] | None = None
    session: str | None = None
    live: bool = True
    optional_session: bool = False
    target: Callable[[RequestContext, dict[str, Any]], Any] | None = None
    also: Callable[[RequestContext, dict[str, Any]], Iterable[Need | AnyOf]] | None = None
    may: tuple[str, ...] = ()
    filters: str | Callable[[RequestContext, Any], Need | AnyOf] | None = None
    owner: Owner | None = None
    attached: bool = False
    exec_job: bool = False
    needs: str | None = None
    ordered: bool = False

    def declared_actions(self) -> set[str]:
        """The action names written in the declaration (not those a function computes)."""
        names = {a for a in (self.action, self.filters) if isinstance(a, str)}
        return names | set(self.may)

    @property
    def declares_access(self) -> bool:
        """Whether the declaration says what the operation needs at all."""
        return bool(
            self.action is not None
            or self.also is not None
            or self.may
            or self.filters is not None
            or self.owner is not None
            or self.needs is not None
        )


def operation(
    name: str,
    *,
    action: str | Callable[[dict[str, Any]], str] | None = None,
    session: str | None = None,
    live: bool = True,
    optional_session: bool = False,
    target: Callable[[RequestContext, dict[str, Any]], Any] | None = None,
    also: Callable[[RequestContext, dict[str, Any]], Iterable[Need | AnyOf]] | None = None,
    may: tuple[str, ...] = (),
    filters: str | Callable[[RequestContext, Any], Need | AnyOf] | None = None,
    owner: Owner | None = None,
    attached: bool = False,
    exec_job: bool = False,
    needs: str | None = None,
    ordered: bool = False,
) -> Callable[[Handler], Handler]:
    """Declare ``fn`` as the operation ``name`` (see the module docstring).
    ``ordered``: keystrokes sent after it on the same connection are applied
    only once it has finished. Registers nothing: the declaration is kept on
    the function for :mod:`tachi.daemon.operations` to collect."""

    def declare(fn: Handler) -> Handler:
        fn.__tachi_operation__ = Operation(  # type: ignore[attr-defined]
            name, fn, action, session, live, optional_session, target, also, may,
            filters, owner, attached, exec_job, needs, ordered,
        )  # fmt: skip
        return fn

    return declare


def declared_in(module: Any) -> list[Operation]:
    """The operations declared in ``module``, in the order they are written."""
    found = [getattr(v, "__tachi_operation__", None) for v in vars(module).values()]
    return [op for op in found if isinstance(op, Operation)]


@dataclass(slots=True)
class RequestContext:
    """One request: who asks, on which connection, what it was authorised on
    (``target``), and the services it may use."""

    services: Services
    connection: ConnectionLike
    principal: Principal
    op: Operation | None = None
    #: What the declared action was asked on (a live session, a closed
    #: session's record, a run's session…), found by the dispatcher.
    target: Any = None
    #: The answers to the declared ``may`` actions.
    granted: dict[str, bool] = field(default_factory=dict)

    # -- the services ---------------------------------------------------------
    @property
    def config(self) -> Config:
        return self.services.config

    @property
    def sessions(self) -> SessionManager:
        return self.services.sessions

    @property
    def grants(self) -> GrantStore:
        return self.services.grants

    @property
    def audit(self) -> Auditor:
        return self.services.audit

    @property
    def sharing(self) -> SharingService:
        return self.services.sharing

    @property
    def recordings(self) -> RecordingManager:
        return self.services.recordings

    @property
    def effects(self) -> SessionEffects:
        return self.services.effects

    @property
    def lifecycle(self) -> Lifecycle:
        return self.services.lifecycle

    @property
    def session(self) -> SessionRuntime:
        """The target as a live session (declared ``session=…`` with ``live``)."""
        return self.target  # type: ignore[no-any-return]

    def audit_by(self, action: str, session: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Audit ``action`` as done (or refused) by this request's principal."""
        return self.services.audit.audit_by(self.principal, action, session, **kwargs)

    # -- declared decisions -------------------------------------------------------
    def may(self, action: str) -> bool:
        """The answer to an action the operation declared in ``may``."""
        try:
            return self.granted[action]
        except KeyError:
            raise LookupError(f"{action!r} is not declared in 'may' of this operation") from None

    def shows(self, item: Any, principal: Principal | None = None) -> bool:
        """Whether ``item`` may be in the result, by the declared ``filters``
        (asked as ``principal``, by default the request's)."""
        assert self.op is not None and self.op.filters is not None, "no declared filter"
        who = principal or self.principal
        rule = self.op.filters
        need: Need | AnyOf = Need(rule, item) if isinstance(rule, str) else rule(self, item)
        policy = self.services.policy
        needs = need.needs if isinstance(need, AnyOf) else (need,)
        return any(policy.allowed(who, n.action, n.target) for n in needs)


def arg_str(args: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = args.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"missing argument {key!r}")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"argument {key!r} must be a string")
    return value


def arg_int(args: dict[str, Any], key: str, *, required: bool = False) -> int | None:
    value = args.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"missing argument {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"argument {key!r} must be an integer")
    return value


def arg_float(args: dict[str, Any], key: str) -> float | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidRequest(f"argument {key!r} must be a non-negative number")
    return float(value)


def arg_dict(args: dict[str, Any], key: str) -> dict[str, Any]:
    value = args.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"argument {key!r} must be an object")
    return value
