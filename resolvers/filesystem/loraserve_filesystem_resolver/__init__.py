"""Plugin ``lora_filesystem_resolver``: adapter ``foo`` is ``$VLLM_LORA_RESOLVER_CACHE_DIR/foo``.

Only plain directory names are looked up (an entry may be a symlink to an adapter kept
elsewhere); the adapter must be a PEFT LoRA made for the served model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from loraserve.errors import PluginError
from loraserve.lora.peft_config import is_lora_config
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.plugins import hookimpl

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
        if adapter_dir is None or not _is_lora_for(adapter_dir, base_model_name):
            return None
        return LoRARequest(lora_name, 1, str(adapter_dir), base_model_name)

    def _adapter_dir(self, lora_name: str) -> Path | None:
        """The adapter's directory, or None if the name is not one plain component or is absent.

        A plain name cannot climb out of the cache dir; an entry that is a symlink is followed
        wherever it points (as vLLM does), since only the operator can put one there.
        """
        if not _is_plain_name(lora_name):
            logger.warning("lora_filesystem_resolver refused adapter name %r", lora_name)
            return None
        adapter_dir = (self.lora_cache_dir / lora_name).resolve()
        return adapter_dir if adapter_dir.is_dir() else None


def _is_plain_name(lora_name: str) -> bool:
    """One path component that cannot climb: no separators, NUL, '.' or '..'."""
    if not lora_name or lora_name in (".", ".."):
        return False
    return not any(ch in lora_name for ch in ("/", "\\", "\0", os.sep))


def _is_lora_for(adapter_dir: Path, base_model_name: str) -> bool:
    """True if adapter_config.json says it is a LoRA for ``base_model_name``."""
    config_path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.info("lora_filesystem_resolver: no usable %s: %s", config_path, exc)
        return False
    if not is_lora_config(config):
        logger.info(
            "lora_filesystem_resolver: %s is not a LoRA adapter (peft_type %r)",
            adapter_dir,
            config.get("peft_type") if isinstance(config, dict) else None,
        )
        return False
    if config.get("base_model_name_or_path") != base_model_name:
        logger.info(
            "lora_filesystem_resolver: %s is for base model %r, not %r",
            adapter_dir,
            config.get("base_model_name_or_path"),
            base_model_name,
        )
        return False
    return True


@hookimpl
def register_lora_resolvers(register) -> None:
    """Register the resolver when the cache dir is configured; a bad dir is an error."""
    cache_dir = os.environ.get(CACHE_DIR_ENV)
    if not cache_dir:
        logger.warning(
            "%s is not set, so lora_filesystem_resolver resolves nothing.", CACHE_DIR_ENV
        )
        return
    register(RESOLVER_NAME, FilesystemResolver(cache_dir))
