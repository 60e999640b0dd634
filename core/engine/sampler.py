"""Turn each sequence's last-token logits into its next token (and, if asked, its logprobs)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from loraserve.engine.logits_processors import needs_processing, process_row
from loraserve.engine.sequence import Sequence
from loraserve.engine.structured_output import apply_grammar_masks
from loraserve.logprobs import Logprob, PromptLogprobs


@dataclass
class SampledToken:
    token_id: int
    # The sampled token's and the top-N log-probabilities, by token id (sampled first);
    # None unless the request asked. The engine fills in the decoded text.
    logprobs: dict[int, Logprob] | None = None
    # Why this row has no token: its sequence ends alone with finish_reason "error".
    error: BaseException | None = None


class NonFiniteLogitsError(ArithmeticError):
    """The model gave a row NaN or infinite logits (a broken adapter, an overflow)."""


@torch.inference_mode()
def sample(
    logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: Collection[int] = ()
) -> list[SampledToken]:
    """logits: [B, vocab] float32, changed in place. Greedy rows take argmax (ties: lowest id).

    Log-probabilities come from the raw logits, before a structured-output mask, penalties,
    bias or temperature (vLLM's default, ``raw_logprobs``), so they describe the model, not
    the sampler.
    Rows fail alone: whatever goes wrong for one row (non-finite logits, a processor or the
    draw raising) becomes that row's ``error`` and every other row is sampled as usual.
    """
    # one pass: a NaN or inf anywhere in a row makes its sum non-finite
    finite = torch.isfinite(logits.sum(-1)).tolist()
    failed: dict[int, BaseException] = {
        row: NonFiniteLogitsError("the model produced non-finite logits for this sequence")
        for row, ok in enumerate(finite) if not ok
    }
    logprob_rows = [row for row, seq in enumerate(seqs) if seq.params.logprobs is not None]
    raw = logits[logprob_rows].log_softmax(-1) if logprob_rows else None  # [rows asking, vocab]
    raw_row = {row: i for i, row in enumerate(logprob_rows)}
    # structured outputs: only rows with a matcher pay for a mask
    constrained = [(row, seq.matcher) for row, seq in enumerate(seqs)
                   if seq.matcher is not None and row not in failed]
    if constrained:
        failed.update(apply_grammar_masks(logits, constrained))
    for row, seq in enumerate(seqs):
        if row not in failed and needs_processing(seq):
            try:
                process_row(logits[row], seq, eos_token_ids)
            except Exception as exc:  # noqa: BLE001 - this row's failure, not the batch's
                failed[row] = exc
    greedy = logits.argmax(dim=-1).tolist()
    sampled = []
    for row, seq in enumerate(seqs):
        if row not in failed:
            try:
                token = greedy[row] if seq.params.greedy else _sample_row(logits[row], seq)
                choice = SampledToken(token)
                if row in raw_row:
                    choice.logprobs = _logprobs(raw[raw_row[row]], token, seq.params.logprobs)
                sampled.append(choice)
                continue
            except Exception as exc:  # noqa: BLE001 - likewise
                failed[row] = exc
        sampled.append(SampledToken(-1, error=failed[row]))
    return sampled


def _sample_row(logits: torch.Tensor, seq: Sequence) -> int:
    params = seq.params
    logits = logits / params.temperature  # [vocab]
    if params.min_p > 0.0:
        logits = apply_min_p(logits, params.min_p)
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= params.top_p
        drop[0] = False  # the most likely token always stays, however small top_p is
        logits = logits.index_fill(0, order[drop], float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=seq.generator).item())


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """logits: [..., vocab]. Drop every token whose probability is below ``min_p`` times the
    likeliest token's (vLLM's MinPLogitsProcessor, applied after temperature, before top-k/p)."""
    probs = logits.softmax(-1)
    threshold = probs.amax(-1, keepdim=True) * min_p
    return logits.masked_fill(probs < threshold, float("-inf"))


@torch.inference_mode()
def prompt_logprobs(logits: torch.Tensor, prompt: list[int], top: int) -> PromptLogprobs:
    """logits: [len(prompt) - 1, vocab], row p predicting prompt[p + 1]. vLLM's shape: None
    for the first token, then the prompt token's and the ``top`` most likely log-probabilities."""
    rows = logits.float().log_softmax(-1)
    return [None, *(_logprobs(row, token, top) for row, token in zip(rows, prompt[1:]))]


def _logprobs(row: torch.Tensor, token: int, top: int) -> dict[int, Logprob]:
    """row: [vocab] log-probabilities. The sampled token first, then the ``top`` most likely."""
    chosen = row[token]
    result = {token: Logprob(float(chosen), rank=int((row > chosen).sum()) + 1)}
    if top:
        values, ids = row.topk(min(top, row.shape[0]))
        for rank, (value, index) in enumerate(zip(values.tolist(), ids.tolist()), start=1):
            result.setdefault(index, Logprob(value, rank))
    return result
