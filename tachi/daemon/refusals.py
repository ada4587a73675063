"""Refusals per source address: aggregated audit records, and slowed guessing.

An unthrottled stream of refused logins cost ~780 bytes of audit each (290 SSH
password guesses a second from one client; issue 26 F5). Per network address:

- **Audit**: the first refusal of each kind (``auth``, ``auth.token``,
  ``connect``) in an interval is written in full, with ``details.count`` 1;
  the rest of that interval are counted and written as one record when it
  ends (``details.count``, the most frequent ``reasons``). Memory is bounded:
  past ``MAX_SOURCES`` addresses, new ones share one ``*`` bucket.
- **Guessing**: after a wrong token or password from an address, each further
  attempt from it waits for a slot, each slot longer than the last
  (``STEP_SECONDS`` doubling up to ``MAX_STEP_SECONDS``), whatever the number
  of connections; an attempt that would wait more than ``MAX_WAIT_SECONDS``
  is refused without its secret being looked at. The count is forgotten after
  ``FORGET_SECONDS`` without failures.

Local peers (the Unix socket: no address) are never aggregated or delayed,
so the daemon's owner is never slowed by someone else's guessing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("tachi.daemon")

INTERVAL_SECONDS = 5.0
MAX_SOURCES = 4096
#: Distinct reasons kept per bucket (a guess's reason names no secret, but an
#: unknown-key refusal names the key: bounded all the same).
MAX_REASONS = 8
STEP_SECONDS = 0.05
MAX_STEP_SECONDS = 2.0
MAX_WAIT_SECONDS = 5.0
FORGET_SECONDS = 60.0
#: The reason of an attempt refused unchecked.
THROTTLED = "too many failed attempts from this address: try again later"


@dataclass(slots=True)
class _Bucket:
    """Refusals of one kind from one address in the current interval."""

    started: float
    first: dict[str, Any]
    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Guessing:
    """Failed secrets from one address, and when its next attempt may run."""

    failures: int = 0
    last_failure: float = 0.0
    next_slot: float = 0.0

    def step(self) -> float:
        return min(STEP_SECONDS * 2 ** min(self.failures - 1, 16), MAX_STEP_SECONDS)


class RefusalThrottle:
    """Decides which refusal records are written, and how long a secret waits."""

    def __init__(
        self, write: Callable[..., Any], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._write = write
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._guessing: dict[str, _Guessing] = {}
        self._timer: asyncio.TimerHandle | None = None

    # -- audit ------------------------------------------------------------------------
    def refused(self, address: str | None, record: dict[str, Any]) -> None:
        """Write ``record`` (an ``audit`` call's keywords) or count it in its
        address's bucket. Raises ``AuditWriteError`` as ``audit`` does."""
        if address is None:
            self._write(**record)
            return
        self.flush(expired_only=True)
        action = str(record.get("action"))
        key = (address, action)
        if key not in self._buckets and len(self._buckets) >= MAX_SOURCES:
            key = ("*", action)
        bucket = self._buckets.get(key)
        if bucket is None:
            details = {**(record.get("details") or {}), "count": 1}
            self._buckets[key] = _Bucket(self._clock(), {**record, "details": details})
            self._write(**{**record, "details": details})
            return
        bucket.count += 1
        reason = str(record.get("reason") or "")
        if reason in bucket.reasons or len(bucket.reasons) < MAX_REASONS:
            bucket.reasons[reason] += 1
        else:
            bucket.reasons["(other reasons)"] += 1
        self._arm()

    def flush(self, *, expired_only: bool = False) -> None:
        """Write the count of every bucket whose interval is over (or all)."""
        now = self._clock()
        for key, bucket in list(self._buckets.items()):
            if expired_only and now - bucket.started < INTERVAL_SECONDS:
                continue
            del self._buckets[key]
            if bucket.count:
                self._write_summary(key, bucket, now)

    def _write_summary(self, key: tuple[str, str], bucket: _Bucket, now: float) -> None:
        first = bucket.first
        details = {
            **(first.get("details") or {}),
            "address": key[0],
            "count": bucket.count,
            "seconds": round(now - bucket.started, 1),
            "reasons": dict(bucket.reasons.most_common()),
        }
        top = bucket.reasons.most_common(1)[0][0]
        try:
            self._write(
                **{
                    **first,
                    "principal": "-",
                    "reason": f"{bucket.count} more refusals from {key[0]} ({top})",
                    "details": details,
                }
            )
        except Exception as exc:  # the audit log's own policy (fail closed) is for requests
            log.warning("cannot audit %d refusals from %s: %s", bucket.count, key[0], exc)

    def _arm(self) -> None:
        """Write the counts when the interval ends, even if nothing else comes."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test or a tool): the next refusal or stop flushes

        def fire() -> None:
            self._timer = None
            self.flush(expired_only=True)
            if self._buckets and any(b.count for b in self._buckets.values()):
                self._arm()

        self._timer = loop.call_later(INTERVAL_SECONDS / 2, fire)

    def close(self) -> None:
        """Write every pending count (the daemon is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()

    # -- guessing ------------------------------------------------------------------------
    def secret_failed(self, address: str | None) -> None:
        """A wrong token or password came from ``address``."""
        if address is None:
            return
        now = self._clock()
        state = self._guessing.pop(address, None) or _Guessing()
        if now - state.last_failure > FORGET_SECONDS:
            state = _Guessing()
        state.failures += 1
        state.last_failure = now
        self._guessing[address] = state  # most recent last: the oldest is evicted first
        while len(self._guessing) > MAX_SOURCES:
            self._guessing.pop(next(iter(self._guessing)))

    async def before_secret(self, address: str | None) -> bool:
        """Wait for ``address``'s next slot to check a secret; ``False`` when
        that is more than ``MAX_WAIT_SECONDS`` away (refuse it unchecked)."""
        state = self._guessing.get(address) if address is not None else None
        if state is None:
            return True
        now = self._clock()
        if now - state.last_failure > FORGET_SECONDS:
            del self._guessing[address]  # type: ignore[arg-type]
            return True
        start = max(now, state.next_slot)
        if start - now > MAX_WAIT_SECONDS:
            return False
        state.next_slot = start + state.step()
        if start > now:
            await asyncio.sleep(start - now)
        return True
