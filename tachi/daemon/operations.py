"""The operation table: every module whose declared operations the daemon serves.

Explicit on purpose: an operation exists because its module is listed here,
not because something happened to import it. :func:`table` collects the
declarations (:func:`tachi.daemon.ops.operation`) and refuses a name declared
twice.
"""

from __future__ import annotations

from tachi.daemon import (
    client_ops,
    daemon_ops,
    events_ops,
    exec_ops,
    record_ops,
    run_ops,
    session_ops,
    share_ops,
    terminal_ops,
    token_ops,
)
from tachi.daemon.ops import Operation, declared_in

MODULES = (
    session_ops,
    client_ops,
    run_ops,
    events_ops,
    exec_ops,
    record_ops,
    share_ops,
    token_ops,
    terminal_ops,
    daemon_ops,
)


def table() -> dict[str, Operation]:
    """Every operation by name. Raises ``RuntimeError`` for a name declared twice."""
    ops: dict[str, Operation] = {}
    for module in MODULES:
        for op in declared_in(module):
            if op.name in ops:
                raise RuntimeError(f"operation {op.name!r} is declared twice")
            ops[op.name] = op
    return ops
