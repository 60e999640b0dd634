"""Sampling defaults from a generation config, as vLLM's ``--generation-config`` takes them.

``"auto"`` uses the model's generation_config.json, ``"vllm"`` none of its sampling values
(its EOS ids still count), a directory that directory's file; ``override_generation_config``
is set over either. A request's own values win; ``max_new_tokens`` caps every request's
``max_tokens``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from loraserve.config import EngineConfig
from loraserve.errors import InvalidRequestError
from loraserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

# what vLLM takes from a generation config (max_new_tokens is its max_tokens)
_KEYS = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p", "max_new_tokens")
_APPLIED = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p", "max_tokens")


def generation_config(config: EngineConfig, model_generation: dict[str, Any]) -> dict[str, Any]:
    """The generation config in force: the model's, or the one in ``--generation-config DIR``."""
    if config.generation_config in ("auto", "vllm"):
        return model_generation
    file = Path(config.generation_config) / "generation_config.json"
    if not file.is_file():
        raise InvalidRequestError(
            f"generation_config {config.generation_config!r} is not 'auto', 'vllm' or a "
            "directory holding generation_config.json")
    return json.loads(file.read_text())


def sampling_defaults(config: EngineConfig, generation: dict[str, Any]) -> dict[str, Any]:
    """The values requests get for sampling fields they leave out (checked once, here)."""
    values = {} if config.generation_config == "vllm" else {
        key: generation[key] for key in _KEYS if generation.get(key) is not None}
    values.update(config.override_generation_config or {})
    if "max_new_tokens" in values:
        values["max_tokens"] = values.pop("max_new_tokens")
    if unused := sorted(key for key in values if key not in _APPLIED):
        logger.warning("generation config: %s not applied (loraserve's sampler has no such "
                       "setting)", ", ".join(f"{key}={values[key]!r}" for key in unused))
    values = {key: values[key] for key in _APPLIED if key in values}
    try:
        SamplingParams(**values)
    except (InvalidRequestError, TypeError) as exc:
        raise InvalidRequestError(f"generation config's sampling defaults: {exc}") from None
    if values:
        logger.info("Sampling defaults from the generation config, for fields a request leaves "
                    "out: %s (--generation-config vllm ignores them)", values)
    return values
