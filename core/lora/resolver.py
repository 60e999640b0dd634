"""The resolver interface and registry, signature-compatible with ``vllm.lora.resolver``.

Code written for vLLM's resolvers works after changing ``vllm`` to ``loraserve`` in its
imports. Plugins normally register through the ``register_lora_resolvers`` hook (see
``loraserve.plugins``); registering here directly also works and puts the resolver after
the plugin-provided ones in the resolution order.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Set

from loraserve.lora.request import LoRARequest

logger = logging.getLogger(__name__)


class LoRAResolver(ABC):
    """Finds an adapter by name somewhere (a directory, a bucket, a hub) and returns its request.

    ``resolve_lora`` returns ``None`` when the adapter does not exist here, so the next
    resolver is asked. The returned ``lora_path`` must be a local PEFT directory; the core
    replaces ``lora_int_id`` with a unique one, so any positive value will do.
    """

    @abstractmethod
    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        """Locate (and download, if remote) adapter ``lora_name`` for ``base_model_name``."""


class _LoRAResolverRegistry:
    """Resolvers by name, in registration order (a dict keeps it).

    vLLM's surface (``register_resolver``, ``get_supported_resolvers``, ``get_resolver``)
    plus ``unregister_resolver``, which the plugin manager needs to take back what a
    plugin registered.
    """

    def __init__(self) -> None:
        self.resolvers: dict[str, LoRAResolver] = {}

    def get_supported_resolvers(self) -> Set[str]:
        """The registered names, in registration order."""
        return self.resolvers.keys()

    def register_resolver(self, resolver_name: str, resolver: LoRAResolver) -> None:
        """Register ``resolver`` as ``resolver_name``; an existing one is replaced, with a warning."""
        if resolver_name in self.resolvers:
            logger.warning(
                "LoRA resolver %r is already registered; replacing it with %r.",
                resolver_name,
                resolver,
            )
        self.resolvers[resolver_name] = resolver

    def unregister_resolver(self, resolver_name: str) -> None:
        """Forget ``resolver_name`` if it is registered (a plugin that failed, or was closed)."""
        self.resolvers.pop(resolver_name, None)

    def get_resolver(self, resolver_name: str) -> LoRAResolver:
        """The resolver registered as ``resolver_name``; ``KeyError`` lists the known names."""
        try:
            return self.resolvers[resolver_name]
        except KeyError:
            raise KeyError(
                f"LoRA resolver '{resolver_name}' is not registered. "
                f"Registered resolvers: {list(self.resolvers) or 'none'}"
            ) from None


ResolverRegistry = _LoRAResolverRegistry  # the public name of the registry's type
LoRAResolverRegistry = _LoRAResolverRegistry()
