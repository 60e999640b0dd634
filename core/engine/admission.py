"""What a request must satisfy before it is queued, checked once per request.

``ContextLimit.check`` is the one context-length rule (vLLM's message); the server's
pre-check on characters calls it too, so every route refuses with the same words.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from loraserve.errors import InvalidRequestError
from loraserve.lora.request import LoRARequest
from loraserve.sampling_params import SamplingParams


@dataclass(frozen=True)
class ContextLimit:
    """Prompt plus completion must fit in ``max_model_len`` tokens."""

    max_model_len: int

    def room(self, prompt_tokens: int) -> int:
        """How many tokens a completion of this prompt may have (< 1: none)."""
        return self.max_model_len - prompt_tokens

    def check(self, prompt_tokens: int, completion_tokens: int | None,
              prompt_chars: int | None = None) -> None:
        """Refuse a request that cannot fit. ``completion_tokens`` None: the completion is
        clamped to the room left (the server, as vLLM's), so only a prompt that leaves no room
        is refused, with vLLM's server message. ``prompt_chars`` says the prompt was measured
        in characters, not tokenized: ``prompt_tokens`` is then the fewest it can tokenize to."""
        wanted = prompt_tokens + (1 if completion_tokens is None else completion_tokens)
        if wanted <= self.max_model_len:
            return
        if completion_tokens is None:
            message = (
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your request has {prompt_tokens} input tokens. Please reduce the length of the "
                "input messages.")
        else:
            message = (
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {wanted} tokens ({prompt_tokens} in the messages, "
                f"{completion_tokens} in the completion). Please reduce the length of the "
                "messages or completion."
            )
        if prompt_chars is not None:
            message += (
                f" (The prompt has {prompt_chars} characters, more than that many tokens can "
                "hold, so it was not tokenized: the token count above is its least.)"
            )
        raise InvalidRequestError(message)

    def check_chars(self, chars: int, max_token_chars: int, completion_tokens: int | None) -> None:
        """Before tokenizing: refuse a text too long whatever it tokenizes to (a multi-megabyte
        prompt would otherwise hold the tokenizer for seconds); a shorter one passes untouched."""
        fewest_tokens = math.ceil(chars / (max_token_chars * _NORMALIZATION_SLACK))
        if fewest_tokens > self.max_model_len:
            self.check(fewest_tokens, completion_tokens, prompt_chars=chars)


_NORMALIZATION_SLACK = 4  # a normalizer may fold a few characters into one (NFKC, say)


@dataclass(frozen=True)
class PreparedRequest:
    """A request that passed admission; ``lora`` is pinned host-resident for it."""

    prompt_token_ids: list[int]
    params: SamplingParams
    lora: LoRARequest | None
    prompt: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)  # reached the engine
    grammar: Any = None  # the compiled structured-outputs constraint (a CompiledGrammar)


def truncate_prompt(prompt_token_ids: list[int], params: SamplingParams,
                    max_model_len: int) -> list[int]:
    """The last ``truncate_prompt_tokens`` prompt tokens (-1: the last ``max_model_len``), as
    vLLM keeps them; the whole prompt when it is not set."""
    keep = params.truncate_prompt_tokens
    if keep is None:
        return prompt_token_ids
    keep = max_model_len if keep == -1 else keep
    return list(prompt_token_ids[-keep:])


def check_prompt(
    prompt_token_ids: list[int], params: SamplingParams, vocab_size: int, context: ContextLimit,
    max_logprobs: int,
) -> None:
    """Refuse what the engine cannot run: an empty prompt, ids outside the vocabulary, more
    logprobs than ``max_logprobs`` (vLLM's messages), a request longer than the context."""
    if not prompt_token_ids:
        raise InvalidRequestError("the prompt is empty")
    for kind, wanted in (("sample", params.logprobs), ("prompt", params.prompt_logprobs)):
        if wanted is not None and wanted > max_logprobs:
            raise InvalidRequestError(f"Requested {kind} logprobs of {wanted}, which is greater "
                                      f"than max allowed: {max_logprobs}")
    if any(not 0 <= t < vocab_size for t in prompt_token_ids):
        raise InvalidRequestError(f"prompt token ids must be in [0, {vocab_size})")
    for name, ids in (("logit_bias", params.logit_bias or ()),
                      ("stop_token_ids", params.stop_token_ids)):
        if outside := sorted(t for t in ids if not 0 <= t < vocab_size):
            raise InvalidRequestError(
                f"{name} names token ids outside the vocabulary [0, {vocab_size}): {outside[:8]}"
            )
    context.check(len(prompt_token_ids), params.max_tokens or 1)
