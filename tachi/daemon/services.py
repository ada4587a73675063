"""What an operation may use of the daemon: narrow, typed services.

An operation gets a :class:`~tachi.daemon.ops.RequestContext`, not the
``Daemon``: the session manager, the grants, the audit, sharing, recordings,
the config, and two small interfaces for what only the daemon itself does
(:class:`SessionEffects`: creating sessions, admitting input, the events worth
auditing; :class:`Lifecycle`: status, stop, plugins). The ``Daemon`` implements
the protocols; nothing here imports it, so the operation modules, the
connection and the daemon do not import one another in a circle (a test walks
the imports).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tachi.config import Config
    from tachi.core.clients import AttachedClient
    from tachi.core.manager import SessionManager
    from tachi.core.principal import Principal
    from tachi.core.recording import RecordingManager
    from tachi.core.session import SessionRuntime
    from tachi.daemon.sharing import SharingService
    from tachi.grants import GrantStore
    from tachi.models import SessionRequest


class Auditor(Protocol):
    """Appends audit records; raises ``AuditWriteError`` when it cannot and fails closed."""

    def audit_by(
        self,
        principal: Principal,
        action: str,
        session: str | None = None,
        *,
        result: str = "allowed",
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    def audit(self, **record: Any) -> dict[str, Any]: ...


class Policy(Protocol):
    """The authorisation decision (``tachi_authorize`` combined): for the
    dispatcher, which asks it before an operation runs; operations never do."""

    def allowed(self, principal: Principal, action: str, session: Any) -> bool: ...

    def authorize(self, principal: Principal, action: str, session: Any) -> None: ...


class SessionEffects(Protocol):
    """What the daemon does around sessions that is audited or shared."""

    def create_session(self, principal: Principal, req: SessionRequest) -> SessionRuntime: ...

    def client_attached(
        self, principal: Principal, session: SessionRuntime, client: AttachedClient
    ) -> None: ...

    def client_detached(
        self, principal: Principal, session: SessionRuntime, reason: str
    ) -> None: ...

    def window_event(
        self, principal: Principal, session: SessionRuntime, action: str, window: int
    ) -> None: ...

    def admit_input(
        self, principal: Principal, session: SessionRuntime, size: int, data: bytes | None = None
    ) -> None: ...

    def note_input(self, principal: Principal, session: SessionRuntime, data: bytes) -> None: ...

    async def grant_socket_access(self, uid: int) -> Path | None: ...

    def rotate_tokens(
        self, session: SessionRuntime, grant_id: str | None, grace_ns: int, principal: Principal
    ) -> list[dict[str, Any]]: ...

    def handoff(
        self, session: SessionRuntime, user: str, uid: int, keep: str, by: Principal
    ) -> None: ...


class Lifecycle(Protocol):
    """The daemon itself: for ``daemon.*`` and ``plugins.list``, and the links
    transports give for a shared session."""

    version: str
    keep_sessions: bool
    survival: Any
    transports: list[Any]
    pm: Any
    #: The network listeners (``tachi.daemon.listeners.Listeners``).
    listeners: Any
    #: The config file ``daemon.reload`` reads (``None``: the default one).
    config_path: Path | None

    def status(self) -> dict[str, Any]: ...

    def request_stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Services:
    """Everything an operation may reach, each as narrow as it needs."""

    config: Config
    sessions: SessionManager
    grants: GrantStore
    audit: Auditor
    sharing: SharingService
    recordings: RecordingManager
    effects: SessionEffects
    lifecycle: Lifecycle
    #: For the dispatcher (and a declared result filter): not for operation bodies.
    policy: Policy
