"""At most one download per cache key inside a process: concurrent callers for a key await
the same task (32 requests -> one download). Across processes the key's lock file does the
same (``store.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class SingleFlight:
    """Share one running coroutine per key among all concurrent callers on a loop."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[int, str], asyncio.Task] = {}

    async def run(self, key: str, start: Callable[[], Awaitable[T]]) -> T:
        """Join the task for ``key`` or start it; a caller's cancellation never stops it."""
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        task = self._tasks.get(slot)
        if task is None:
            task = loop.create_task(start())
            self._tasks[slot] = task
            task.add_done_callback(lambda done: self._finished(slot, done))
        return await asyncio.shield(task)

    def _finished(self, slot: tuple[int, str], task: asyncio.Task) -> None:
        if self._tasks.get(slot) is task:
            del self._tasks[slot]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away
