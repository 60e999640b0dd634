"""Checks a downloaded adapter must pass before anyone may load it.

Only cheap structural checks: the config parses and says LORA for our base model, and every
safetensors header parses with dtypes, shapes and offsets that fit the file. Weights are
never unpickled (``.bin`` adapters are not fetched remotely).
"""

from __future__ import annotations

from pathlib import Path

from loraserve.errors import LoRAAdapterError
from loraserve.lora.peft_config import read_adapter_config
from loraserve.lora.safetensors_file import SafetensorsError, read_header
from loraserve.resolution.download.source import ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_WEIGHTS


def same_base_model(declared: str | None, served: str) -> bool:
    """Exact match as vLLM does, ignoring a trailing slash."""
    return declared is not None and declared.rstrip("/") == served.rstrip("/")


def check_adapter_config(path: Path, lora_name: str, base_model_name: str) -> dict:
    """The one config rule (``peft_config``), plus: made for ``base_model_name``."""
    config = read_adapter_config(path, lora_name)
    declared = config.get("base_model_name_or_path")
    if not same_base_model(declared, base_model_name):
        raise LoRAAdapterError(
            lora_name,
            f"it was trained for base model {declared!r} but this server serves "
            f"{base_model_name!r} (base_model_name_or_path in {ADAPTER_CONFIG} must match)",
        )
    return config


def check_safetensors(path: Path, lora_name: str) -> int:
    """Parse the header and check every tensor fits the file; return the tensor count."""
    try:
        _, entries = read_header(path)
    except SafetensorsError as exc:
        raise LoRAAdapterError(lora_name, f"{path.name} is malformed: {exc}") from None
    if not entries:
        raise LoRAAdapterError(lora_name, f"{path.name} holds no tensors")
    if not any("lora_A" in n or "lora_B" in n for n in entries):
        raise LoRAAdapterError(lora_name, f"{path.name} holds no lora_A/lora_B tensors")
    return len(entries)


def validate_adapter_dir(
    adapter_dir: Path, lora_name: str, base_model_name: str, max_bytes: int
) -> int:
    """Run every check on a local adapter folder; return its size in bytes."""
    weights = adapter_dir / ADAPTER_WEIGHTS
    check_adapter_config(adapter_dir / ADAPTER_CONFIG, lora_name, base_model_name)
    if not weights.is_file():
        raise LoRAAdapterError(
            lora_name,
            f"no {ADAPTER_WEIGHTS} in the downloaded adapter (only safetensors are fetched)",
        )
    # only the files the engine reads count: a Hub snapshot folder may hold others too
    total = sum(
        (adapter_dir / n).stat().st_size for n in ADAPTER_FILES if (adapter_dir / n).is_file()
    )
    if total > max_bytes:
        raise LoRAAdapterError(
            lora_name,
            f"it is {total} bytes, over the {max_bytes}-byte limit "
            "(raise VLLM_LORA_RESOLVER_MAX_ADAPTER_BYTES to allow it)",
        )
    check_safetensors(weights, lora_name)
    return total
