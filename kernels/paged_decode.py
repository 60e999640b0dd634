"""Paged decode attention as one Triton kernel: each sequence's keys read in place, block by block.

The torch path gathers every block of every sequence into a padded copy at every step;
here a program walks its sequence's block table and keeps an online softmax, so a decode
step reads each cached key and value once and writes nothing but its output. Launch shape
and loop bounds come from device tensors only (block tables, context lengths), so a CUDA
graph captured once per batch size replays it for any contexts. See docs/kernels.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_NO_WINDOW = 2**30  # longer than any context


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
    block_tables_ptr, kv_lens_ptr,
    scale, window,
    stride_qt, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
):  # fmt: skip
    """out[seq, heads of kv_head] = softmax(q K^T * scale) V over the sequence's visible keys.

    The query sits at position kv_len - 1 and sees keys at positions >= kv_len - window
    (the sliding-window rule of the torch path's mask; no window is passed as 2**30).
    """
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    kv_len = tl.load(kv_lens_ptr + seq)
    first_pos = tl.maximum(kv_len - window, 0)  # one expression: compiled Triton types both branches

    g = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + g
    head_ok = g < GROUP
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q_ptrs = q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptrs, mask=head_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # [G, D]

    m = tl.full((BLOCK_G,), float("-inf"), tl.float32)  # running max of each head's scores
    denom = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    offs = tl.arange(0, BLOCK_SIZE)
    table = block_tables_ptr + seq * stride_bt
    for b in range(first_pos // BLOCK_SIZE, tl.cdiv(kv_len, BLOCK_SIZE)):
        block = tl.load(table + b).to(tl.int64)
        pos = b * BLOCK_SIZE + offs
        ok = (pos < kv_len) & (pos >= first_pos)  # every block walked holds a visible key
        kv_ok = ok[:, None] & d_ok[None, :]
        k = tl.load(k_cache_ptr + block * stride_kb + offs[:, None] * stride_ks
                    + kv_head * stride_kh + d[None, :], mask=kv_ok, other=0.0).to(tl.float32)
        scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # [G, BLOCK_SIZE]
        scores = tl.where(ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m - m_new)
        denom = denom * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + block * stride_vb + offs[:, None] * stride_vs
                    + kv_head * stride_vh + d[None, :], mask=kv_ok, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m = m_new

    out = acc / denom[:, None]
    out_ptrs = out_ptr + seq * stride_ot + heads[:, None] * stride_oh + d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None] & d_ok[None, :])


def paged_decode(
    q: torch.Tensor,  # [B, H, D], one query token per sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int
    kv_lens: torch.Tensor,  # [B] int, context length including the query token
    window: int | None = None,
) -> torch.Tensor:
    """Attention output [B, H * D] in q's dtype; one program per (sequence, KV head)."""
    num_seqs, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if block_size & (block_size - 1):
        raise ValueError(f"the paged-decode kernel needs a power-of-two block size, got {block_size}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("q and the KV cache need a contiguous head dimension")
    group = heads // kv_heads
    out = torch.empty(num_seqs, heads, head_dim, dtype=q.dtype, device=q.device)  # [B, H, D]
    _paged_decode_kernel[(num_seqs, kv_heads)](
        q, k_cache, v_cache, out,
        block_tables, kv_lens,
        head_dim**-0.5, window or _NO_WINDOW,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_G=max(triton.next_power_of_2(group), 1),
    )  # fmt: skip
    return out.view(num_seqs, heads * head_dim)
