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
    attn_mask: torch.Tensor  # [B, 1, max_q, max_blocks * block_size] bool, True = attend
    sliding_mask: torch.Tensor | None  # as attn_mask, within the sliding window; None: no layer slides
    query_rows: tuple[torch.Tensor, torch.Tensor] | None  # (seq [T], row [T]); None: 1 token/seq
    max_query_len: int
    logits_indices: torch.Tensor  # [B + extra] flat index of each sequence's last token, then any extra rows
    lora: LoRABatch | None

    def mask_for(self, window: int | None) -> torch.Tensor:
        """The mask of a layer with this window (None = full causal attention)."""
        if window is None:
            return self.attn_mask
        assert self.sliding_mask is not None, "sliding layer in a batch built without sliding_mask"
        return self.sliding_mask
