"""The registry of control operations and the helpers they share.

Each operation is an async function ``(ctx, args) -> result`` registered with
``@operation("name")``; the connection looks it up by the request's ``op``.
Arguments are checked here so a malformed request gets a precise error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tachi.errors import InvalidRequest

if TYPE_CHECKING:
    from tachi.core.principal import Principal
    from tachi.daemon.connection import Connection
    from tachi.daemon.server import Daemon


@dataclass(slots=True)
class RequestContext:
    daemon: Daemon
    connection: Connection
    principal: Principal


Operation = Callable[[RequestContext, dict[str, Any]], Awaitable[Any]]
OPERATIONS: dict[str, Operation] = {}
#: Operations that change where a connection's keystrokes go or what the program
#: sees (a window switch, a resize): input sent after one waits until it is done.
ORDERED: set[str] = set()


def operation(name: str, *, ordered: bool = False) -> Callable[[Operation], Operation]:
    """Register an operation; ``ordered``: keystrokes sent after it on the same
    connection are applied only once it has finished."""

    def register(fn: Operation) -> Operation:
        OPERATIONS[name] = fn
        if ordered:
            ORDERED.add(name)
        return fn

    return register


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
