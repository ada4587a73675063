"""tachi: remote terminal session management.

A per-host daemon (``tachid``) owns PTY sessions; the ``tachi`` CLI, this
package's :class:`Client` and plugins talk to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tachi.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__", "hookimpl"]

if TYPE_CHECKING:
    from tachi.client.aio import AsyncClient
    from tachi.client.sync import Client


def __getattr__(name: str) -> Any:
    # Lazy, so `import tachi` stays cheap for the CLI's start-up.
    if name == "Client":
        from tachi.client.sync import Client

        return Client
    if name == "AsyncClient":
        from tachi.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(name)
