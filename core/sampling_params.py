"""Per-request sampling settings, with vLLM's names and defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

from loraserve.errors import InvalidRequestError

_FLOAT32_MAX = 3.4028234663852886e38  # the sampler computes in float32: larger is inf there
_FLOAT32_TINY = 1.401298464324817e-45  # smallest float32 above 0: below it top_p is 0
SEED_RANGE = (-(2**63), 2**63 - 1)  # vLLM's bound (int64)


@dataclass
class SamplingParams:
    """How to pick tokens. ``temperature=0`` is greedy; ``stop`` strings are cut from the text."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = 16
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    n: int = 1
    stop_token_ids: list[int] | None = None  # finish on any of these (the token is not text)
    include_stop_str_in_output: bool = False
    presence_penalty: float = 0.0  # minus this for every token already generated
    frequency_penalty: float = 0.0  # minus this times how often the token was generated
    repetition_penalty: float = 1.0  # divides (or, if negative, multiplies) seen tokens' logits
    min_tokens: int = 0  # EOS, stop token ids and stop strings are held off until then
    logprobs: int | None = None  # report the sampled token's and the top-N log-probabilities
    prompt_logprobs: int | None = None  # the same for every prompt token (once per request)
    logit_bias: dict[int, float] | None = None  # added to the logits of these token ids

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = {int(t): float(b) for t, b in (self.logit_bias or {}).items()}
        self._check()

    def _check(self) -> None:
        """Refuse what the sampler cannot run: a value that passes here never fails a step."""
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and abs(value) <= _FLOAT32_MAX):
                raise InvalidRequestError(f"{name} must be a finite number, got {value!r}")
        if self.temperature < 0:
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_p < _FLOAT32_TINY:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p} (0 in float32)")
        if self.top_k < 0 and self.top_k != -1:
            raise InvalidRequestError(f"top_k must be 0 or -1 (disabled) or positive, got {self.top_k}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.n < 1:
            raise InvalidRequestError(f"n must be at least 1, got {self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.repetition_penalty <= 0:
            raise InvalidRequestError(
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}"
            )
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise InvalidRequestError(
                f"seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {self.seed}"
            )
        if bad := sorted(t for t, b in self.logit_bias.items() if not math.isfinite(b)):
            raise InvalidRequestError(f"logit_bias values must be finite numbers (token ids {bad})")
        if self.min_tokens < 0:
            raise InvalidRequestError(f"min_tokens must be at least 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 0:  # the engine bounds it (max_logprobs)
                raise InvalidRequestError(f"{name} must be at least 0, got {value}")

    @property
    def stop_holdback(self) -> int:
        """Characters of a running text not shown yet: they may begin a stop string (as vLLM)."""
        if not self.stop or self.include_stop_str_in_output:
            return 0
        return max(len(s) for s in self.stop) - 1

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)
