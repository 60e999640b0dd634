"""Leases on the folders the cache hands out: eviction never deletes one a caller is loading.

``DownloadCache.get`` takes one lease on the folder it returns; the caller ends it with
``release_lease(path)`` once the engine's load of that folder finished or failed (from then
on the engine, an ``AdapterOwner``, keeps the folder while it has the adapter loaded). A
lease lapses after the cache's ``lease_timeout_s``, so a caller that never releases cannot
hold the cache forever. Leases are per process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

logger = logging.getLogger(__name__)

OnFree = Callable[[str], None]  # called with the folder when its last lease ended


@dataclass
class _Lease:
    count: int
    expires: float  # monotonic
    on_free: OnFree | None


class Leases:
    """Counted leases by folder, plus the cache keys whose ``get`` is still handing out.

    Read from the cache's eviction thread and changed on the event loop, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folders: dict[str, _Lease] = {}
        self._handing_out: Counter[str] = Counter()

    def take(self, path: os.PathLike | str, ttl_s: float, on_free: OnFree | None = None) -> None:
        """One more lease on ``path``, lasting at most ``ttl_s`` seconds unreleased."""
        path = os.fspath(path)
        expires = time.monotonic() + ttl_s
        with self._lock:
            lease = self._folders.get(path)
            if lease is None:
                self._folders[path] = _Lease(1, expires, on_free)
            else:
                lease.count += 1
                lease.expires = max(lease.expires, expires)
                lease.on_free = on_free or lease.on_free

    def release(self, path: os.PathLike | str) -> None:
        """End one lease on ``path``; a no-op once none is left."""
        path = os.fspath(path)
        with self._lock:
            lease = self._folders.get(path)
            if lease is None:
                return
            lease.count -= 1
            if lease.count > 0:
                return
            del self._folders[path]
        if lease.on_free is not None:
            lease.on_free(path)

    def held(self, path: os.PathLike | str) -> bool:
        """Whether ``path`` has an unexpired lease (an expired one is dropped, with a warning)."""
        path = os.fspath(path)
        with self._lock:
            lease = self._folders.get(path)
            if lease is None:
                return False
            if lease.expires > time.monotonic():
                return True
            del self._folders[path]
        logger.warning(
            "LoRA download cache: the lease on %s lapsed without release_lease(); "
            "it may be evicted now",
            path,
        )
        return False

    def held_paths(self) -> set[str]:
        with self._lock:
            paths = list(self._folders)
        return {path for path in paths if self.held(path)}

    @contextmanager
    def handing_out(self, key: str) -> Iterator[None]:
        """While a ``get`` for ``key`` runs or hands its folder to waiters: keep that entry."""
        with self._lock:
            self._handing_out[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._handing_out[key] -= 1
                if self._handing_out[key] <= 0:
                    del self._handing_out[key]

    def busy(self, key: str, path: os.PathLike | str) -> bool:
        """Whether eviction must keep the entry ``key`` whose folder is ``path``."""
        with self._lock:
            if self._handing_out[key] > 0:
                return True
        return self.held(path)


leases = Leases()  # the process's leases, shared by every cache


def release_lease(path: os.PathLike | str) -> None:
    """The load of ``path`` (a folder ``DownloadCache.get`` returned) finished or failed.

    Ends one lease on it; calling it for a path with no lease left, or never handed out,
    does nothing. Eviction may delete the folder afterwards unless the engine loaded it.
    """
    leases.release(path)
