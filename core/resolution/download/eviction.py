"""Keeping the download cache within ``max_cache_bytes`` without deleting a folder in use.

Two kinds of holder keep a folder: a caller loading it (a lease, see ``lease.py``) and an
engine that loaded it (an ``AdapterOwner``, asked to unload it while idle). The
rest go least recently used first. Eviction runs on a worker thread and takes each key's
lock before deleting, so it never races a download or revalidation of that key.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from loraserve.resolution.download.config import DownloadCacheConfig
from loraserve.resolution.download.lease import leases
from loraserve.resolution.download.store import AdapterStore, CacheEntry, CacheSlot, try_lock

logger = logging.getLogger(__name__)


class Eviction:
    """LRU eviction, and cleanup of leased folders once their last lease ends."""

    def __init__(self, store: AdapterStore, config: DownloadCacheConfig, stats: Counter) -> None:
        self.store = store
        self.config = config
        self.stats = stats
        self._over_bound = False  # the last pass left the cache over max_cache_bytes
        self._orphans: set[str] = set()  # replaced versions kept because they were leased
        self._tidier = ThreadPoolExecutor(1, thread_name_prefix="lora-cache-tidy")

    def evict(self, started: float, may_unload: bool = True) -> None:
        """Delete least recently used adapters until the cache fits ``max_cache_bytes``.

        Entries no engine has loaded go first, oldest ``entry.json`` first. If that is not
        enough (and ``may_unload``), adapters an engine has loaded but no request holds are
        unloaded and deleted, least recently used first by the engine's clock (it serves a
        registered adapter without touching the cache). One used since ``started`` stays: it
        was resolved or looked up during this download, and its request is about to hold it.
        A leased folder stays too: a caller is loading it.
        """
        entries = self.store.lru_entries()
        total = sum(e.size_bytes for _, _, e in entries if not e.external)
        self._over_bound = total > self.config.max_cache_bytes
        if not self._over_bound:
            return
        unloaded, loaded = [], []
        for _, slug, entry in entries:
            path = str(self.store.adapter_path(slug, entry))
            if entry.external or leases.busy(entry.key, path):
                continue
            used = _loaded_last_used(path)
            if used is not None:
                loaded.append((used, slug, entry))
            else:
                unloaded.append((slug, entry))
        loaded.sort(key=lambda item: item[0])
        plan = [(slug, e, False) for slug, e in unloaded]
        plan += [(slug, e, True) for _, slug, e in loaded if may_unload]
        for slug, entry, unload in plan:
            if total <= self.config.max_cache_bytes:
                break
            if self._delete(slug, started, unload):
                total -= entry.size_bytes
        self._over_bound = total > self.config.max_cache_bytes
        if self._over_bound:
            logger.warning(
                "LoRA download cache holds %d bytes, over VLLM_LORA_RESOLVER_MAX_CACHE_BYTES=%d "
                "(what is left is loading or in use)",
                total,
                self.config.max_cache_bytes,
            )

    def _delete(self, slug: str, started: float, unload: bool) -> bool:
        """Remove one entry and its lock file, unloading it first if ``unload``; False if kept."""
        lock = try_lock(self.store.lock_path(slug))
        if lock is None:  # being downloaded or revalidated right now
            return False
        try:
            entry = self.store.read(slug)  # again, under the lock: another process may have won
            if entry is None or entry.external:
                return False
            path = str(self.store.adapter_path(slug, entry))
            if leases.busy(entry.key, path):  # handed out since the plan was made
                return False
            loaded = _is_loaded(path)
            if loaded and not (unload and _unload_idle(path, started)):
                return False
            self.store.remove(slug)
        finally:
            if not self.store.has_entry(slug):
                lock.unlink()
            lock.release()
        self.stats["evicted"] += 1
        self.stats["unloaded"] += loaded
        logger.info(
            "LoRA download cache: evicted %r (%d bytes%s)",
            entry.lora_name,
            entry.size_bytes,
            ", unloaded from the engine while idle" if loaded else "",
        )
        return True

    def prepare(self, slot: CacheSlot) -> CacheEntry | None:
        """Tidy ``slot`` before a refresh (leased versions stay); return its cached entry."""
        cached, spared = slot.prepare(spare=leases.held_paths())
        self._note_orphans(slot.slug, spared)
        return cached

    def install(self, slot: CacheSlot, staged: Path, entry: CacheEntry) -> Path:
        """Put a validated download in place; the version it replaced goes unless leased."""
        path, spared = slot.install(staged, entry, spare=leases.held_paths())
        self._note_orphans(slot.slug, spared)
        return path

    def forget(self, slot: CacheSlot) -> None:
        """The adapter is gone remotely; a leased folder of it goes once released."""
        self._note_orphans(slot.slug, slot.forget(spare=leases.held_paths()))

    def _prune(self, slug: str) -> None:
        """Delete versions of ``slug`` its entry no longer names, but not leased ones."""
        self._note_orphans(slug, self.store.prune(slug, spare=leases.held_paths()))

    def _note_orphans(self, slug: str, spared: list[Path]) -> None:
        home = self.store.entries / slug
        self._orphans.difference_update({p for p in self._orphans if Path(p).parent == home})
        self._orphans.update(str(p) for p in spared)

    def released(self, path: str) -> None:
        """The last lease on ``path`` ended: drop it if replaced meanwhile, trim if over."""
        if path in self._orphans or self._over_bound:
            self._tidier.submit(self._tidy, path)  # off the caller's loop or engine thread

    def _tidy(self, path: str) -> None:
        try:
            slug = Path(path).parent.name
            if path in self._orphans and (lock := try_lock(self.store.lock_path(slug))):
                try:
                    self._prune(slug)
                finally:
                    if not self.store.has_entry(slug):
                        lock.unlink()
                    lock.release()
            if self._over_bound:  # only never-loaded adapters: a loaded one is about to run
                self.evict(time.monotonic(), may_unload=False)
        except Exception:
            logger.exception("LoRA download cache: tidying after %s was released failed", path)


class AdapterOwner(Protocol):
    """An engine's adapter registry (``LoRAManager``): asked before a loaded folder goes."""

    def last_used(self, lora_path: str) -> float | None: ...

    def release_idle(self, lora_path: str, unused_since: float) -> bool: ...


_owners: weakref.WeakSet[AdapterOwner] = weakref.WeakSet()
_owners_lock = threading.Lock()  # eviction reads the set from a worker thread


def register_adapter_owner(owner: AdapterOwner) -> None:
    """Let the cache unload ``owner``'s idle adapters when the disk bound needs their room.

    Held weakly, so an engine that is garbage collected simply stops being asked.
    """
    with _owners_lock:
        _owners.add(owner)


def _holders(lora_path: str) -> list[AdapterOwner]:
    with _owners_lock:
        owners = list(_owners)
    return [owner for owner in owners if owner.last_used(lora_path) is not None]


def _is_loaded(lora_path: str) -> bool:
    return bool(_holders(lora_path))


def _loaded_last_used(lora_path: str) -> float | None:
    """When an engine last used the adapter at ``lora_path`` (monotonic), None if none has it."""
    times = [t for owner in _holders(lora_path) if (t := owner.last_used(lora_path)) is not None]
    return max(times, default=None)


def _unload_idle(lora_path: str, unused_since: float) -> bool:
    """Unload the adapter from every engine holding it; False if any is using it."""
    holders = _holders(lora_path)
    return bool(holders) and all(owner.release_idle(lora_path, unused_since) for owner in holders)
