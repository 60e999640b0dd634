"""Fetching one file: progress reporting, a no-progress watchdog, retries with backoff.

The watchdog makes every source stall-safe the same way: if no byte arrives for
``timeout_s`` the fetch is cancelled and counts as a transient failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from loraserve.errors import LoRAAdapterError
from loraserve.lora.download.source import RemoteAdapterSource, RemoteFile, TransientSourceError

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Sources map their library's errors to TransientSourceError; anything else is final.
TRANSIENT = (TransientSourceError, TimeoutError, asyncio.TimeoutError)


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
    for attempt in range(retries + 1):
        try:
            return await _fetch_watched(source, file, dest, lora_name, budget, timeout_s, on_bytes)
        except TRANSIENT as exc:
            dest.unlink(missing_ok=True)
            if attempt == retries:
                raise
            delay = min(0.25 * 2**attempt, 8.0)
            logger.warning(
                "LoRA adapter '%s': fetching %s failed (%s); retry %d/%d in %.2fs",
                lora_name,
                file.name,
                exc or type(exc).__name__,
                attempt + 1,
                retries,
                delay,
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def with_retries(call: Callable[[], Awaitable[T]], *, what: str, retries: int) -> T:
    """Await ``call()`` again after transient failures, backing off 0.25s, 0.5s, 1s, ..."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except TRANSIENT as exc:
            if attempt == retries:
                raise
            delay = min(0.25 * 2**attempt, 8.0)
            logger.warning(
                "%s failed (%s); retry %d/%d in %.2fs", what, exc, attempt + 1, retries, delay
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _fetch_watched(
    source: RemoteAdapterSource,
    file: RemoteFile,
    dest: Path,
    lora_name: str,
    budget: int,
    timeout_s: float,
    on_bytes: Callable[[int], None],
) -> int:
    state = {"last": time.monotonic(), "bytes": 0}

    def progress(n: int) -> None:
        state["last"] = time.monotonic()
        state["bytes"] += n
        if state["bytes"] > budget:
            raise LoRAAdapterError(
                lora_name,
                f"{file.name} exceeds the {budget}-byte budget left for this adapter "
                "(raise VLLM_LORA_RESOLVER_MAX_ADAPTER_BYTES to allow it)",
            )
        on_bytes(n)

    task = asyncio.ensure_future(source.fetch(file, dest, progress))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=min(timeout_s, 0.5))
            if done:
                task.result()
                break
            if time.monotonic() - state["last"] > timeout_s:
                raise TransientSourceError(f"no data for {timeout_s:g}s while fetching {file.name}")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    size = dest.stat().st_size
    if size > budget:
        raise LoRAAdapterError(lora_name, f"{file.name} exceeds the adapter size limit")
    if file.size is not None and size != file.size:
        raise TransientSourceError(f"{file.name} is {size} bytes, expected {file.size} (truncated)")
    return size
