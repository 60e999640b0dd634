"""Turn each sequence's last-token logits into its next token."""

from __future__ import annotations

import torch

from loraserve.engine.sequence import Sequence


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits: [B, vocab] float32. Greedy rows take argmax (ties: lowest id, like HF)."""
    greedy = logits.argmax(dim=-1).tolist()
    return [
        greedy[row] if seq.params.greedy else _sample_row(logits[row], seq)
        for row, seq in enumerate(seqs)
    ]


def _sample_row(logits: torch.Tensor, seq: Sequence) -> int:
    params = seq.params
    logits = logits / params.temperature  # [vocab]
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the first token always
        logits = logits.index_fill(0, order[drop], float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=seq.generator).item())
