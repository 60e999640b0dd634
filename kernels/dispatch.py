"""The one place that decides which LoRA implementation runs and how the kernels launch."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, lru_cache
from typing import TYPE_CHECKING

import torch

from loraserve.kernels import torch_ops
from loraserve.kernels.batch import LoRABatch

if TYPE_CHECKING:
    from loraserve.kernels.triton_ops import ExpandParams, ShrinkParams

BACKENDS = ("torch", "triton")
_TARGET_PROGRAMS = 256  # enough programs to fill ~132 SMs twice; below it, shrink splits K


@cache
def triton_available() -> bool:
    """True when Triton imports; checked once per process."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def backend_for(device: torch.device) -> str:
    """'triton' on CUDA when Triton imports, else 'torch'."""
    if device.type == "cuda" and triton_available():
        return "triton"
    return "torch"


def paged_decode_available(device: torch.device) -> bool:
    """Decode attention runs the paged-decode kernel where the LoRA kernels run on Triton;
    elsewhere the torch path (gather + SDPA) stays, the faster one on CPU."""
    return backend_for(device) == "triton"


def add_lora(
    out: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: Sequence[torch.Tensor],
    batch: LoRABatch,
    backend: str | None = None,
) -> None:
    """out += per-token LoRA delta of x, in place.

    ``backend`` forces 'torch' or 'triton' (tests, benchmarks); None picks by device.
    """
    if batch.is_empty:
        return
    backend = backend or backend_for(x.device)
    if backend == "torch" and batch.fixed_shape:
        torch_ops.add_lora_per_token(out, x, lora_a, lora_b, batch.token_slots)
    elif backend == "torch":
        torch_ops.add_lora(out, x, lora_a, lora_b, batch)
    elif backend == "triton":
        from loraserve.kernels import triton_ops

        seg = (batch.max_seg_len, batch.num_segments)
        y = triton_ops.shrink(x, lora_a, batch, shrink_params(*seg, *lora_a.shape[1:]))
        triton_ops.expand(out, y, lora_b, batch, expand_params(*seg, lora_b[0].shape[2]))
    else:
        raise ValueError(f"unknown LoRA backend {backend!r}; choose one of {BACKENDS}")


def _pow2_at_least_16(n: int) -> int:
    """tl.dot needs every tile side to be a power of two and at least 16."""
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def _block_m(max_seg_len: int) -> int:
    """Decode batches have one or a few tokens per adapter: do not waste rows on them."""
    if max_seg_len <= 16:
        return 16
    return 32 if max_seg_len <= 64 else 64


@lru_cache(maxsize=1024)
def shrink_params(max_seg_len: int, num_segments: int, in_features: int, n: int) -> ShrinkParams:
    """Tiles for x [T, in] @ A [in, n]: n (slices x rank) is small, `in` is long.

    With few programs (decode), split `in` across programs so every SM has work.
    Cached: called for every LoRA layer of every step with a handful of distinct shapes.
    """
    from loraserve.kernels.triton_ops import ShrinkParams

    block_m = _block_m(max_seg_len)
    block_n = min(64, _pow2_at_least_16(n))
    block_k = 128 if block_m == 64 else 256
    block_k = min(block_k, _pow2_at_least_16(in_features))
    programs = -(-max_seg_len // block_m) * -(-n // block_n) * max(num_segments, 1)
    split_k = 1
    max_split = max(1, in_features // block_k)
    while programs * split_k < _TARGET_PROGRAMS and split_k * 2 <= min(max_split, 32):
        split_k *= 2
    return ShrinkParams(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k)


@lru_cache(maxsize=1024)
def expand_params(max_seg_len: int, num_segments: int, rank: int) -> ExpandParams:
    """Tiles for y [T, R] @ B [R, out]: the whole rank fits one tile, out is wide.

    Every (segment, tile, slice) is its own program already, so no split is needed.
    """
    from loraserve.kernels.triton_ops import ExpandParams

    block_m = _block_m(max_seg_len)
    block_n = 64 if block_m == 16 else 128
    return ExpandParams(block_m=block_m, block_n=block_n, block_r=_pow2_at_least_16(rank))
