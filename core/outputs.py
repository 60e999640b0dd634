"""What ``LLM.generate`` and the async engine hand back (vLLM's shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraserve.logprobs import PromptLogprobs, SampleLogprobs


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "error" | None while running
    stop_reason: str | int | None = None  # the stop string or token id; None for EOS or length
    logprobs: SampleLogprobs | None = None  # per token, when SamplingParams.logprobs is set
    cumulative_logprob: float | None = None  # likewise
    error: str | None = None  # with finish_reason "error": what failed (this sequence alone)


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None = None  # when SamplingParams.prompt_logprobs is set
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    lora_name: str | None = None
    # the adapter's LoRARequest that served it; None for the base model (typed Any: a root
    # module imports no subpackage)
    lora_request: Any = None
