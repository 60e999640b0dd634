"""At most one download per cache key: one task per event loop, one holder per machine.

Inside a process, concurrent callers for a key await the same task (32 requests -> one
download). Across processes (several servers sharing a cache dir) a lock file per key
serialises them; the second finds the first one's result already installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
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

    def in_flight(self) -> int:
        return len(self._tasks)

    def _finished(self, slot: tuple[int, str], task: asyncio.Task) -> None:
        if self._tasks.get(slot) is task:
            del self._tasks[slot]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away


@asynccontextmanager
async def interprocess_lock(path: Path, poll_s: float = 0.05) -> AsyncIterator[None]:
    """Hold ``path``'s lock without blocking the loop (polled, so cancellation is safe)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), thread_local=False)
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            await asyncio.sleep(poll_s)
    try:
        yield
    finally:
        lock.release()


def try_lock(path: Path):
    """The lock if it is free right now, else ``None`` (eviction skips busy entries)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock
