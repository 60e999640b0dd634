"""Finding adapters the server has never seen: everything a resolver author needs.

``from loraserve.resolution import ...`` is the whole API for writing a resolver plugin: the
hook marker, the base classes (``LoRAResolver``; ``RemoteResolver`` for adapters kept
elsewhere, fetched through the shared download cache), the one name rule, the one config
rule, the one error classification and the errors to raise.
"""

from __future__ import annotations

from loraserve.errors import AdapterDownloadError, LoRAAdapterError, LoRAServeError, PluginError
from loraserve.lora.peft_config import read_adapter_config
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.plugins.hookspecs import hookimpl
from loraserve.resolution.configured import register_if_configured
from loraserve.resolution.download import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    DownloadCache,
    MirroredAdapterSource,
    ProgressCallback,
    RemoteAdapterSource,
    RemoteFile,
    RemoteListing,
    SourceUnreachableError,
    TransientSourceError,
    get_download_cache,
    is_archive_name,
)
from loraserve.resolution.names import fill_location_template, is_plain_name, is_safe_name
from loraserve.resolution.remote import RemoteResolver, status_error, transient_or_final

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "ADAPTER_WEIGHTS",
    "AdapterDownloadError",
    "DownloadCache",
    "LoRAAdapterError",
    "LoRARequest",
    "LoRAResolver",
    "LoRAServeError",
    "MirroredAdapterSource",
    "PluginError",
    "ProgressCallback",
    "RemoteAdapterSource",
    "RemoteFile",
    "RemoteListing",
    "RemoteResolver",
    "SourceUnreachableError",
    "TransientSourceError",
    "fill_location_template",
    "get_download_cache",
    "hookimpl",
    "is_archive_name",
    "is_plain_name",
    "is_safe_name",
    "read_adapter_config",
    "register_if_configured",
    "status_error",
    "transient_or_final",
]
