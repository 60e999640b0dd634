"""Read a safetensors file with one read into one buffer; tensors are views into it.

The format is an 8-byte little-endian header length, a JSON header of
``{name: {dtype, shape, data_offsets}}``, then the tensor bytes. Every entry is checked
against the file size before any view is made, so a truncated or hostile file is refused.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 << 20


class SafetensorsError(ValueError):
    """The file is not a well-formed safetensors file; the message says what is wrong."""


def parse_header(blob: bytes | bytearray | memoryview, file_size: int) -> tuple[int, dict]:
    """(data start, {name: (dtype, shape, begin, end)}) after checking every entry fits."""
    if file_size < 8:
        raise SafetensorsError(f"truncated: {file_size} bytes")
    (header_len,) = struct.unpack("<Q", bytes(blob[:8]))
    if header_len > min(MAX_HEADER_BYTES, file_size - 8):
        raise SafetensorsError(f"corrupt header length {header_len}")
    try:
        header = json.loads(bytes(blob[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsError("the header is not JSON") from None
    if not isinstance(header, dict):
        raise SafetensorsError("the header is not a JSON object")
    data_size = file_size - 8 - header_len
    entries = {}
    for name, info in header.items():
        if name != "__metadata__":
            entries[name] = _entry(name, info, data_size)
    return 8 + header_len, entries


def _entry(name: str, info: object, data_size: int) -> tuple[torch.dtype, list[int], int, int]:
    bad = SafetensorsError(f"tensor {name!r} has an invalid header entry")
    if not isinstance(info, dict):
        raise bad
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPES or not isinstance(shape, list) or not isinstance(offsets, list):
        raise bad
    if not all(type(d) is int and d >= 0 for d in shape):
        raise bad
    if len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise bad
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise SafetensorsError(f"tensor {name!r} lies outside the file (truncated?)")
    if end - begin != math.prod(shape) * _ITEMSIZE[DTYPES[dtype]]:
        raise SafetensorsError(f"tensor {name!r} size disagrees with its shape")
    return DTYPES[dtype], shape, begin, end


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the file as views into one buffer filled by a single read."""
    size = path.stat().st_size
    buffer = torch.empty(size, dtype=torch.uint8)
    with path.open("rb") as f:
        if f.readinto(buffer.numpy()) != size:
            raise SafetensorsError("the file changed while it was read")
    start, entries = parse_header(buffer.numpy(), size)
    flat: dict[torch.dtype, torch.Tensor] = {}  # the data region viewed as each dtype once
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        itemsize = _ITEMSIZE[dtype]
        if (start + begin) % itemsize or not shape or end == begin:
            raw = buffer[start + begin : start + end]  # unaligned or scalar/empty: plain view
            tensors[name] = raw.view(dtype).view(shape) if end > begin else torch.empty(shape, dtype=dtype)
            continue
        if dtype not in flat:
            flat[dtype] = buffer[: size - size % itemsize].view(dtype)
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        tensors[name] = flat[dtype].as_strided(shape, strides, (start + begin) // itemsize)
    return tensors


_ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in DTYPES.values()}
