"""Every hook a loraserve plugin can implement; docs/plugins.md explains each with an example."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from loraserve.lora.request import LoRARequest
    from loraserve.lora.resolver import LoRAResolver

hookspec = pluggy.HookspecMarker("loraserve")
hookimpl = pluggy.HookimplMarker("loraserve")


@hookspec
def register_lora_resolvers(register: Callable[[str, LoRAResolver], None]) -> None:
    """Call ``register(name, resolver)`` for each resolver; runs on the first unknown model name."""


@hookspec
def lora_adapter_loaded(lora_request: LoRARequest) -> None:
    """An adapter was loaded and can now serve requests."""


@hookspec
def lora_adapter_evicted(lora_name: str) -> None:
    """An adapter was unloaded or evicted; its name is unknown again."""


@hookspec
def lora_adapter_load_failed(lora_name: str, lora_path: str, error: BaseException) -> None:
    """Loading an adapter failed with ``error``; the adapter was not registered."""
