"""Everything one forward pass needs besides the weights, built once per engine step.

Tokens of all scheduled sequences are flattened into one ``[T]`` axis (prefill and decode
together). Attention regroups them per sequence in ``AttentionGroup``s: one SDPA call each,
every query padded to its group's longest. A step that mixes decode tokens with prompts has
two groups, so the decode rows are not padded to a prompt's length (that made such a step's
attention 5-7x slower than its two parts on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraserve.kernels import LoRABatch


@dataclass(frozen=True)
class AttentionGroup:
    """Sequences attended in one call, their context gathered by block table."""

    block_tables: torch.Tensor  # [b, max_blocks] int64, padded with block 0
    attn_mask: torch.Tensor  # [b, 1, max_q, max_blocks * block_size] bool, True = attend
    sliding_mask: torch.Tensor | None  # as attn_mask, within the sliding window; None: no layer slides
    query_rows: tuple[torch.Tensor, torch.Tensor] | None  # (seq [t], row [t]); None: 1 token/seq
    max_query_len: int
    tokens: torch.Tensor | None = None  # [t] the group's rows on the step's token axis; None: all

    def mask_for(self, window: int | None) -> torch.Tensor:
        """The mask of a layer with this window (None = full causal attention)."""
        if window is None:
            return self.attn_mask
        assert self.sliding_mask is not None, "sliding layer in a batch built without sliding_mask"
        return self.sliding_mask


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, position of each token in its sequence
    slot_mapping: torch.Tensor  # [T] int64, flat KV-cache row each token's K/V is written to
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with block 0 (the kernel's)
    attention: tuple[AttentionGroup, ...]  # () with paged_decode
    logits_indices: torch.Tensor  # [B + extra] flat index of each sequence's last token, then any extra rows
    lora: LoRABatch | None
    kv_lens: torch.Tensor | None = None  # [B] int64 context length with this step's tokens (the kernel's)
    # a decode step on the paged-decode kernel: attention reads the blocks in place, by kv_lens
    paged_decode: bool = False


def padded_tables(tables: list[list[int]], device: torch.device | str) -> torch.Tensor:
    """[B, max_blocks] int64 block tables, each row padded with block 0."""
    width = max(len(table) for table in tables)
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], device=device)


def attention_group(
    tables: list[list[int]], kv_lens: list[int], q_lens: list[int], block_size: int,
    window: int | None, device: torch.device | str, tokens: list[int] | None = None,
) -> AttentionGroup:
    """The group of sequences with these block tables, context lengths (this step's tokens
    included) and query lengths, from host lists: causal masks and, where a sequence feeds
    more than one token, where each token's query row goes."""
    max_q = max(q_lens)
    block_tables = padded_tables(tables, device)
    lens, q_len = torch.tensor(kv_lens, device=device), torch.tensor(q_lens, device=device)
    rows = torch.arange(max_q, device=device)
    keys = torch.arange(block_tables.shape[1] * block_size, device=device)
    last_visible = (lens - q_len).unsqueeze(1) + rows.unsqueeze(0)  # [b, max_q]
    mask = (keys.view(1, 1, -1) <= last_visible.unsqueeze(-1)).unsqueeze(1)  # [b, 1, max_q, K]
    sliding_mask = None
    if window is not None:  # also drop keys at or before last_visible - window
        first_visible = last_visible - (window - 1)  # [b, max_q]
        sliding_mask = mask.squeeze(1) & (keys.view(1, 1, -1) >= first_visible.unsqueeze(-1))
        padded = (rows.unsqueeze(0) >= q_len.unsqueeze(1)).unsqueeze(-1)  # [b, max_q, 1]
        # padding rows are dropped after attention; keep them causal so none is all-masked (NaN)
        sliding_mask = torch.where(padded, mask.squeeze(1), sliding_mask).unsqueeze(1)
    query_rows = None
    if max_q > 1:
        seq_of_token = [seq for seq, n in enumerate(q_lens) for _ in range(n)]
        row_of_token = [row for n in q_lens for row in range(n)]
        query_rows = (torch.tensor(seq_of_token, device=device),
                      torch.tensor(row_of_token, device=device))
    return AttentionGroup(block_tables, mask, sliding_mask, query_rows, max_q,
                          None if tokens is None else torch.tensor(tokens, device=device))


def _decode_mask(kv_lens: torch.Tensor, context: int, window: int | None) -> torch.Tensor:
    """[B, 1, 1, context] bool: the keys a decode query at position kv_len - 1 sees (what
    ``attention_group`` gives one query per sequence), from device data only, so a captured
    decode step can rebuild it on every replay."""
    keys = torch.arange(context, device=kv_lens.device)
    lens = kv_lens.unsqueeze(1)  # [B, 1]
    mask = keys.unsqueeze(0) < lens  # [B, context]
    if window is not None:
        mask &= keys.unsqueeze(0) >= lens - window
    return mask.view(-1, 1, 1, context)


def decode_group(block_tables: torch.Tensor, kv_lens: torch.Tensor, block_size: int,
                 window: int | None) -> AttentionGroup:
    """One query per sequence, the masks from device data only (``_decode_mask``)."""
    context = block_tables.shape[1] * block_size
    sliding = None if window is None else _decode_mask(kv_lens, context, window)
    return AttentionGroup(block_tables, _decode_mask(kv_lens, context, None), sliding, None, 1)
