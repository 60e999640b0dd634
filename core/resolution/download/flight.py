"""At most one download per cache key: one task per event loop, one holder per machine.

Inside a process, concurrent callers for a key await the same task (32 requests -> one
download). Across processes (several servers sharing a cache dir) a lock file per key
serialises them; the second finds the first one's result already installed. The lock is
``flock`` (Linux and other Unixes), the same lock filelock's ``UnixFileLock`` takes.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
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

    def _finished(self, slot: tuple[int, str], task: asyncio.Task) -> None:
        if self._tasks.get(slot) is task:
            del self._tasks[slot]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away


class KeyLock:
    """An exclusive ``flock`` on a key's lock file, which its holder may delete.

    Lock files must not pile up (one per name ever asked for), so a holder whose key has no
    entry deletes the file before releasing it. That is safe because of two rules: the file
    is unlinked only while its lock is held, and a locker that wins a lock checks that the
    file it locked is still the one at the path (same inode); if it is not, it locked a file
    a previous holder already unlinked, and it tries again on the path's current file. So at
    any moment at most one process holds the lock on the file that is at the path.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def unlink(self) -> None:
        """Delete the lock file (only while holding it; lockers waiting on it try again)."""
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        os.close(self._fd)  # closing the only descriptor drops the flock


def try_lock(path: Path) -> KeyLock | None:
    """The lock if it is free right now, else ``None`` (eviction skips busy entries)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            return KeyLock(path, fd)
        os.close(fd)  # we locked an unlinked file: lock the one at the path now


@asynccontextmanager
async def interprocess_lock(path: Path, poll_s: float = 0.05) -> AsyncIterator[KeyLock]:
    """Hold ``path``'s lock without blocking the loop (polled, so cancellation is safe)."""
    while (lock := try_lock(path)) is None:
        await asyncio.sleep(poll_s)
    try:
        yield lock
    finally:
        lock.release()
