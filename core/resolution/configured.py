"""Registering a resolver only when its environment variable configures it (one warning
otherwise), the same way in every resolver plugin."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from loraserve.lora.resolver import LoRAResolver

logger = logging.getLogger(__name__)


def register_if_configured(
    register: Callable[[str, LoRAResolver], None],
    resolver_name: str,
    env: str,
    make: Callable[[str], LoRAResolver],
) -> None:
    """``register(resolver_name, make(value))`` when ``$env`` holds a value (surrounding
    spaces and commas aside), else warn that the resolver resolves nothing."""
    value = os.environ.get(env, "")
    if not value.strip(" ,"):
        logger.warning("%s is not set, so %s resolves nothing.", env, resolver_name)
        return
    register(resolver_name, make(value))
