"""Calling plugins so that a failing, slow or blocking one cannot take the daemon down.

Every hook implementation is called on its own (pluggy's ``get_hookimpls()``),
so one broken plugin never hides the others' answers, and every call is timed.

- :class:`GuardedHook` is for notification hooks (``tachi_audit_event``,
  ``tachi_session_event``): a failing plugin is logged once, its later
  failures only counted, and it is skipped for a pause that doubles with each
  failure (up to ``MAX_PAUSE``) until a call succeeds again, which is logged
  too. A call longer than ``DEADLINE`` counts as a failure.
- :class:`OffLoopHook` runs a :class:`GuardedHook` on a worker thread, in order,
  for hooks whose implementations are expected to block (audit shippers talk to
  the network): the event loop only queues the call.
- :class:`CheckedHook` is for decision hooks (``tachi_authenticate``,
  ``tachi_authorize``), which must answer before a request can go on and so run
  on the event loop: an answer that is not of the expected type, an exception
  other than a ``TachiError`` (``PermissionDenied`` is a refusal), or a call over
  ``DEADLINE`` is a failure, reported in the :class:`Verdict` for the caller to
  decide what a failure means (authorize: deny; authenticate: no answer). A
  plugin that overran its deadline is skipped (a failure too) with the same
  doubling pause, so a hook that blocks freezes the loop once per pause, not
  once per request.

Whatever is logged names the plugin and the hook: a failure that backs off once
until the plugin works again, other failures and slow calls at most once per
``LOG_INTERVAL`` per plugin and hook, with the count of what was not logged.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from tachi.errors import TachiError

log = logging.getLogger("tachi.plugins")

FIRST_PAUSE = 1.0
MAX_PAUSE = 300.0
#: A hook call slower than this is logged: on the event loop, every client waited.
SLOW = 0.1
#: A call longer than this is a failure (its answer is not used), and the plugin
#: is skipped for a while.
DEADLINE = 1.0
#: Repeated failures or slow calls of one plugin in one hook are logged at most this often.
LOG_INTERVAL = 60.0
#: Calls queued for an off-loop hook; beyond this, new ones are dropped and counted.
MAX_QUEUED = 10_000


@dataclass(slots=True)
class _Health:
    failures: int = 0
    skipped: int = 0
    retry_at: float = 0.0
    #: Failures and slow calls not logged since the last line about them.
    unlogged_failures: int = 0
    unlogged_slow: int = 0
    failure_logged_at: float | None = None
    slow_logged_at: float | None = None


def _is_wrapper(impl: Any) -> bool:
    return bool(impl.hookwrapper or getattr(impl, "wrapper", False))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Timing:
    """Per-plugin health of one hook: back-off, and rate-limited log lines."""

    def __init__(self, hook: str, clock: Callable[[], float]) -> None:
        self.hook = hook
        self.clock = clock
        self.health: dict[str, _Health] = {}

    def of(self, plugin: str) -> _Health:
        health = self.health.get(plugin)
        if health is None:
            health = self.health[plugin] = _Health()
        return health

    def paused(self, plugin: str, now: float) -> bool:
        health = self.of(plugin)
        if now < health.retry_at:
            health.skipped += 1
            return True
        return False

    def slow(self, plugin: str, elapsed: float, now: float, where: str) -> None:
        health = self.of(plugin)
        if health.slow_logged_at is not None and now - health.slow_logged_at < LOG_INTERVAL:
            health.unlogged_slow += 1
            return
        more = f" ({health.unlogged_slow} more slow calls)" if health.unlogged_slow else ""
        log.warning("plugin %s took %.2f s in %s%s%s", plugin, elapsed, self.hook, where, more)
        health.slow_logged_at = now
        health.unlogged_slow = 0

    def failed(self, plugin: str, why: str, now: float, *, back_off: bool) -> bool:
        """Count a failure; returns whether it was logged (first, or once per interval)."""
        health = self.of(plugin)
        health.failures += 1
        if back_off:
            health.retry_at = now + min(MAX_PAUSE, FIRST_PAUSE * 2 ** (health.failures - 1))
            if health.failures > 1:  # reported when it works again
                return False
        elif health.failure_logged_at is not None and now - health.failure_logged_at < LOG_INTERVAL:
            health.unlogged_failures += 1
            return False
        more = (
            f"; {health.unlogged_failures} more failures since the last report"
            if health.unlogged_failures
            else ""
        )
        log.error(
            "plugin %s failed in %s: %s (%s%s)",
            plugin,
            self.hook,
            why,
            "retrying with back-off; further failures are counted, not logged, until it works again"
            if back_off
            else "its answer is not used",
            more,
        )
        health.failure_logged_at = now
        health.unlogged_failures = 0
        return True

    def worked(self, plugin: str) -> None:
        health = self.health.get(plugin)
        if health is None or not health.failures:
            return
        if health.retry_at:
            log.warning(
                "plugin %s works again in %s after %d failed and %d skipped calls",
                plugin,
                self.hook,
                health.failures,
                health.skipped,
            )
        health.failures = health.skipped = 0
        health.retry_at = 0.0


class GuardedHook:
    """Calls every implementation of one notification hook, isolating failures.

    ``deadline`` (seconds, or ``None`` for a hook that may block off the loop)
    makes a longer call a failure."""

    def __init__(
        self,
        caller: Any,
        clock: Callable[[], float] = time.monotonic,
        *,
        deadline: float | None = DEADLINE,
    ) -> None:
        self._caller = caller
        self._clock = clock
        self._deadline = deadline
        self._timing = _Timing(caller.name, clock)
        #: The plugin being called and since when (read by :class:`OffLoopHook`'s watchdog).
        self.current: tuple[str, float] | None = None

    @property
    def name(self) -> str:
        return str(self._caller.name)

    def implemented(self) -> bool:
        """Whether any plugin implements the hook (now: plugins may come later)."""
        return bool(self._caller.get_hookimpls())

    def __call__(self, **kwargs: Any) -> None:
        for impl in self._caller.get_hookimpls():
            if _is_wrapper(impl):
                continue
            plugin = impl.plugin_name
            now = self._clock()
            if self._timing.paused(plugin, now):
                continue
            self.current = (plugin, now)
            try:
                impl.function(*[kwargs[name] for name in impl.argnames])
            except Exception as exc:
                self._timing.failed(plugin, _describe(exc), self._clock(), back_off=True)
                continue
            finally:
                self.current = None
            done = self._clock()
            elapsed = done - now
            if self._deadline is not None and elapsed > self._deadline:
                why = f"took {elapsed:.1f} s (deadline {self._deadline:g} s)"
                self._timing.failed(plugin, why, done, back_off=True)
                continue
            if elapsed > SLOW:
                self._timing.slow(plugin, elapsed, done, "")
            self._timing.worked(plugin)


class OffLoopHook:
    """Runs a :class:`GuardedHook` on its own thread, in call order.

    For notification hooks whose implementations may block (an audit shipper
    waiting for its collector): the caller only queues the call. At most
    ``MAX_QUEUED`` calls wait; beyond that they are dropped and counted. A call
    that has run longer than ``DEADLINE`` is reported, naming the plugin, as
    soon as the next call is queued.
    """

    def __init__(self, hook: GuardedHook, clock: Callable[[], float] = time.monotonic) -> None:
        self._hook = hook
        self._clock = clock
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._busy = False
        self._dropped = 0
        self._reported: tuple[str, float] | None = None

    def implemented(self) -> bool:
        """Whether any plugin implements the hook (a call does nothing if not)."""
        return self._hook.implemented()

    def __call__(self, **kwargs: Any) -> None:
        if not self._hook.implemented():
            # Waking the thread for nothing cost the caller the GIL: about
            # 0.1 ms on each audited request (a ``tachi run``'s reply waited).
            return
        with self._ready:
            if self._closing:
                return
            if len(self._queue) >= MAX_QUEUED:
                self._dropped += 1
                if self._dropped == 1:
                    log.error(
                        "%s: %d calls wait for plugins; dropping more until they catch up",
                        self._hook.name,
                        len(self._queue),
                    )
            else:
                self._queue.append(kwargs)
                self._ready.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name=f"tachi-{self._hook.name}", daemon=True
                )
                self._thread.start()
            waiting = len(self._queue)
        self._watch(waiting)

    def _watch(self, waiting: int) -> None:
        current = self._hook.current
        if current is None or current == self._reported:
            return
        plugin, since = current
        stuck = self._clock() - since
        if stuck > DEADLINE:
            self._reported = current
            log.warning(
                "plugin %s has been in %s for %.1f s; %d calls wait for it",
                plugin,
                self._hook.name,
                stuck,
                waiting,
            )

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._busy = False
                    self._ready.notify_all()
                    self._ready.wait()
                if not self._queue:
                    self._busy = False
                    self._ready.notify_all()
                    return
                kwargs = self._queue.popleft()
                self._busy = True
                if self._dropped:
                    log.error("%s: %d calls were dropped", self._hook.name, self._dropped)
                    self._dropped = 0
            try:
                self._hook(**kwargs)
            except Exception:  # GuardedHook isolates plugins; this is tachi's own bug
                log.exception("%s failed", self._hook.name)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every queued call ran; says whether they did."""
        deadline = self._clock() + timeout
        with self._ready:
            while self._queue or self._busy:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._ready.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued (up to ``timeout`` seconds), then stop the thread.

        A plugin still blocked after that is left behind (the thread is a daemon
        thread) and named in the log."""
        if not self.flush(timeout):
            current = self._hook.current
            log.warning(
                "%s: gave up waiting for plugin %s after %g s; %d calls not made",
                self._hook.name,
                current[0] if current else "?",
                timeout,
                len(self._queue),
            )
        with self._ready:
            self._closing = True
            self._queue.clear()
            self._ready.notify_all()


@dataclass(slots=True)
class Verdict:
    """What the implementations of a decision hook said, one by one."""

    #: ``(plugin, answer)`` for every valid answer, in call order (for a
    #: firstresult hook, at most one that is not ``None``).
    answers: list[tuple[str, Any]] = field(default_factory=list)
    #: The plugin that refused (raised ``PermissionDenied`` or another
    #: ``TachiError``), and the exception.
    refusal: tuple[str, TachiError] | None = None
    #: ``(plugin, why)`` for every implementation that failed or was skipped.
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def result(self) -> Any:
        """A firstresult hook's answer (``None`` if nobody answered)."""
        for _plugin, answer in self.answers:
            if answer is not None:
                return answer
        return None


