"""Paged attention of a step that mixes decode tokens with prompts, in the runner's two
groups, against attention computed token by token in float64 from the cache."""

from __future__ import annotations

import math

import pytest
import torch

from loraserve.model.attention import paged_attention
from loraserve.model.forward_batch import ForwardBatch, attention_group

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 4, 2, 8, 4
# (context before this step, tokens fed this step) per sequence: decodes beside prompts,
# one of them prefilled after a cached prefix
SEQUENCES = [(9, 1), (0, 7), (3, 1), (5, 4), (12, 1)]


def naive(q, k_cache, v_cache, tables, window):
    """Each token attends over the keys at positions <= its own (and inside the window)."""
    out, row = [], 0
    for table, (cached, fed) in zip(tables, SEQUENCES):
        keys = k_cache[table].reshape(-1, KV_HEADS, HEAD_DIM).double()
        values = v_cache[table].reshape(-1, KV_HEADS, HEAD_DIM).double()
        for pos in range(cached, cached + fed):
            first = 0 if window is None else max(0, pos - window + 1)
            query = q[row].double()  # [H, D]
            group = torch.arange(HEADS) // (HEADS // KV_HEADS)
            scores = torch.einsum("hd,khd->hk", query, keys[first:pos + 1, group])
            weights = torch.softmax(scores / math.sqrt(HEAD_DIM), dim=-1)
            out.append(torch.einsum("hk,khd->hd", weights, values[first:pos + 1, group]).reshape(-1))
            row += 1
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window", [None, 3])
def test_two_groups_match_token_by_token_attention(dtype, window):
    gen = torch.Generator().manual_seed(0)
    blocks = [-(-(cached + fed) // BLOCK) for cached, fed in SEQUENCES]
    tables = [list(range(sum(blocks[:i]), sum(blocks[:i + 1]))) for i in range(len(blocks))]
    cache = torch.randn(2, sum(blocks), BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    tokens = sum(fed for _, fed in SEQUENCES)
    q = torch.randn(tokens, HEADS, HEAD_DIM, generator=gen).to(dtype)
    k, v = (torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=gen).to(dtype) for _ in range(2))
    slots = [table[p // BLOCK] * BLOCK + p % BLOCK
             for table, (cached, fed) in zip(tables, SEQUENCES) for p in range(cached, cached + fed)]
    starts = [sum(fed for _, fed in SEQUENCES[:i]) for i in range(len(SEQUENCES))]
    groups = []
    for members in ([0, 2, 4], [1, 3]):  # the decoding sequences, then the prompts
        groups.append(attention_group(
            [tables[i] for i in members], [sum(SEQUENCES[i]) for i in members],
            [SEQUENCES[i][1] for i in members], BLOCK, window, "cpu",
            tokens=[starts[i] + r for i in members for r in range(SEQUENCES[i][1])]))
    assert groups[0].max_query_len == 1 and groups[1].max_query_len == 7
    batch = ForwardBatch(input_ids=torch.zeros(tokens, dtype=torch.long), positions=None,
                         slot_mapping=torch.tensor(slots), block_tables=groups[0].block_tables,
                         attention=tuple(groups), logits_indices=None, lora=None)
    k_cache, v_cache = cache[0].clone(), cache[1].clone()
    got = paged_attention(q, k, v, k_cache, v_cache, batch, window)
    assert got.dtype == dtype and got.shape == (tokens, HEADS * HEAD_DIM)
    want = naive(q, k_cache, v_cache, tables, window)  # the cache with this step's K/V written
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
