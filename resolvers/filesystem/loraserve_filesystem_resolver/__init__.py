"""Plugin ``lora_filesystem_resolver``: adapter ``foo`` is ``$VLLM_LORA_RESOLVER_CACHE_DIR/foo``.

Only plain names are looked up (``loraserve.resolution.names``, the rule every resolver
uses); an entry may be a symlink to an adapter kept elsewhere. The adapter must pass the one
config rule (``read_adapter_config``) for the served model, as a downloaded one must.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from loraserve.resolution import (
    ADAPTER_CONFIG,
    LoRAAdapterError,
    LoRARequest,
    LoRAResolver,
    PluginError,
    hookimpl,
    is_plain_name,
    read_adapter_config,
    register_if_configured,
)

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "VLLM_LORA_RESOLVER_CACHE_DIR"
RESOLVER_NAME = "lora_filesystem_resolver"


class FilesystemResolver(LoRAResolver):
    """Resolves adapter names to subdirectories of one local directory."""

    def __init__(self, lora_cache_dir: str | os.PathLike[str]) -> None:
        path = Path(lora_cache_dir)
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            raise PluginError(
                f"{CACHE_DIR_ENV}={str(lora_cache_dir)!r} {what}; "
                f"create it or point {CACHE_DIR_ENV} at the directory holding your adapters."
            )
        self.lora_cache_dir = path.resolve()

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        adapter_dir = self._adapter_dir(lora_name)
        if adapter_dir is None:
            return None
        try:
            read_adapter_config(adapter_dir / ADAPTER_CONFIG, lora_name, base_model_name)
        except LoRAAdapterError as exc:  # not ours to serve: the next resolver is asked
            logger.info("%s: %s in %s", RESOLVER_NAME, exc, adapter_dir)
            return None
        return LoRARequest(lora_name, 1, str(adapter_dir), base_model_name)

    def _adapter_dir(self, lora_name: str) -> Path | None:
        """The adapter's directory, or None if the name is not plain or nothing is there.

        A plain name cannot climb out of the cache dir; an entry that is a symlink is followed
        wherever it points (as vLLM does), since only the operator can put one there.
        """
        if not is_plain_name(lora_name):
            logger.warning("%s refused adapter name %r", RESOLVER_NAME, lora_name)
            return None
        adapter_dir = (self.lora_cache_dir / lora_name).resolve()
        return adapter_dir if adapter_dir.is_dir() else None


@hookimpl
def register_lora_resolvers(register) -> None:
    """Register the resolver when the cache dir is configured; a bad dir is an error."""
    register_if_configured(register, RESOLVER_NAME, CACHE_DIR_ENV, FilesystemResolver)
