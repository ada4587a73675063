"""Errors that cross the wire, each with a stable code and a CLI exit status.

The daemon raises these; transports send ``{"code", "message"}``; clients
rebuild the same class from the code, so a script sees ``NotFound`` whether it
talked over a Unix socket or a WebSocket.
"""

from __future__ import annotations


class TachiError(Exception):
    """Base of every error tachi reports to a user. ``str(e)`` is one clear line."""

    code = "error"
    exit_status = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidRequest(TachiError):
    """The request is well-formed but its arguments are wrong."""

    code = "invalid"
    exit_status = 2


class NotFound(TachiError):
    """No session, window, grant or recording by that id or name."""

    code = "not_found"
    exit_status = 3


class PermissionDenied(TachiError):
    """The principal may not do this; the denial is audited."""

    code = "permission_denied"
    exit_status = 4


class TimedOut(TachiError):
    """A wait ran out of time. For ``Client.run``: ``run`` is the run's id (it
    keeps running; collect it with ``run_wait``) and ``output`` what it wrote
    before the timeout."""

    code = "timeout"
    exit_status = 124
    run: str | None = None
    output: str = ""


class WindowBusy(TachiError):
    """``run``: no shell came to the window's foreground in time (a program or
    REPL is in front), so the command was not typed."""

    code = "busy"
    exit_status = 125


class ProtocolError(TachiError):
    """A frame was malformed, oversized, truncated or out of order."""

    code = "protocol"


class DaemonUnavailable(TachiError):
    """The daemon could not be reached or started."""

    code = "unavailable"


class Conflict(TachiError):
    """The request clashes with current state (e.g. a name already in use)."""

    code = "conflict"


class AuditWriteError(TachiError):
    """The audit log could not be written (and the log is configured to fail closed).

    The daemon refuses the action it was about to audit.
    """

    code = "audit"


_BY_CODE: dict[str, type[TachiError]] = {
    cls.code: cls
    for cls in (
        TachiError,
        InvalidRequest,
        NotFound,
        PermissionDenied,
        TimedOut,
        WindowBusy,
        ProtocolError,
        DaemonUnavailable,
        Conflict,
        AuditWriteError,
    )
}


def error_from_json(d: dict[str, str]) -> TachiError:
    """Rebuild the error a peer sent; unknown codes become plain ``TachiError``."""
    cls = _BY_CODE.get(d.get("code", ""), TachiError)
    return cls(d.get("message") or "unknown error")
