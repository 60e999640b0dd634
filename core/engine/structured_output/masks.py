"""Per-row token masks: each constrained row's matcher says which tokens it allows, and every
other token's logit becomes -inf. Rows without a matcher are never touched."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def apply_grammar_masks(logits: torch.Tensor, rows: list[tuple[int, Any]]) -> dict[int, Exception]:
    """logits: [B, vocab], changed in place for ``rows``, ``(row, matcher)`` pairs. Returns the
    rows whose matcher failed (its error), which the caller ends alone."""
    import llguidance.torch as llg_torch

    vocab = logits.shape[1]
    failed: dict[int, Exception] = {}
    bitmask = llg_torch.allocate_token_bitmask(len(rows), vocab)  # [rows, ceil(vocab / 32)] int32
    for index, (row, matcher) in enumerate(rows):
        llg_torch.fill_next_token_bitmask(matcher, bitmask, index)
        if matcher.is_error():
            failed[row] = RuntimeError(f"structured output failed: {matcher.get_error()}")
    # the bits, lowest first, as one bool per token: [rows, vocab]
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :vocab]
    allowed = torch.from_numpy(bits).to(device=logits.device, dtype=torch.bool)
    index = torch.tensor([row for row, _ in rows], device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
    return failed
