"""Checks a downloaded adapter must pass before anyone may load it.

Only cheap structural checks: the config passes the one config rule (``peft_config``) for
our base model, and every safetensors header parses with dtypes, shapes and offsets that
fit the file. Weights are never unpickled (``.bin`` adapters are not fetched remotely).
"""

from __future__ import annotations

from pathlib import Path

from loraserve.errors import LoRAAdapterError
from loraserve.lora.peft_config import read_adapter_config
from loraserve.lora.safetensors_file import SafetensorsError, read_header
from loraserve.resolution.download.source import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    RemoteListing,
    is_archive_name,
)


def check_listing(listing: RemoteListing, lora_name: str, max_bytes: int) -> None:
    """Refuse before downloading: unexpected names, missing weights, or too many bytes."""
    names = [f.name for f in listing.files]
    if listing.archive:
        if len(names) != 1 or "/" in names[0] or not is_archive_name(names[0]):
            raise LoRAAdapterError(lora_name, f"expected one archive, the source listed {names}")
    else:
        if set(names) - set(ADAPTER_FILES) or len(set(names)) != len(names):
            raise LoRAAdapterError(lora_name, f"unexpected files listed: {names}")
        if ADAPTER_WEIGHTS not in names:
            raise LoRAAdapterError(
                lora_name,
                f"no {ADAPTER_WEIGHTS} next to {ADAPTER_CONFIG} "
                "(remote adapters must be safetensors; pickled .bin files are never fetched)",
            )
    if listing.total_size > max_bytes:
        raise LoRAAdapterError(lora_name, _too_big(listing.total_size, max_bytes))


def _too_big(size: int, max_bytes: int) -> str:
    return (
        f"it is {size} bytes, over the {max_bytes}-byte limit "
        "(raise VLLM_LORA_RESOLVER_MAX_ADAPTER_BYTES to allow it)"
    )


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
    read_adapter_config(adapter_dir / ADAPTER_CONFIG, lora_name, base_model_name)
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
        raise LoRAAdapterError(lora_name, _too_big(total, max_bytes))
    check_safetensors(weights, lora_name)
    return total
