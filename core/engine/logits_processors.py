"""What a request's sampling params do to its logits before a token is chosen, in vLLM's order.

Logit bias, ``min_tokens`` and ``bad_words`` first, then the repetition, frequency and presence penalties
(the repetition penalty counts prompt and output tokens, as in vLLM and transformers; the
other two only generated ones, as OpenAI defines them). Rows that ask for none are untouched.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from loraserve.engine.sequence import Sequence


def needs_processing(seq: Sequence) -> bool:
    params = seq.params
    return (bool(params.logit_bias) or params.has_penalties or _holds_off_stops(seq)
            or bool(params.bad_words_token_ids))


def process_row(logits: torch.Tensor, seq: Sequence, eos_token_ids: Collection[int]) -> None:
    """Apply ``seq``'s params to its logits row [vocab], in place."""
    params = seq.params
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=logits.device)
        logits.index_add_(0, ids, torch.tensor(list(params.logit_bias.values()), dtype=logits.dtype,
                                                device=logits.device))
    if _holds_off_stops(seq):
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        stops = {t for t in stops if 0 <= t < logits.shape[0]}  # others can never be sampled
        if stops:
            logits[torch.tensor(sorted(stops), device=logits.device)] = float("-inf")
    if params.bad_words_token_ids:
        ban_bad_words(logits, params.bad_words_token_ids, seq.output_token_ids)
    if params.has_penalties:
        _apply_penalties(logits, seq)


def ban_bad_words(logits: torch.Tensor, bad_words: list[list[int]], output: list[int]) -> None:
    """Forbid the token that would complete a bad word: a word's last id, wherever the output
    so far ends with the ids before it (vLLM's rule: generated tokens only, not the prompt)."""
    for ids in bad_words:
        prefix = ids[:-1]
        if len(prefix) > len(output):
            continue
        if not prefix or output[-len(prefix):] == prefix:
            logits[ids[-1]] = float("-inf")


def _holds_off_stops(seq: Sequence) -> bool:
    return len(seq.output_token_ids) < seq.params.min_tokens


def _apply_penalties(logits: torch.Tensor, seq: Sequence) -> None:
    params = seq.params
    vocab = logits.shape[0]
    output = torch.tensor(seq.output_token_ids, dtype=torch.long, device=logits.device)
    counts = torch.bincount(output, minlength=vocab)[:vocab].to(logits.dtype)  # [vocab]
    if params.repetition_penalty != 1.0:
        seen = seq.prompt_token_mask(vocab, logits.device) | (counts > 0)  # [vocab] bool
        penalty = torch.where(seen, params.repetition_penalty, 1.0).to(logits.dtype)
        logits.copy_(torch.where(logits > 0, logits / penalty, logits * penalty))
    if params.frequency_penalty:
        logits.sub_(counts * params.frequency_penalty)
    if params.presence_penalty:
        logits.sub_((counts > 0).to(logits.dtype) * params.presence_penalty)
