"""The one download cache every remote resolver uses.

``DownloadCache.get(source, ...)`` returns a local, validated adapter folder or ``None``
when the source has no such adapter. It revalidates against the remote's version tags on
every call (one cheap listing), downloads into a temp dir beside the cache, validates, and
renames into place; it keeps the folder within ``max_cache_bytes`` by evicting the least
recently used adapters, unloading idle ones from the engine when that is the only way to
fit. One download per key, however many requests ask at once.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Protocol

from loraserve.errors import AdapterDownloadError, LoRAAdapterError, LoRAServeError
from loraserve.lora.download.archive import extract_adapter_archive
from loraserve.lora.download.config import DownloadCacheConfig
from loraserve.lora.download.flight import SingleFlight, interprocess_lock, try_lock
from loraserve.lora.download.source import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    MirroredAdapterSource,
    RemoteAdapterSource,
    RemoteListing,
    is_archive_name,
)
from loraserve.lora.download.store import AdapterStore, CacheEntry
from loraserve.lora.download.transfer import TRANSIENT, fetch_file, with_retries
from loraserve.lora.download.validation import check_adapter_config, validate_adapter_dir

logger = logging.getLogger(__name__)

AnySource = RemoteAdapterSource | MirroredAdapterSource


class DownloadCache:
    """Validated local copies of remote adapters, bounded on disk, one download per key."""

    def __init__(self, config: DownloadCacheConfig) -> None:
        self.config = config
        self.store = AdapterStore(config.download_dir)
        self.stats: Counter[str] = Counter()  # hit / download / stale / missing
        self._flight = SingleFlight()

    async def get(self, source: AnySource, *, lora_name: str, base_model_name: str) -> Path | None:
        """The local folder of ``lora_name`` at ``source`` (downloaded if needed), or ``None``."""
        key = f"{base_model_name}\n{source.location}"
        return await self._flight.run(
            key, lambda: self._get(key, source, lora_name, base_model_name)
        )

    async def _get(
        self, key: str, source: AnySource, lora_name: str, base_model_name: str
    ) -> Path | None:
        started = time.monotonic()  # adapters used after this are never unloaded for room
        await asyncio.to_thread(self.store.ensure)
        slug = self.store.slug(key, lora_name)
        async with interprocess_lock(self.store.lock_path(slug)) as lock:
            try:
                path = await self._refresh(key, slug, source, lora_name, base_model_name)
            finally:
                if not self.store.has_entry(slug):  # missing, refused or failed: no lock file
                    lock.unlink()
        if path is not None:
            await asyncio.to_thread(self._evict, slug, started)
        return path

    async def _refresh(
        self, key: str, slug: str, source: AnySource, lora_name: str, base_model_name: str
    ) -> Path | None:
        """With the key's lock held: revalidate the cached copy, download if it changed."""
        await asyncio.to_thread(self.store.clear_tmp, slug)
        cached = await asyncio.to_thread(self.store.read, slug)
        try:
            listing = await with_retries(
                lambda: asyncio.wait_for(source.list_files(), self.config.timeout_s),
                what=f"listing LoRA adapter '{lora_name}' at {source.location}",
                retries=self.config.retries,
            )
        except TRANSIENT as exc:
            if cached is None:
                raise _download_error(lora_name, source, exc) from exc
            logger.warning(
                "LoRA adapter '%s': %s is unreachable (%s); serving the cached copy",
                lora_name,
                source.location,
                exc,
            )
            self.stats["stale"] += 1
            return self._hit(slug, cached)
        except LoRAServeError:
            raise
        except Exception as exc:  # a source's final error (access denied, ...)
            raise _download_error(lora_name, source, exc) from exc
        if listing is None:
            if cached is not None:  # gone remotely: forget our copy too
                await asyncio.to_thread(self.store.remove, slug)
            self.stats["missing"] += 1
            return None
        self._check_listing(listing, lora_name)
        if cached is not None and cached.version is not None and cached.version == listing.version:
            if cached.external:
                await asyncio.to_thread(
                    validate_adapter_dir,
                    Path(cached.folder),
                    lora_name,
                    base_model_name,
                    self.config.max_adapter_bytes,
                )
            self.stats["hit"] += 1
            return self._hit(slug, cached)
        entry = CacheEntry(
            key=key,
            location=source.location,
            lora_name=lora_name,
            base_model_name=base_model_name,
            version=listing.version,
            folder="",
            size_bytes=0,
            fetched_at=time.time(),
        )
        started = time.perf_counter()
        logger.info(
            "LoRA adapter '%s': downloading %d file(s), %d bytes, from %s",
            lora_name,
            len(listing.files),
            listing.total_size,
            source.location,
        )
        if isinstance(source, MirroredAdapterSource) and hasattr(source, "materialize"):
            path = await self._materialize(slug, source, listing, entry)
        else:
            path = await self._download(slug, source, listing, entry)
        self.stats["download"] += 1
        logger.info(
            "LoRA adapter '%s': %d bytes ready at %s in %.2fs",
            lora_name,
            entry.size_bytes,
            path,
            time.perf_counter() - started,
        )
        return path

    def _hit(self, slug: str, entry: CacheEntry) -> Path:
        self.store.touch(slug)
        return self.store.adapter_path(slug, entry)

    def _check_listing(self, listing: RemoteListing, lora_name: str) -> None:
        """Refuse before downloading: unexpected names, missing weights, or too many bytes."""
        names = [f.name for f in listing.files]
        if listing.archive:
            if len(names) != 1 or "/" in names[0] or not is_archive_name(names[0]):
                raise LoRAAdapterError(
                    lora_name, f"expected one archive, the source listed {names}"
                )
        else:
            if set(names) - set(ADAPTER_FILES) or len(set(names)) != len(names):
                raise LoRAAdapterError(lora_name, f"unexpected files listed: {names}")
            if ADAPTER_WEIGHTS not in names:
                raise LoRAAdapterError(
                    lora_name,
                    f"no {ADAPTER_WEIGHTS} next to {ADAPTER_CONFIG} "
                    "(remote adapters must be safetensors; pickled .bin files are never fetched)",
                )
        limit = self.config.max_adapter_bytes
        if listing.total_size > limit:
            raise LoRAAdapterError(
                lora_name,
                f"it is {listing.total_size} bytes, over the {limit}-byte limit "
                "(raise VLLM_LORA_RESOLVER_MAX_ADAPTER_BYTES to allow it)",
            )

    async def _download(
        self, slug: str, source: RemoteAdapterSource, listing: RemoteListing, entry: CacheEntry
    ) -> Path:
        """Fetch into a temp dir beside the cache, validate, then rename into place."""
        from tqdm.auto import tqdm

        config = self.config
        staged = await asyncio.to_thread(self.store.new_tmp_dir, slug)
        bar = tqdm(
            total=listing.total_size or None,
            unit="B",
            unit_scale=True,
            leave=False,
            desc=f"LoRA {entry.lora_name}",
            disable=None,
        )
        try:
            budget = config.max_adapter_bytes
            config_first = sorted(listing.files, key=lambda f: f.name != ADAPTER_CONFIG)
            for file in config_first:
                budget -= await fetch_file(
                    source,
                    file,
                    staged / file.name,
                    lora_name=entry.lora_name,
                    budget=budget,
                    timeout_s=config.timeout_s,
                    retries=config.retries,
                    on_bytes=bar.update,
                )
                if file.name == ADAPTER_CONFIG:  # refuse a wrong adapter before its weights
                    await asyncio.to_thread(
                        check_adapter_config,
                        staged / file.name,
                        entry.lora_name,
                        entry.base_model_name,
                    )
            adapter_dir = staged
            if listing.archive:
                adapter_dir = staged / "adapter"
                adapter_dir.mkdir()
                await asyncio.to_thread(
                    extract_adapter_archive,
                    staged / listing.files[0].name,
                    adapter_dir,
                    lora_name=entry.lora_name,
                    max_bytes=config.max_adapter_bytes,
                    max_members=config.max_archive_members,
                )
            entry.size_bytes = await asyncio.to_thread(
                validate_adapter_dir,
                adapter_dir,
                entry.lora_name,
                entry.base_model_name,
                config.max_adapter_bytes,
            )
            entry.folder = f"v-{(entry.version or f'{time.time_ns():x}')[:16]}"
            return await asyncio.to_thread(self.store.install, slug, adapter_dir, entry)
        except LoRAServeError:
            raise
        except Exception as exc:  # network, disk and source errors alike
            raise _download_error(entry.lora_name, source, exc) from exc
        finally:
            bar.close()
            shutil.rmtree(staged, ignore_errors=True)  # sync: must run even when cancelled

    async def _materialize(
        self, slug: str, source: MirroredAdapterSource, listing: RemoteListing, entry: CacheEntry
    ) -> Path:
        """Let the source fill its own cache, then validate what it hands back."""
        try:
            path = await source.materialize(listing)
        except LoRAServeError:
            raise
        except Exception as exc:
            raise _download_error(entry.lora_name, source, exc) from exc
        entry.size_bytes = await asyncio.to_thread(
            validate_adapter_dir,
            path,
            entry.lora_name,
            entry.base_model_name,
            self.config.max_adapter_bytes,
        )
        entry.folder, entry.external = str(path), True
        await asyncio.to_thread(self.store.write, slug, entry)
        return path

    def _evict(self, keep: str, started: float) -> None:
        """Delete least recently used adapters until the cache fits ``max_cache_bytes``.

        Entries no engine has loaded go first, oldest ``entry.json`` first. If that is not
        enough, adapters an engine has loaded but no request holds are unloaded and deleted,
        least recently used first by the engine's clock (it serves a registered adapter
        without touching the cache). One used since ``started`` stays: it was resolved or
        looked up during this download, and its request is about to hold it.
        """
        entries = self.store.lru_entries()
        total = sum(e.size_bytes for _, _, e in entries if not e.external)
        if total <= self.config.max_cache_bytes:
            return
        unloaded, loaded = [], []
        for _, slug, entry in entries:
            if slug == keep or entry.external:
                continue
            path = str(self.store.adapter_path(slug, entry))
            used = _loaded_last_used(path)
            if used is not None:
                loaded.append((used, slug, entry))
            elif path not in _pinned_paths.values():  # pinned with no engine to ask: kept
                unloaded.append((slug, entry))
        loaded.sort(key=lambda item: item[0])
        plan = [(slug, e, False) for slug, e in unloaded]
        plan += [(slug, e, True) for _, slug, e in loaded]
        for slug, entry, unload in plan:
            if total <= self.config.max_cache_bytes:
                break
            if self._delete(slug, started, unload):
                total -= entry.size_bytes
        if total > self.config.max_cache_bytes:
            logger.warning(
                "LoRA download cache holds %d bytes, over VLLM_LORA_RESOLVER_MAX_CACHE_BYTES=%d",
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
            "LoRA download cache: evicted '%s' (%d bytes%s)",
            entry.lora_name,
            entry.size_bytes,
            ", unloaded from the engine while idle" if loaded else "",
        )
        return True


