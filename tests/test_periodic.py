"""The periodic ticker reports a blocked event loop: the evidence for "every
client waited" reports."""

from __future__ import annotations

import asyncio
import logging
import time

from tachi.core.periodic import STALL_SECONDS, every


def test_a_blocked_loop_is_logged_with_how_long_it_was_blocked(caplog):
    log = logging.getLogger("tachi.test.periodic")
    ticks: list[int] = []

    async def scenario() -> None:
        ticker = asyncio.create_task(every(0.05, ticks.append, log, watch=True))
        await asyncio.sleep(0.2)
        time.sleep(STALL_SECONDS + 0.3)  # what a blocking call on the loop does
        await asyncio.sleep(0.2)
        ticker.cancel()

    with caplog.at_level(logging.WARNING, logger="tachi.test.periodic"):
        asyncio.run(scenario())
    stalls = [r.getMessage() for r in caplog.records if "blocked" in r.getMessage()]
    assert len(stalls) == 1, stalls
    seconds = float(stalls[0].split("for ")[1].split(" s")[0])
    assert STALL_SECONDS <= seconds < STALL_SECONDS + 1.5
    assert len(ticks) >= 4  # and it went on ticking


def test_a_ticker_not_watching_says_nothing(caplog):
    log = logging.getLogger("tachi.test.periodic2")

    async def scenario() -> None:
        ticker = asyncio.create_task(every(0.05, lambda _now: None, log))
        await asyncio.sleep(0.1)
        time.sleep(STALL_SECONDS + 0.2)
        await asyncio.sleep(0.1)
        ticker.cancel()

    with caplog.at_level(logging.WARNING, logger="tachi.test.periodic2"):
        asyncio.run(scenario())
    assert not caplog.records
