"""Everything one forward pass needs besides the weights, built once per engine step.

Tokens of all scheduled sequences are flattened into one ``[T]`` axis (prefill and decode
together); attention regroups them per sequence through ``query_rows``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraserve.kernels import LoRABatch


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, position of each token in its sequence
    slot_mapping: torch.Tensor  # [T] int64, flat KV-cache row each token's K/V is written to
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with block 0
    # [B, 1, max_q, max_blocks * block_size] bool, True = attend; None with paged_decode
    attn_mask: torch.Tensor | None
    sliding_mask: torch.Tensor | None  # as attn_mask, within the sliding window; None: no layer slides
    query_rows: tuple[torch.Tensor, torch.Tensor] | None  # (seq [T], row [T]); None: 1 token/seq
    max_query_len: int
    logits_indices: torch.Tensor  # [B + extra] flat index of each sequence's last token, then any extra rows
    lora: LoRABatch | None
    kv_lens: torch.Tensor | None = None  # [B] int64 context length with this step's tokens
    # a decode step on the paged-decode kernel: attention reads the blocks in place, by kv_lens
    paged_decode: bool = False

    def mask_for(self, window: int | None) -> torch.Tensor:
        """The mask of a layer with this window (None = full causal attention)."""
        assert self.attn_mask is not None, "the paged-decode kernel's batch has no mask"
        if window is None:
            return self.attn_mask
        assert self.sliding_mask is not None, "sliding layer in a batch built without sliding_mask"
        return self.sliding_mask


def decode_mask(kv_lens: torch.Tensor, context: int, window: int | None) -> torch.Tensor:
    """[B, 1, 1, context] bool: the keys a decode query at position kv_len - 1 sees (the
    runner's mask for one query per sequence), from device data only, so a captured decode
    step can rebuild it on every replay."""
    keys = torch.arange(context, device=kv_lens.device)
    lens = kv_lens.unsqueeze(1)  # [B, 1]
    mask = keys.unsqueeze(0) < lens  # [B, context]
    if window is not None:
        mask &= keys.unsqueeze(0) >= lens - window
    return mask.view(-1, 1, 1, context)
