"""Run a check at a fixed interval for as long as its owner lives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tachi.gotime import now_ns

#: A tick this much later than asked means something blocked the event loop.
STALL_SECONDS = 1.0


async def every(
    interval: float, check: Callable[[int], None], log: logging.Logger, *, watch: bool = False
) -> None:
    """Call ``check(now_ns)`` every ``interval`` seconds until cancelled.

    A failing check is logged and the loop goes on: one bad tick must not end
    timeout enforcement for every session. With ``watch``, a tick that comes
    ``STALL_SECONDS`` late is logged as a stall of the event loop (every client
    waited that long), which is the evidence a slow-handshake report needs.
    """
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        late = loop.time() - due
        if watch and late >= STALL_SECONDS:
            log.warning("the event loop was blocked for %.1f s", late)
        try:
            check(now_ns())
        except Exception:
            log.exception("periodic %s failed", getattr(check, "__qualname__", check))
