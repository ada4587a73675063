"""Tasks with an owner: whoever starts one awaits it before it goes away.

asyncio keeps only a weak reference to a task, and a task nobody awaits can
outlive what it uses: an exec supervisor that writes to an audit log closed a
moment before. A :class:`TaskSet` holds its tasks, logs a failure (once, with
its traceback) when one ends with one, and :meth:`TaskSet.close` gives them a
grace to finish before cancelling the rest, and returns once every one has
exited. The daemon owns its connections' tasks, each connection its requests
and background work (an exec supervisor), so the database and the audit log
close only after all of it has stopped.

Not ``asyncio.TaskGroup``: one failing request must not cancel its siblings,
and connections come and go for the daemon's whole life.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("tachi.tasks")
T = TypeVar("T")


class TaskSet:
    """Owned tasks (see the module docstring); ``name`` says whose in the log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task of this set. Raises ``RuntimeError`` (and closes
        the coroutine) once the set is closing: nothing new starts then."""
        if self._closing:
            coro.close()
            raise RuntimeError(f"{self.name} is closing: no new task")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def adopt(self, task: asyncio.Task[T]) -> asyncio.Task[T]:
        """Own a task started elsewhere (a transport's task serving a connection:
        its failure is for the transport to log)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` has begun: :meth:`spawn` refuses from then on."""
        return self._closing

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task of %s failed", self.name, exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, grace: float = 0.0) -> None:
        """Let the tasks finish for up to ``grace`` seconds, cancel those left,
        and return once all have exited (the caller's own task excepted)."""
        self._closing = True
        me = asyncio.current_task()
        tasks = {t for t in self._tasks if t is not me}
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        # Failures were logged as each ended; a cancelled one is what we asked for.
        await asyncio.gather(*tasks, return_exceptions=True)
