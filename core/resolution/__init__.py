"""Finding adapters the server has never seen: everything a resolver author needs.

``from loraserve.resolution import ...`` is the whole API for writing a resolver plugin: the
hook marker, the base classes, the shared download cache and the errors to raise.
"""

from __future__ import annotations

from loraserve.errors import AdapterDownloadError, LoRAAdapterError, PluginError
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.plugins.hookspecs import hookimpl
from loraserve.resolution.download import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    DownloadCache,
    ProgressCallback,
    RemoteAdapterSource,
    RemoteFile,
    RemoteListing,
    SourceUnreachableError,
    TransientSourceError,
    fill_location_template,
    get_download_cache,
    is_archive_name,
    is_safe_name,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "AdapterDownloadError",
    "DownloadCache",
    "LoRAAdapterError",
    "LoRARequest",
    "LoRAResolver",
    "PluginError",
    "ProgressCallback",
    "RemoteAdapterSource",
    "RemoteFile",
    "RemoteListing",
    "SourceUnreachableError",
    "TransientSourceError",
    "fill_location_template",
    "get_download_cache",
    "hookimpl",
    "is_archive_name",
    "is_safe_name",
]