class CheckedHook:
    """Calls a decision hook's implementations one by one, on the event loop, timed.

    ``valid(answer)`` says whether an answer has the type the hook promises;
    ``expected`` names that type for the log. ``firstresult`` stops at the first
    valid answer that is not ``None`` (or a refusal). ``on_failure(plugin, hook,
    why)`` is called when a failure is logged (at most once per ``LOG_INTERVAL``
    per plugin), so the daemon can audit it. Wrappers (``wrapper=True`` and old
    style ``hookwrapper=True``) wrap the calls as pluggy would; an exception in
    one is a failure too, and its inner result stands.
    """

    def __init__(
        self,
        caller: Any,
        *,
        valid: Callable[[Any], bool],
        expected: str,
        firstresult: bool,
        on_failure: Callable[[str, str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._caller = caller
        self._valid = valid
        self._expected = expected
        self._firstresult = firstresult
        self._on_failure = on_failure
        self._clock = clock
        self._timing = _Timing(caller.name, clock)

    def __call__(self, **kwargs: Any) -> Verdict:
        verdict = Verdict()
        impls = self._caller.get_hookimpls()
        # pluggy calls the last in its list first: wrappers (at the end) outermost.
        started: list[tuple[Any, Any]] = []
        for impl in reversed(impls):
            if not _is_wrapper(impl):
                continue
            gen = self._call(impl, kwargs, verdict, wrapper_start=True)
            if verdict.refusal is not None:
                self._close(started)
                return verdict
            if gen is not None:
                started.append((impl, gen))
        for impl in reversed(impls):
            if _is_wrapper(impl):
                continue
            ok, answer = self._call(impl, kwargs, verdict)
            if verdict.refusal is not None:
                break
            if ok:
                verdict.answers.append((impl.plugin_name, answer))
                if self._firstresult and answer is not None:
                    break
        if verdict.refusal is not None:
            self._close(started)
            return verdict
        for impl, gen in reversed(started):
            self._finish_wrapper(impl, gen, verdict)
            if verdict.refusal is not None:
                self._close([s for s in started if s[1] is not gen])
                break
        return verdict

    def _call(
        self, impl: Any, kwargs: dict[str, Any], verdict: Verdict, *, wrapper_start: bool = False
    ) -> Any:
        """Call one implementation: ``(ok, answer)``, or for a wrapper its generator
        (``None`` if it failed). Failures and refusals go into ``verdict``."""
        plugin = impl.plugin_name
        failed: Any = None if wrapper_start else (False, None)
        start = self._clock()
        if self._timing.paused(plugin, start):
            verdict.failures.append((plugin, "skipped: it failed or was too slow recently"))
            return failed
        try:
            answer = impl.function(*[kwargs[name] for name in impl.argnames])
            if wrapper_start:
                next(answer)
        except TachiError as exc:
            verdict.refusal = (plugin, exc)
            self._timed(plugin, start)
            return failed
        except Exception as exc:
            self._fail(plugin, _describe(exc), verdict, self._clock())
            return failed
        if not self._timed(plugin, start, verdict):
            return failed
        if wrapper_start:
            return answer
        if not self._valid(answer):
            self._fail(plugin, f"returned {answer!r}, not {self._expected}", verdict, self._clock())
            return failed
        return True, answer

    def _finish_wrapper(self, impl: Any, gen: Any, verdict: Verdict) -> None:
        plugin = impl.plugin_name
        inner: Any = verdict.result if self._firstresult else [a for _, a in verdict.answers]
        start = self._clock()
        outcome = pluggy.Result(inner, None) if impl.hookwrapper else None
        try:
            gen.send(outcome if impl.hookwrapper else inner)
        except StopIteration as stop:
            answer = outcome.get_result() if outcome is not None else stop.value
        except TachiError as exc:
            verdict.refusal = (plugin, exc)
            return
        except Exception as exc:
            self._fail(plugin, _describe(exc), verdict, self._clock())
            return
        else:
            gen.close()
            self._fail(plugin, "a wrapper must yield once", verdict, self._clock())
            return
        if not self._timed(plugin, start, verdict) or answer == inner:
            return
        answers = [answer] if self._firstresult else answer
        if not isinstance(answers, list) or not all(self._valid(a) for a in answers):
            self._fail(plugin, f"returned {answer!r}, not {self._expected}", verdict, self._clock())
            return
        verdict.answers = [(plugin, a) for a in answers]

    def _timed(self, plugin: str, start: float, verdict: Verdict | None = None) -> bool:
        """Log a slow call; returns False (a failure) when it overran its deadline."""
        done = self._clock()
        elapsed = done - start
        if elapsed > DEADLINE and verdict is not None:
            why = f"took {elapsed:.1f} s, over its deadline of {DEADLINE:g} s"
            self._fail(plugin, why, verdict, done, back_off=True)
            return False
        if elapsed > SLOW:
            self._timing.slow(plugin, elapsed, done, " on the event loop")
        elif verdict is not None:
            self._timing.worked(plugin)
        return True

    def _fail(
        self, plugin: str, why: str, verdict: Verdict, now: float, *, back_off: bool = False
    ) -> None:
        verdict.failures.append((plugin, why))
        if self._timing.failed(plugin, why, now, back_off=back_off) and self._on_failure:
            self._on_failure(plugin, self._caller.name, why)

    @staticmethod
    def _close(started: list[tuple[Any, Any]]) -> None:
        for _impl, gen in started:
            try:
                gen.close()
            except Exception as exc:
                log.error(
                    "a %s wrapper failed while closing: %s", _impl.plugin_name, _describe(exc)
                )
