"""Hook implementations that every plugin resolving through the download cache shares.

A folder the engine has loaded must outlive LRU eviction, since the engine may read it again
after dropping its host copy; the pin also ends the leases of callers that were loading it. A resolver plugin module imports both functions; pluggy finds
them among the module's attributes and registers them with that plugin.
"""

from __future__ import annotations

from loraserve.lora.request import LoRARequest
from loraserve.plugins.hookspecs import hookimpl
from loraserve.resolution.download.eviction import pin_loaded_adapter, unpin_adapter


@hookimpl
def lora_adapter_loaded(lora_request: LoRARequest) -> None:
    """Keep a loaded adapter's downloaded folder out of LRU eviction (its leases end)."""
    pin_loaded_adapter(lora_request.lora_name, lora_request.lora_path)


@hookimpl
def lora_adapter_evicted(lora_name: str) -> None:
    """The engine forgot the adapter: its folder may be evicted again."""
    unpin_adapter(lora_name)
