"""A sequence: one prompt plus the tokens generated for one of its ``n`` samples."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from loraserve.engine.detokenizer import IncrementalDetokenizer
from loraserve.engine.stats import SequenceTimes
from loraserve.logprobs import PromptLogprobs, SampleLogprobs
from loraserve.lora.request import LoRARequest
from loraserve.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    seq_id: int
    request_id: str
    index: int  # which of the request's n samples
    prompt_token_ids: list[int]
    params: SamplingParams
    lora: LoRARequest | None
    generator: torch.Generator | None
    output_token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # tokens whose K/V are in the cache
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that finished it
    error: str | None = None  # why it finished with "error" (it failed alone)
    text: str = ""
    detokenizer: IncrementalDetokenizer = field(default_factory=IncrementalDetokenizer, repr=False)
    times: SequenceTimes = field(default_factory=SequenceTimes.starting_now, repr=False)
    lora_slot: int | None = None
    output_logprobs: SampleLogprobs = field(default_factory=list)  # one dict per output token
    cumulative_logprob: float = 0.0  # of the sampled tokens, when logprobs are asked for
    prompt_logprobs: PromptLogprobs | None = None  # on sample 0 only, once its prefill ran
    matcher: Any = None  # its structured-output grammar state; None: an unconstrained row
    _prompt_mask: torch.Tensor | None = field(default=None, repr=False)  # [vocab] bool, lazily

    @property
    def wants_prompt_logprobs(self) -> bool:
        """True until sample 0 of a request that asked has had its prompt scored."""
        return (
            self.params.prompt_logprobs is not None and self.index == 0
            and self.prompt_logprobs is None
        )

    def prompt_token_mask(self, vocab: int, device: torch.device) -> torch.Tensor:
        """Which token ids occur in the prompt; built once, for the repetition penalty."""
        if self._prompt_mask is None:
            mask = torch.zeros(vocab, dtype=torch.bool, device=device)
            mask[torch.tensor(self.prompt_token_ids, dtype=torch.long, device=device)] = True
            self._prompt_mask = mask
        return self._prompt_mask

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output, without building the whole list."""
        prompt_len = len(self.prompt_token_ids)
        if start >= prompt_len:
            return self.output_token_ids[start - prompt_len : end - prompt_len]
        return self.prompt_token_ids[start:end] + self.output_token_ids[: max(0, end - prompt_len)]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def lora_name(self) -> str | None:
        return self.lora.lora_name if self.lora else None

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
