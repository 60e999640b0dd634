"""Paged attention over the KV cache.

The cache holds fixed-size blocks; each sequence's block table lists its blocks in order.
Decode steps on CUDA read the blocks in place with the paged-decode kernel
(``loraserve.kernels.paged_decode``); every other step gathers each sequence's blocks (one
index operation per ``AttentionGroup``) and runs torch's scaled_dot_product_attention, the
CPU's fastest path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loraserve.model.forward_batch import AttentionGroup, ForwardBatch


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,  # [T, KVH, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    batch: ForwardBatch,
    window: int | None,  # the layer's sliding window; None: full causal attention
) -> torch.Tensor:
    """Write this step's K/V into the cache, then attend over the context the layer sees."""
    _, _, kv_heads, head_dim = k_cache.shape
    k_cache.view(-1, kv_heads, head_dim).index_copy_(0, batch.slot_mapping, k)
    v_cache.view(-1, kv_heads, head_dim).index_copy_(0, batch.slot_mapping, v)
    if batch.paged_decode:
        from loraserve.kernels.paged_decode import paged_decode

        return paged_decode(q, k_cache, v_cache, batch.block_tables, batch.kv_lens, window)
    if len(batch.attention) == 1 and batch.attention[0].tokens is None:
        return _attend_group(q, k_cache, v_cache, batch.attention[0], window)
    assert sum(len(group.tokens) for group in batch.attention) == q.shape[0], "a token in no group"
    out = q.new_empty(q.shape[0], q.shape[1] * head_dim)
    for group in batch.attention:
        rows = _attend_group(q.index_select(0, group.tokens), k_cache, v_cache, group, window)
        out.index_copy_(0, group.tokens, rows)
    return out


def _attend_group(
    q: torch.Tensor,  # [t, H, D], the group's tokens in order
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    group: AttentionGroup,
    window: int | None,
) -> torch.Tensor:
    """[t, H * D]: the group's sequences attend over their gathered context in one call."""
    _, block_size, kv_heads, head_dim = k_cache.shape
    num_seqs = group.block_tables.shape[0]
    context = group.block_tables.shape[1] * block_size
    blocks = group.block_tables.view(-1)  # index_select is several times faster than indexing
    keys = k_cache.index_select(0, blocks).view(num_seqs, context, kv_heads, head_dim)
    values = v_cache.index_select(0, blocks).view(num_seqs, context, kv_heads, head_dim)

    dtype = q.dtype
    if dtype != torch.float32 and q.device.type == "cpu":  # CPU's half SDPA is ~5x slower
        q, keys, values = q.float(), keys.float(), values.float()
    heads = q.shape[1]
    if group.query_rows is None:
        queries = q.view(num_seqs, 1, heads, head_dim)
    else:
        queries = q.new_zeros(num_seqs, group.max_query_len, heads, head_dim)
        queries[group.query_rows] = q
    out = F.scaled_dot_product_attention(
        queries.transpose(1, 2),  # [b, H, max_q, D]
        keys.transpose(1, 2),  # [b, KVH, context, D]
        values.transpose(1, 2),
        attn_mask=group.mask_for(window),
        enable_gqa=heads != kv_heads,
    ).transpose(1, 2)  # [b, max_q, H, D]
    if group.query_rows is None:
        return out.reshape(num_seqs, heads * head_dim).to(dtype)
    return out[group.query_rows].reshape(-1, heads * head_dim).to(dtype)
