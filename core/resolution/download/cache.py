"""The one download cache every remote resolver uses.

``DownloadCache.get(source, ...)`` returns a local, validated adapter folder or ``None``
when the source has no such adapter. It revalidates against the remote's version tags on
every call (one cheap listing), downloads into a temp dir beside the cache, validates, and
renames into place; it keeps the folder within ``max_cache_bytes`` by evicting the least
recently used adapters, unloading idle ones from the engine when that is the only way to
fit. One download per key, however many requests ask at once. A folder it returns is
leased to the caller (see ``lease.py``) and is not deleted before the caller's load ends.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from loraserve.errors import AdapterDownloadError, LoRAServeError
from loraserve.lora.peft_config import read_adapter_config
from loraserve.resolution.download.archive import extract_adapter_archive
from loraserve.resolution.download.config import DownloadCacheConfig
from loraserve.resolution.download.eviction import Eviction
from loraserve.resolution.download.flight import SingleFlight
from loraserve.resolution.download.lease import leases
from loraserve.resolution.download.source import (
    ADAPTER_CONFIG,
    MirroredAdapterSource,
    RemoteAdapterSource,
    RemoteListing,
)
from loraserve.resolution.download.store import AdapterStore, CacheEntry, CacheSlot
from loraserve.resolution.download.transfer import (
    TRANSIENT,
    ByteLimit,
    fetch_file,
    list_within_deadline,
)
from loraserve.resolution.download.validation import check_listing, validate_adapter_dir

logger = logging.getLogger(__name__)

AnySource = RemoteAdapterSource | MirroredAdapterSource


class DownloadCache:
    """Validated local copies of remote adapters, bounded on disk, one download per key."""

    def __init__(self, config: DownloadCacheConfig) -> None:
        self.config = config
        self.store = AdapterStore(config.download_dir)
        self.stats: Counter[str] = Counter()  # hit / download / stale / missing
        self._flight = SingleFlight()
        self._eviction = Eviction(self.store, config, self.stats)

    async def get(self, source: AnySource, *, lora_name: str, base_model_name: str) -> Path | None:
        """The local folder of ``lora_name`` at ``source`` (downloaded if needed), or ``None``.

        The folder is leased to the caller: it is not deleted until ``release_lease(path)``
        (call it once its load finished or failed) or ``lease_timeout_s`` passed.
        """
        key = f"{base_model_name}\n{source.location}"
        with leases.handing_out(key):  # from before the download until the lease is held
            path = await self._flight.run(
                key, lambda: self._get(key, source, lora_name, base_model_name)
            )
            if path is not None:
                leases.take(path, self.config.lease_timeout_s, self._eviction.released)
        return path

    async def _get(
        self, key: str, source: AnySource, lora_name: str, base_model_name: str
    ) -> Path | None:
        started = time.monotonic()  # adapters used after this are never unloaded for room
        async with self.store.slot(key, lora_name) as slot:
            path = await self._refresh(slot, key, source, lora_name, base_model_name)
        if path is not None:
            await asyncio.to_thread(self._eviction.evict, started)
        return path

    async def _refresh(
        self, slot: CacheSlot, key: str, source: AnySource, lora_name: str, base_model_name: str
    ) -> Path | None:
        """With the key's lock held: revalidate the cached copy, download if it changed."""
        cached = await asyncio.to_thread(self._eviction.prepare, slot)
        try:
            listing = await list_within_deadline(
                source,
                lora_name=lora_name,
                deadline_s=self.config.list_deadline_s,
                timeout_s=self.config.timeout_s,
                retries=self.config.retries,
            )
        except TRANSIENT as exc:
            if cached is None:
                raise _download_error(lora_name, source, exc) from exc
            logger.warning(
                "LoRA adapter %r: %s is unreachable (%s); serving the cached copy",
                lora_name,
                source.location,
                exc,
            )
            self.stats["stale"] += 1
            return slot.hit(cached)
        except LoRAServeError:
            raise
        except Exception as exc:  # a source's final error (access denied, ...)
            raise _download_error(lora_name, source, exc) from exc
        if listing is None:
            if cached is not None:  # gone remotely: forget our copy too
                await asyncio.to_thread(self._eviction.forget, slot)
            self.stats["missing"] += 1
            return None
        check_listing(listing, lora_name, self.config.max_adapter_bytes)
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
            return slot.hit(cached)
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
            "LoRA adapter %r: downloading %d file(s), %d bytes, from %s",
            lora_name,
            len(listing.files),
            listing.total_size,
            source.location,
        )
        if isinstance(source, MirroredAdapterSource) and hasattr(source, "materialize"):
            path = await self._materialize(slot, source, listing, entry)
        else:
            path = await self._download(slot, source, listing, entry)
        self.stats["download"] += 1
        logger.info(
            "LoRA adapter %r: %d bytes ready at %s in %.2fs",
            lora_name,
            entry.size_bytes,
            path,
            time.perf_counter() - started,
        )
        return path

    async def _download(
        self,
        slot: CacheSlot,
        source: RemoteAdapterSource,
        listing: RemoteListing,
        entry: CacheEntry,
    ) -> Path:
        """Fetch into a temp dir beside the cache, validate, then rename into place."""
        from tqdm.auto import tqdm

        config = self.config
        staged = await asyncio.to_thread(slot.new_tmp_dir)
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
                        read_adapter_config,
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
            return await asyncio.to_thread(self._eviction.install, slot, adapter_dir, entry)
        except LoRAServeError:
            raise
        except Exception as exc:  # network, disk and source errors alike
            raise _download_error(entry.lora_name, source, exc) from exc
        finally:
            bar.close()
            shutil.rmtree(staged, ignore_errors=True)  # sync: must run even when cancelled

    async def _materialize(
        self,
        slot: CacheSlot,
        source: MirroredAdapterSource,
        listing: RemoteListing,
        entry: CacheEntry,
    ) -> Path:
        """Let the source fill its own cache, then validate what it hands back."""
        known = all(f.size is not None for f in listing.files)
        limit = ByteLimit(
            entry.lora_name,
            "the download",
            listing.total_size if known else None,
            self.config.max_adapter_bytes,
        )
        try:
            path = await source.materialize(listing, limit)
        except LoRAServeError:
            raise
        except Exception as exc:
            if isinstance(limit.error, LoRAServeError):  # however the source wrapped it
                raise limit.error from exc
            raise _download_error(entry.lora_name, source, limit.error or exc) from exc
        entry.size_bytes = await asyncio.to_thread(
            validate_adapter_dir,
            path,
            entry.lora_name,
            entry.base_model_name,
            self.config.max_adapter_bytes,
        )
        entry.folder, entry.external = str(path), True
        await asyncio.to_thread(slot.record, entry)
        return path


def _download_error(lora_name: str, source: AnySource, exc: BaseException) -> AdapterDownloadError:
    return AdapterDownloadError(lora_name, source.location, str(exc) or type(exc).__name__)


_caches: dict[DownloadCacheConfig, DownloadCache] = {}


def get_download_cache(config: DownloadCacheConfig | None = None) -> DownloadCache:
    """The process-wide cache for ``config`` (default: from the environment)."""
    config = config or DownloadCacheConfig.from_env()
    if config not in _caches:
        _caches[config] = DownloadCache(config)
    return _caches[config]