def _download_error(lora_name: str, source: AnySource, exc: BaseException) -> AdapterDownloadError:
    return AdapterDownloadError(lora_name, source.location, str(exc) or type(exc).__name__)


class AdapterOwner(Protocol):
    """An engine's adapter registry (``LoRAManager``): asked before a loaded folder goes."""

    def last_used(self, lora_path: str) -> float | None: ...

    def release_idle(self, lora_path: str, unused_since: float) -> bool: ...


_caches: dict[DownloadCacheConfig, DownloadCache] = {}
_pinned_paths: dict[str, str] = {}  # adapter name -> folder the engine has loaded
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
    return lora_path in _pinned_paths.values() or bool(_holders(lora_path))


def _loaded_last_used(lora_path: str) -> float | None:
    """When an engine last used the adapter at ``lora_path`` (monotonic), None if none has it."""
    times = [t for owner in _holders(lora_path) if (t := owner.last_used(lora_path)) is not None]
    return max(times, default=None)


def _unload_idle(lora_path: str, unused_since: float) -> bool:
    """Unload the adapter from every engine holding it; False if any is using it."""
    holders = _holders(lora_path)
    return bool(holders) and all(owner.release_idle(lora_path, unused_since) for owner in holders)


def pin_loaded_adapter(lora_name: str, lora_path: str) -> None:
    """The engine loaded ``lora_path``: never evict it while the adapter is registered.

    The engine may read an adapter's files again later (after dropping its host copy), so
    a folder it loaded must survive LRU eviction. Remote resolver plugins get this called
    from the ``lora_adapter_loaded`` hook by importing ``loraserve.lora.download.hooks``.
    """
    _pinned_paths[lora_name] = lora_path


def unpin_adapter(lora_name: str) -> None:
    """The adapter is unknown to the engine again; its folder may be evicted."""
    _pinned_paths.pop(lora_name, None)


def get_download_cache(config: DownloadCacheConfig | None = None) -> DownloadCache:
    """The process-wide cache for ``config`` (default: from the environment)."""
    config = config or DownloadCacheConfig.from_env()
    if config not in _caches:
        _caches[config] = DownloadCache(config)
    return _caches[config]
