"""Checks a downloaded adapter must pass before anyone may load it.

Only cheap structural checks: the config parses and says LORA for our base model, and every
safetensors header parses with dtypes, shapes and offsets that fit the file. Weights are
never unpickled (``.bin`` adapters are not fetched remotely).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from loraserve.errors import LoRAAdapterError
from loraserve.lora.download.source import ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_WEIGHTS

MAX_CONFIG_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024 * 1024  # a 64 MiB JSON header is already absurd for a LoRA
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def same_base_model(declared: str | None, served: str) -> bool:
    """Exact match as vLLM does, ignoring a trailing slash."""
    return declared is not None and declared.rstrip("/") == served.rstrip("/")


def check_adapter_config(path: Path, lora_name: str, base_model_name: str) -> dict:
    """Parse ``adapter_config.json``; refuse anything but a LoRA for ``base_model_name``."""
    if not path.is_file():
        raise LoRAAdapterError(lora_name, f"no {ADAPTER_CONFIG} in the downloaded adapter")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise LoRAAdapterError(lora_name, f"{ADAPTER_CONFIG} is larger than 1 MiB")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoRAAdapterError(lora_name, f"{ADAPTER_CONFIG} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise LoRAAdapterError(lora_name, f"{ADAPTER_CONFIG} is not a JSON object")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise LoRAAdapterError(
            lora_name, f"peft_type is {config.get('peft_type')!r}, only LORA adapters are served"
        )
    declared = config.get("base_model_name_or_path")
    if not same_base_model(declared, base_model_name):
        raise LoRAAdapterError(
            lora_name,
            f"it was trained for base model {declared!r} but this server serves "
            f"{base_model_name!r} (base_model_name_or_path in {ADAPTER_CONFIG} must match)",
        )
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise LoRAAdapterError(
            lora_name, f"rank r={rank!r} in {ADAPTER_CONFIG} is not a positive int"
        )
    return config


def check_safetensors(path: Path, lora_name: str) -> int:
    """Parse the header and check every tensor fits the file; return the tensor count."""
    size = path.stat().st_size
    where = path.name
    if size < 8:
        raise LoRAAdapterError(lora_name, f"{where} is truncated ({size} bytes)")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise LoRAAdapterError(lora_name, f"{where} has a corrupt header length {header_len}")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoRAAdapterError(lora_name, f"{where} has a header that is not JSON") from None
    if not isinstance(header, dict):
        raise LoRAAdapterError(lora_name, f"{where} has a header that is not a JSON object")
    data_size = size - 8 - header_len
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        spans.append(_tensor_span(name, info, data_size, lora_name, where))
    if not spans:
        raise LoRAAdapterError(lora_name, f"{where} holds no tensors")
    if not any("lora_A" in n or "lora_B" in n for n in header):
        raise LoRAAdapterError(lora_name, f"{where} holds no lora_A/lora_B tensors")
    spans.sort()
    end = 0
    for begin, stop in spans:
        if begin != end:  # safetensors packs tensors back to back, no gaps or overlaps
            raise LoRAAdapterError(lora_name, f"{where} has gaps or overlaps between tensors")
        end = stop
    if end != data_size:
        raise LoRAAdapterError(
            lora_name, f"{where} data is {data_size} bytes but its tensors cover {end}"
        )
    return len(spans)


def _tensor_span(name: str, info: object, data_size: int, lora_name: str, where: str):
    """(begin, end) of one tensor after checking dtype, shape and offsets agree."""
    bad = LoRAAdapterError(lora_name, f"{where}: tensor {name!r} has an invalid header entry")
    if not isinstance(info, dict):
        raise bad
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES or not isinstance(shape, list) or not isinstance(offsets, list):
        raise bad
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad
    if len(offsets) != 2 or not all(
        isinstance(o, int) and not isinstance(o, bool) for o in offsets
    ):
        raise bad
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise LoRAAdapterError(lora_name, f"{where}: tensor {name!r} lies outside the file")
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise LoRAAdapterError(lora_name, f"{where}: tensor {name!r} size disagrees with its shape")
    return begin, end


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
