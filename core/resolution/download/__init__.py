"""The shared download cache of remote LoRA resolvers (S3, Hub, HTTP).

A resolver describes where an adapter lives by implementing ``RemoteAdapterSource`` (list
files, fetch one) and calls ``get_download_cache().get(source, ...)``; the cache does the
rest: single flight, revalidation, validation, atomic install and LRU eviction. The caller
ends the lease on the folder it got with ``release_lease(path)`` once its load finished or
failed; until then eviction keeps the folder.
"""

from __future__ import annotations

from loraserve.resolution.download.cache import DownloadCache, get_download_cache
from loraserve.resolution.download.config import DownloadCacheConfig, parse_bytes
from loraserve.resolution.download.eviction import AdapterOwner, register_adapter_owner
from loraserve.resolution.download.lease import release_lease
from loraserve.resolution.download.source import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    MirroredAdapterSource,
    ProgressCallback,
    RemoteAdapterSource,
    RemoteFile,
    RemoteListing,
    SourceUnreachableError,
    TransientSourceError,
    is_archive_name,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "ADAPTER_WEIGHTS",
    "AdapterOwner",
    "DownloadCache",
    "DownloadCacheConfig",
    "MirroredAdapterSource",
    "ProgressCallback",
    "RemoteAdapterSource",
    "RemoteFile",
    "RemoteListing",
    "SourceUnreachableError",
    "TransientSourceError",
    "get_download_cache",
    "is_archive_name",
    "parse_bytes",
    "register_adapter_owner",
    "release_lease",
]
