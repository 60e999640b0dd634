"""LoRA shrink/expand as segmented Triton kernels (Punica SGMV style), for CUDA tensors.

Each program works on one tile of one segment (consecutive tokens sharing a slot, see
``LoRABatch``), so a slot's weights are read once per tile, not once per token. Tokens
with ``NO_ADAPTER`` belong to no segment and are never touched. Layouts are those of
``torch_ops``; launch parameters are chosen in ``dispatch`` (see docs/kernels.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from loraserve.kernels.batch import LoRABatch

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@dataclass(frozen=True)
class ShrinkParams:
    """Tile sizes of the shrink kernel; split_k > 1 splits `in` over programs (atomic adds)."""

    block_m: int = 16
    block_n: int = 16
    block_k: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class ExpandParams:
    """Tile sizes of the expand kernel; block_r covers the whole (padded) rank."""

    block_m: int = 16
    block_n: int = 64
    block_r: int = 16
    num_warps: int = 4
    num_stages: int = 2


DOT_NATIVE, DOT_IEEE, DOT_UPCAST = 0, 1, 2


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """Tile product with fp32 accumulation; see ``_dot_precision`` for the modes."""
    if PRECISION == 2:  # DOT_UPCAST
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif PRECISION == 1:  # DOT_IEEE
        acc = tl.dot(a, b, input_precision="ieee")
    else:
        acc = tl.dot(a, b)
    return acc


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, y_ptr,
    sorted_tokens_ptr, seg_slots_ptr, seg_starts_ptr, seg_lens_ptr,
    K, N,
    stride_xt, stride_xk,
    stride_as, stride_ak, stride_an,
    stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """y_sorted[start + m, n] (+)= sum_k x[token(m), k] * A[slot, k, n] for one tile."""
    pid_mn = tl.program_id(0)
    pid_k = tl.program_id(1)
    seg = tl.program_id(2)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid_mn // num_n
    pid_n = pid_mn % num_n
    seg_len = tl.load(seg_lens_ptr + seg)
    if pid_m * BLOCK_M >= seg_len:
        return  # this segment is shorter than the longest one
    start = tl.load(seg_starts_ptr + seg)
    slot = tl.load(seg_slots_ptr + seg)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seg_len
    tokens = tl.load(sorted_tokens_ptr + start + rows, mask=row_ok, other=0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    x_rows = x_ptr + tokens[:, None] * stride_xt
    a_cols = a_ptr + slot * stride_as + cols[None, :] * stride_an

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(
            x_rows + ks[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        a = tl.load(
            a_cols + ks[:, None] * stride_ak, mask=k_ok[:, None] & col_ok[None, :], other=0.0
        )
        acc += _dot(x, a, DOT)

    y_ptrs = y_ptr + (start + rows)[:, None] * stride_ym + cols[None, :]
    y_ok = row_ok[:, None] & col_ok[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc, mask=y_ok)
    else:
        tl.atomic_add(y_ptrs, acc, mask=y_ok)


@triton.jit
def _expand_kernel(
    y_ptr, meta_ptr, out_ptr,
    sorted_tokens_ptr, seg_slots_ptr, seg_starts_ptr, seg_lens_ptr,
    R, MAX_OUT,
    stride_ym, stride_ot, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    B_DTYPE: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """out[token(m), off_i + n] += sum_r y_sorted[start + m, i*R + r] * B_i[slot, r, n]."""
    pid_mn = tl.program_id(0)
    slice_id = tl.program_id(1)
    seg = tl.program_id(2)
    num_n = tl.cdiv(MAX_OUT, BLOCK_N)
    pid_m = pid_mn // num_n
    pid_n = pid_mn % num_n
    meta = meta_ptr + slice_id * 6  # row of _slice_meta
    out_size = tl.load(meta + 4)
    seg_len = tl.load(seg_lens_ptr + seg)
    if (pid_m * BLOCK_M >= seg_len) | (pid_n * BLOCK_N >= out_size):
        return  # tile past a shorter segment or a narrower slice
    b_ptr = tl.load(meta).to(tl.pointer_type(B_DTYPE))
    stride_bs = tl.load(meta + 1)
    stride_br = tl.load(meta + 2)
    stride_bn = tl.load(meta + 3)
    out_offset = tl.load(meta + 5)
    start = tl.load(seg_starts_ptr + seg)
    slot = tl.load(seg_slots_ptr + seg)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seg_len
    tokens = tl.load(sorted_tokens_ptr + start + rows, mask=row_ok, other=0)
    rs = tl.arange(0, BLOCK_R)
    r_ok = rs < R
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < out_size

    y_ptrs = y_ptr + (start + rows)[:, None] * stride_ym + (slice_id * R + rs)[None, :]
    y = tl.load(y_ptrs, mask=row_ok[:, None] & r_ok[None, :], other=0.0).to(B_DTYPE)
    b_ptrs = b_ptr + slot * stride_bs + rs[:, None] * stride_br + cols[None, :] * stride_bn
    b = tl.load(b_ptrs, mask=r_ok[:, None] & col_ok[None, :], other=0.0)
    delta = _dot(y, b, DOT)

    out_ptrs = out_ptr + tokens[:, None] * stride_ot + (out_offset + cols)[None, :] * stride_on
    out_ok = row_ok[:, None] & col_ok[None, :]
    base = tl.load(out_ptrs, mask=out_ok, other=0.0)
    tl.store(out_ptrs, (base.to(tl.float32) + delta).to(out_ptr.dtype.element_ty), mask=out_ok)


def shrink(
    x: torch.Tensor, lora_a: torch.Tensor, batch: LoRABatch, params: ShrinkParams
) -> torch.Tensor:
    """y_sorted[j] = x[sorted_tokens[j]] @ A[slot]; fp32, rows in ``batch.sorted_tokens`` order.

    Only adapter tokens get a row, so expand reads a compact, contiguous buffer.
    """
    if x.dtype != lora_a.dtype:
        raise ValueError(
            f"x is {x.dtype} but lora_a is {lora_a.dtype}; load adapters in the model dtype"
        )
    in_features, n = lora_a.shape[1], lora_a.shape[2]
    num_lora_tokens = batch.sorted_tokens.numel()
    alloc = torch.zeros if params.split_k > 1 else torch.empty  # atomic adds need zeros
    y = alloc(num_lora_tokens, n, dtype=torch.float32, device=x.device)  # [T_lora, n_slices * R]
    if batch.is_empty:
        return y
    m_tiles = triton.cdiv(batch.max_seg_len, params.block_m)
    n_tiles = triton.cdiv(n, params.block_n)
    grid = (m_tiles * n_tiles, params.split_k, batch.num_segments)
    _shrink_kernel[grid](
        x, lora_a, y,
        batch.sorted_tokens, batch.seg_slots, batch.seg_starts, batch.seg_lens,
        in_features, n,
        x.stride(0), x.stride(1),
        lora_a.stride(0), lora_a.stride(1), lora_a.stride(2),
        y.stride(0),
        BLOCK_M=params.block_m, BLOCK_N=params.block_n, BLOCK_K=params.block_k,
        SPLIT_K=params.split_k, DOT=_dot_precision(x.dtype),
        num_warps=params.num_warps, num_stages=params.num_stages,
    )  # fmt: skip
    return y


def expand(
    out: torch.Tensor,
    y_sorted: torch.Tensor,
    lora_b: Sequence[torch.Tensor],
    batch: LoRABatch,
    params: ExpandParams,
) -> None:
    """out[t, slice i] += y[t, slice i] @ B_i[slot(t)] for every slice, in one launch.

    ``lora_b`` holds stacks [slots, k, R, w] (see ``torch_ops``); the kernel takes each
    slice as its own view, with its own strides.
    """
    if batch.is_empty:
        return
    lora_b = [b for stack in lora_b for b in stack.unbind(1)]
    dtype = lora_b[0].dtype
    if any(b.dtype != dtype for b in lora_b):
        raise ValueError("all lora_b slices must share one dtype")
    rank = lora_b[0].shape[1]
    if y_sorted.shape[1] != rank * len(lora_b):
        raise ValueError(
            f"y has {y_sorted.shape[1]} columns, expected {len(lora_b)} slices x rank {rank}"
        )
    if params.block_r < rank:
        raise ValueError(f"block_r {params.block_r} must cover the rank {rank}")
    meta = _slice_meta(lora_b, out.device)
    max_out = max(b.shape[-1] for b in lora_b)
    m_tiles = triton.cdiv(batch.max_seg_len, params.block_m)
    n_tiles = triton.cdiv(max_out, params.block_n)
    grid = (m_tiles * n_tiles, len(lora_b), batch.num_segments)
    _expand_kernel[grid](
        y_sorted, meta, out,
        batch.sorted_tokens, batch.seg_slots, batch.seg_starts, batch.seg_lens,
        rank, max_out,
        y_sorted.stride(0), out.stride(0), out.stride(1),
        BLOCK_M=params.block_m, BLOCK_N=params.block_n, BLOCK_R=params.block_r,
        B_DTYPE=_TL_DTYPES[dtype], DOT=_dot_precision(dtype),
        num_warps=params.num_warps, num_stages=params.num_stages,
    )  # fmt: skip


def _dot_precision(dtype: torch.dtype) -> int:
    """fp32 stays exact (no TF32); fp16/bf16 use tensor cores.

    The Triton interpreter multiplies bf16 bit patterns in ``tl.dot`` (triton-lang/triton
    #11584), so there bf16 tiles are upcast first; compiled kernels never take that branch.
    """
    if dtype == torch.float32:
        return DOT_IEEE
    if dtype == torch.bfloat16 and not isinstance(_shrink_kernel, triton.runtime.JITFunction):
        return DOT_UPCAST
    return DOT_NATIVE


_META_CACHE: dict[tuple, torch.Tensor] = {}
_META_CACHE_MAX = 4096  # one entry per (layer, module group): plenty for any model


def _slice_meta(lora_b: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Per-slice pointer, strides and output columns, on the device.

    Cached: the table is a pure function of its key, and adapter buffers live as long as
    the engine, so each layer pays the host-to-device copy once.
    """
    rows = []
    offset = 0
    for b in lora_b:
        rows.append((b.data_ptr(), *b.stride(), b.shape[-1], offset))
        offset += b.shape[-1]
    key = (device, *rows)
    meta = _META_CACHE.get(key)
    if meta is None:
        if len(_META_CACHE) >= _META_CACHE_MAX:
            _META_CACHE.clear()
        # [n_slices, 6]: B pointer, B strides (slot, r, n), out_i, first column in out
        meta = torch.tensor(rows, dtype=torch.int64, device=device)
        _META_CACHE[key] = meta
    return meta
