"""Talking to a source: the listing deadline, byte limits, a no-progress watchdog, retries.

Every source is bounded the same way: a listing (with its retries) ends by one deadline; a
fetch stops at the file's listed size or the adapter's remaining budget, whichever is lower;
and if no byte arrives for ``timeout_s`` the fetch is cancelled as a transient failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from loraserve.errors import LoRAAdapterError
from loraserve.resolution.download.source import (
    RemoteAdapterSource,
    RemoteFile,
    RemoteListing,
    SourceUnreachableError,
    TransientSourceError,
)

logger = logging.getLogger(__name__)

# Sources map their library's errors to TransientSourceError; anything else is final.
TRANSIENT = (TransientSourceError, TimeoutError, asyncio.TimeoutError)
WATCH_INTERVAL_S = 0.5
T = TypeVar("T")


BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0


def backoff(attempt: int, jitter: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry ``attempt + 1``: full jitter, uniform in [0, 0.25 * 2**attempt]
    and at most 8 s, so many servers retrying one origin do not retry in step."""
    return jitter() * min(BACKOFF_BASE_S * 2**attempt, BACKOFF_CAP_S)


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    retries: int,
    end: float | None = None,
    jitter: Callable[[], float] = random.random,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """``attempt()``, run again after each transient failure, at most ``retries`` more times.

    ``SourceUnreachableError`` is never retried (known at once); with ``end`` (the loop's
    clock) no retry starts that its backoff would push past ``end``. The last error raises.
    """
    loop = asyncio.get_running_loop()
    for tries in range(retries + 1):
        try:
            return await attempt()
        except SourceUnreachableError:
            raise
        except TRANSIENT as exc:
            delay = backoff(tries, jitter)
            if tries == retries or (end is not None and loop.time() + delay >= end):
                raise
            logger.warning(
                "%s failed (%s); retry %d/%d in %.2fs",
                what,
                exc or type(exc).__name__,
                tries + 1,
                retries,
                delay,
            )
            await sleep(delay)
    raise AssertionError("unreachable")


class ByteLimit:
    """The progress callback a source calls before writing: raises once ``what`` passes
    ``listed`` bytes (the source sent more than it announced; worth a retry) or ``budget``
    (the adapter is too big; final). Thread-safe: some sources report from their own thread."""

    def __init__(
        self,
        lora_name: str,
        what: str,
        listed: int | None,
        budget: int,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.lora_name = lora_name
        self.what = what
        self.listed = listed
        self.budget = budget
        self.on_bytes = on_bytes
        self.total = 0
        self.last = time.monotonic()  # when bytes last arrived, for the stall watchdog
        self.error: Exception | None = None
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n
            self.last = time.monotonic()
            error = self.over(self.total)
        if error is not None:
            raise error
        self.on_bytes(n)

    def over(self, size: int) -> Exception | None:
        """The error for ``size`` bytes if it passes a bound (remembered), else ``None``."""
        if self.error is None and size > self.budget:
            self.error = LoRAAdapterError(
                self.lora_name,
                f"{self.what} exceeds the {self.budget}-byte budget left for this adapter "
                "(raise VLLM_LORA_RESOLVER_MAX_ADAPTER_BYTES to allow it)",
            )
        elif self.error is None and self.listed is not None and size > self.listed:
            self.error = TransientSourceError(
                f"{self.what}: the server sent more than the {self.listed} bytes it listed"
            )
        return self.error


async def list_within_deadline(
    source: RemoteAdapterSource,
    *,
    lora_name: str,
    deadline_s: float,
    timeout_s: float,
    retries: int,
) -> RemoteListing | None:
    """``source.list_files()``, retried after transient failures, all within ``deadline_s``.

    A source known to be unreachable (``SourceUnreachableError``) is not retried; running
    out of time raises ``TransientSourceError``, so the cache can serve its copy.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s

    async def attempt() -> RemoteListing | None:
        left = end - loop.time()
        if left <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(source.list_files(), min(timeout_s, left))

    what = f"listing LoRA adapter {lora_name!r} at {source.location}"
    try:
        return await with_retries(attempt, what=what, retries=retries, end=end)
    except SourceUnreachableError:
        raise
    except TRANSIENT as exc:
        if end - loop.time() <= 0:
            raise TransientSourceError(
                f"no listing within {deadline_s:g}s (VLLM_LORA_RESOLVER_LIST_DEADLINE)"
            ) from exc
        raise


async def fetch_file(
    source: RemoteAdapterSource,
    file: RemoteFile,
    dest: Path,
    *,
    lora_name: str,
    budget: int,
    timeout_s: float,
    retries: int,
    on_bytes: Callable[[int], None],
) -> int:
    """Fetch ``file`` into ``dest`` (retrying transient failures); return its size."""

    async def attempt() -> int:
        limit = ByteLimit(lora_name, file.name, file.size, budget, on_bytes)
        try:
            return await _fetch_watched(source, file, dest, limit, timeout_s)
        except TRANSIENT:
            dest.unlink(missing_ok=True)
            raise

    what = f"LoRA adapter {lora_name!r}: fetching {file.name}"
    return await with_retries(attempt, what=what, retries=retries)


async def _fetch_watched(
    source: RemoteAdapterSource, file: RemoteFile, dest: Path, limit: ByteLimit, timeout_s: float
) -> int:
    """Run one fetch; cancel it on a stall or once it passed a bound (a source stops when
    ``limit`` raises; the file's size on disk is watched too, for one that does not)."""
    task = asyncio.ensure_future(source.fetch(file, dest, limit))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=min(timeout_s, WATCH_INTERVAL_S))
            if done:
                exc = None if task.cancelled() else task.exception()
                if exc is not None and limit.error not in (None, exc):  # the source wrapped it
                    raise limit.error from exc
                task.result()
                break
            if limit.error is None and dest.exists():
                limit.over(dest.stat().st_size)
            if limit.error is not None:
                raise limit.error
            if time.monotonic() - limit.last > timeout_s:
                raise TransientSourceError(f"no data for {timeout_s:g}s while fetching {file.name}")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    size = dest.stat().st_size
    error = limit.over(size)
    if error is not None:
        raise error
    if file.size is not None and size != file.size:
        raise TransientSourceError(f"{file.name} is {size} bytes, expected {file.size} (truncated)")
    return size
