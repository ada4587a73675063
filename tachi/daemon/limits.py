"""What one connection may cost the daemon, the same on every transport.

A peer that pipelines requests and never reads its replies must slow itself
down, not grow the daemon: each connection runs at most ``requests`` requests
at once, and starts no new one while more than ``unsent`` bytes wait to be sent
to it. Either way its connection stops reading, so the frames it keeps sending
wait in its own socket buffers (the transports read ahead at most ``requests``
frames). Attached output and the event stream keep themselves under
``client_buffer`` each (resynchronising or dropping), so ``unsent`` is twice
that: only replies push a connection over it. docs/protocol.md ("Limits")
gives the bound in bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tachi.core.clients import Wire

#: ``[limits] requests``: requests one connection runs at once (and frames a
#: transport reads ahead of them) unless the config says otherwise.
REQUESTS = 64
#: The most ``[limits] requests`` may be.
MAX_REQUESTS = 4096
#: ``[limits] connections``: connections open at once per principal other than
#: the daemon's own user (per grant for a token): what one share link or remote
#: user can make the daemon hold is this times one connection's bound.
CONNECTIONS = 64
#: How often a connection over its budget looks again when its transport
#: cannot say when it drained (its own queue empty, the socket's still full).
_RECHECK_SECONDS = 0.05


class _Settings(Protocol):
    """What the limits are made from: ``tachi.config.Config`` (not imported: the
    config module imports this one for its defaults)."""

    requests: int
    client_buffer: int


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds of one connection (see the module docstring)."""

    requests: int = REQUESTS
    unsent: int = 2 << 20

    @classmethod
    def of(cls, config: _Settings) -> ConnectionLimits:
        return cls(requests=config.requests, unsent=2 * config.client_buffer)

    @property
    def read_ahead(self) -> int:
        """Frames a transport queues for the connection before it stops reading."""
        return self.requests

    @property
    def resume_at(self) -> int:
        """Queued frames at or below which a paused transport reads again."""
        return max(1, self.requests // 4)


async def below(wire: Wire, budget: int) -> None:
    """Return once at most ``budget`` bytes wait to be sent on ``wire`` (or it closed).

    Waits on the transport's own drain signal; a transport that reports drained
    while its socket still holds more than ``budget`` is polled, so this never
    spins."""
    while wire.buffered() > budget:
        await wire.drained()
        if wire.buffered() > budget:
            await asyncio.sleep(_RECHECK_SECONDS)
