"""Read a safetensors file with one read into one buffer; tensors are views into it.

The format is an 8-byte little-endian header length, a JSON header of
``{name: {dtype, shape, data_offsets}}``, then the tensor bytes, packed back to back. Every
entry is checked against the file size before any view is made, so a truncated or hostile
file is refused. The download cache runs the same header checks without reading the data.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
TORCH_DTYPES = {
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
MAX_HEADER_BYTES = 64 << 20  # a 64 MiB JSON header is already absurd for a LoRA


class SafetensorsError(ValueError):
    """The file is not a well-formed safetensors file; the message says what is wrong."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors' name, e.g. "F32"
    shape: list[int]
    begin: int  # offsets into the data region
    end: int


def parse_header(blob: bytes | bytearray | memoryview, file_size: int) -> tuple[int, dict]:
    """(data start, {name: TensorEntry}) after checking the entries tile the data exactly.

    ``blob`` needs to hold only the first 8 + header-length bytes of the file.
    """
    if file_size < 8:
        raise SafetensorsError(f"truncated ({file_size} bytes)")
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
    entries = {
        name: _entry(name, info, data_size) for name, info in header.items() if name != "__metadata__"
    }
    end = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != end:  # safetensors packs tensors back to back, no gaps or overlaps
            raise SafetensorsError("gaps or overlaps between tensors")
        end = entry.end
    if end != data_size:
        raise SafetensorsError(f"data is {data_size} bytes but its tensors cover {end}")
    return 8 + header_len, entries


def _entry(name: str, info: object, data_size: int) -> TensorEntry:
    bad = SafetensorsError(f"tensor {name!r} has an invalid header entry")
    if not isinstance(info, dict):
        raise bad
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES or not isinstance(shape, list) or not isinstance(offsets, list):
        raise bad
    if not all(type(d) is int and d >= 0 for d in shape):
        raise bad
    if len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise bad
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise SafetensorsError(f"tensor {name!r} lies outside the file (truncated?)")
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise SafetensorsError(f"tensor {name!r} size disagrees with its shape")
    return TensorEntry(dtype, shape, begin, end)


def read_header(path: Path) -> tuple[int, dict]:
    """``parse_header`` of a file, reading only its header."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) == 8:
            (header_len,) = struct.unpack("<Q", prefix)
            prefix += f.read(min(header_len, MAX_HEADER_BYTES))
    return parse_header(prefix, size)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the file as views into one buffer filled by a single read."""
    size = path.stat().st_size
    buffer = torch.empty(size, dtype=torch.uint8, device="cpu")  # host by design
    with path.open("rb") as f:
        if f.readinto(buffer.numpy()) != size:
            raise SafetensorsError("the file changed while it was read")
    start, entries = parse_header(buffer.numpy(), size)
    flat: dict[torch.dtype, torch.Tensor] = {}  # the data region viewed as each dtype once
    tensors = {}
    for name, entry in entries.items():
        dtype = TORCH_DTYPES.get(entry.dtype)
        if dtype is None:
            raise SafetensorsError(f"tensor {name!r} has dtype {entry.dtype}, which torch cannot load")
        itemsize = DTYPE_BYTES[entry.dtype]
        shape, offset = entry.shape, start + entry.begin
        if offset % itemsize or not shape or entry.end == entry.begin:
            raw = buffer[offset : start + entry.end]  # unaligned, scalar or empty: plain view
            tensors[name] = raw.view(dtype).view(shape) if raw.numel() else torch.empty(shape, dtype=dtype, device="cpu")
            continue
        if dtype not in flat:
            flat[dtype] = buffer[: size - size % itemsize].view(dtype)
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        tensors[name] = flat[dtype].as_strided(shape, strides, offset // itemsize)
    return tensors
