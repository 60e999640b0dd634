"""Per-request sampling settings, with vLLM's names and defaults."""

from __future__ import annotations

from dataclasses import dataclass

from loraserve.errors import InvalidRequestError


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

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._check()

    def _check(self) -> None:
        if self.temperature < 0:
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 and self.top_k != -1:
            raise InvalidRequestError(f"top_k must be 0 or -1 (disabled) or positive, got {self.top_k}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.n < 1:
            raise InvalidRequestError(f"n must be at least 1, got {self.n}")

    @property
    def stop_holdback(self) -> int:
        """Characters of a running text not shown yet: they may begin a stop string (as vLLM)."""
        if not self.stop or self.include_stop_str_in_output:
            return 0
        return max(len(s) for s in self.stop) - 1

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5
