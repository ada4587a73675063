"""Run a check at a fixed interval for as long as its owner lives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tachi.gotime import now_ns


async def every(interval: float, check: Callable[[int], None], log: logging.Logger) -> None:
    """Call ``check(now_ns)`` every ``interval`` seconds until cancelled.

    A failing check is logged and the loop goes on: one bad tick must not end
    timeout enforcement for every session.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            check(now_ns())
        except Exception:
            log.exception("periodic %s failed", getattr(check, "__qualname__", check))
