"""Notification hooks whose failing plugins are reported once and backed off.

An audit shipper whose collector is gone would otherwise fail on every record:
thousands of tracebacks in the daemon's log, and time spent failing on the
event loop. Each implementation is called on its own, so one broken plugin
never stops the others; its first failure is logged as one line, later ones are
only counted, and it is skipped for a pause that doubles with each failure (up
to ``MAX_PAUSE``) until a call succeeds again, which is logged too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("tachi.plugins")

FIRST_PAUSE = 1.0
MAX_PAUSE = 300.0


@dataclass(slots=True)
class _Health:
    failures: int = 0
    skipped: int = 0
    retry_at: float = 0.0


class GuardedHook:
    """Calls every implementation of one notification hook, isolating failures."""

    def __init__(self, caller: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._caller = caller
        self._clock = clock
        self._health: dict[str, _Health] = {}

    def __call__(self, **kwargs: Any) -> None:
        for impl in self._caller.get_hookimpls():
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                continue
            health = self._health.setdefault(impl.plugin_name, _Health())
            now = self._clock()
            if now < health.retry_at:
                health.skipped += 1
                continue
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception as exc:
                self._failed(impl.plugin_name, health, exc, now)
            else:
                if health.failures:
                    log.warning(
                        "plugin %s works again in %s after %d failed and %d skipped calls",
                        impl.plugin_name,
                        self._caller.name,
                        health.failures,
                        health.skipped,
                    )
                    health.failures = health.skipped = 0

    def _failed(self, plugin: str, health: _Health, exc: Exception, now: float) -> None:
        health.failures += 1
        pause = min(MAX_PAUSE, FIRST_PAUSE * 2 ** (health.failures - 1))
        health.retry_at = now + pause
        if health.failures == 1:
            log.error(
                "plugin %s failed in %s: %s: %s (retrying with back-off; further"
                " failures are counted, not logged, until it works again)",
                plugin,
                self._caller.name,
                type(exc).__name__,
                exc,
            )
