"""tachi: remote terminal session management.

A per-host daemon (``tachid``) owns PTY sessions; the ``tachi`` CLI, this
package's :class:`Client` and plugins talk to it.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__", "hookimpl"]

# Not `from typing import TYPE_CHECKING`: importing typing (and re with it)
# costs `tachi` about 5 ms of its start (type checkers take this spelling too).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tachi.client.aio import AsyncClient
    from tachi.client.sync import Client
    from tachi.hookspecs import hookimpl


def __getattr__(name: str) -> Any:
    # Lazy, so `import tachi` stays cheap for the CLI's start-up (no pluggy, no asyncio).
    if name == "Client":
        from tachi.client.sync import Client

        return Client
    if name == "AsyncClient":
        from tachi.client.aio import AsyncClient

        return AsyncClient
    if name == "hookimpl":
        from tachi.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(name)
