"""The one reading of a PEFT ``adapter_config.json``: what a LoRA adapter's config must say.

Every way in (``--lora-modules``, the load endpoint, the offline API, resolvers, the
download cache) refuses the same configs with the same reasons, so an adapter never loads
one way and not another. Each refusal is a LoRAAdapterError naming the adapter.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from loraserve.errors import LoRAAdapterError
from loraserve.lora.layout import SUPPORTED_MODULES

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"
MAX_CONFIG_BYTES = 1024 * 1024  # a LoRA config is a few hundred bytes


def read_adapter_config(
    path: Path, lora_name: str, base_model_name: str | None = None
) -> dict[str, Any]:
    """Parse and check ``path`` (an ``adapter_config.json``); return the config.

    With ``base_model_name`` (resolvers pass the served model) the adapter must also have
    been trained for it; a load by path (``--lora-modules``, the load endpoint) skips that,
    as vLLM does.
    """
    if not path.is_file():
        raise LoRAAdapterError(lora_name, f"{CONFIG_FILE} is missing in {str(path.parent)!r}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise LoRAAdapterError(lora_name, f"{CONFIG_FILE} is larger than 1 MiB")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LoRAAdapterError(lora_name, f"{CONFIG_FILE} is not valid JSON ({exc})") from None
    check_adapter_config(config, lora_name)
    declared = config.get("base_model_name_or_path")
    if base_model_name is not None and not same_base_model(declared, base_model_name):
        raise LoRAAdapterError(
            lora_name,
            f"it was trained for base model {declared!r} but this server serves "
            f"{base_model_name!r} (base_model_name_or_path in {CONFIG_FILE} must match)",
        )
    return config


def same_base_model(declared: Any, served: str) -> bool:
    """Exact match as vLLM does, ignoring a trailing slash."""
    return isinstance(declared, str) and declared.rstrip("/") == served.rstrip("/")


def is_lora_config(config: Any) -> bool:
    """Whether a parsed config says LoRA (PEFT writes "LORA"; any case is accepted)."""
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    return isinstance(peft_type, str) and peft_type.upper() == "LORA"


def check_adapter_config(config: Any, lora_name: str) -> None:
    """Refuse anything but a plain LoRA of supported modules with well-formed numbers."""
    def refuse(reason: str) -> LoRAAdapterError:
        return LoRAAdapterError(lora_name, reason)

    if not isinstance(config, dict):
        raise refuse(f"{CONFIG_FILE} must hold a JSON object")
    if not is_lora_config(config):
        raise refuse(f"peft_type is {config.get('peft_type')!r}; only LORA adapters are supported")
    if config.get("use_dora"):
        raise refuse("DoRA adapters (use_dora=true) are not supported")
    if config.get("modules_to_save"):
        raise refuse(f"modules_to_save {config['modules_to_save']!r} is not supported")
    if config.get("bias", "none") != "none":
        raise refuse(f"bias={config['bias']!r} is not supported (only 'none')")
    rank = config.get("r")
    if not _is_int(rank) or rank < 1:
        raise refuse(f"rank r={rank!r} in {CONFIG_FILE} must be a positive integer")
    alpha = config.get("lora_alpha", 8)
    if not _is_finite(alpha):
        raise refuse(f"lora_alpha={alpha!r} in {CONFIG_FILE} must be a finite number")
    _check_targets(config.get("target_modules"), refuse)
    _check_pattern(config, "alpha_pattern", _is_finite, "finite numbers", refuse)
    _check_pattern(config, "rank_pattern", lambda v: _is_int(v) and v >= 1,
                   "positive integers", refuse)


def _check_targets(targets: Any, refuse) -> None:  # noqa: ANN001
    """Short names, or full module paths (PEFT's "all-linear" saves those)."""
    if targets is None or isinstance(targets, str):  # a regex string: the weights decide
        return
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise refuse(f"target_modules must be a list of module names, got {_short(targets)}")
    unsupported = sorted({t for t in targets if t.split(".")[-1] not in SUPPORTED_MODULES})
    if unsupported:
        raise refuse(
            f"target modules {unsupported} are not supported; "
            f"supported: {', '.join(SUPPORTED_MODULES)}"
        )


def _check_pattern(config: dict, key: str, valid, kind: str, refuse) -> None:  # noqa: ANN001
    """PEFT's ``{module regex: value}`` overrides: string keys that compile, valid values."""
    pattern = config.get(key)
    if pattern is None:
        return
    if not isinstance(pattern, dict):
        raise refuse(f"{key} must be an object of {{module pattern: value}}, got {_short(pattern)}")
    for regex, value in pattern.items():
        try:
            re.compile(regex)
        except re.error as exc:
            raise refuse(f"{key} key {regex!r} is not a valid regular expression ({exc})") from None
        if not valid(value):
            raise refuse(f"{key} values must be {kind}, got {_short(value)} for {regex!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
