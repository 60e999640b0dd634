"""Per-request sampling settings, with vLLM's names and defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loraserve.errors import InvalidRequestError

_FLOAT32_MAX = 3.4028234663852886e38  # the sampler computes in float32: larger is inf there
_FLOAT32_TINY = 1.401298464324817e-45  # smallest float32 above 0: below it top_p is 0
SEED_RANGE = (-(2**63), 2**63 - 1)  # vLLM's bound (int64)
_CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass
class StructuredOutputsParams:
    """One constraint on the generated text, vLLM's fields: a JSON schema (``json``, a dict or
    its JSON text), any JSON object (``json_object``), a ``regex``, one of ``choice``'s strings,
    or a Lark ``grammar``. Exactly one is set."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False  # JSON without whitespace between tokens

    def __post_init__(self) -> None:
        given = [name for name in _CONSTRAINTS if getattr(self, name) not in (None, False)]
        if len(given) != 1:  # vLLM's words
            raise InvalidRequestError(
                "You can only use one kind of structured outputs constraint but multiple are "
                f"specified: {given}" if given else
                "structured outputs need one of 'json', 'regex', 'choice', 'grammar' or "
                "'json_object'")
        if self.choice is not None and (not self.choice or not all(
                isinstance(c, str) for c in self.choice)):
            raise InvalidRequestError(f"'choice' must be a non-empty list of strings, "
                                      f"got {self.choice!r}")

    @property
    def kind(self) -> str:
        return next(name for name in _CONSTRAINTS if getattr(self, name) not in (None, False))


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
    min_p: float = 0.0  # drop tokens less likely than min_p times the likeliest (after temperature)
    skip_special_tokens: bool = True  # leave special tokens out of the text
    bad_words: list[str] | None = None  # never generate these words (their token sequences)
    truncate_prompt_tokens: int | None = None  # keep only the last k prompt tokens (-1: the context)
    structured_outputs: StructuredOutputsParams | None = None  # constrain the text (JSON, regex...)
    # each bad word's token ids, with and without a leading space; set by the engine (vLLM's
    # ``update_from_tokenizer``) since only it has the tokenizer
    _bad_words_token_ids: list[list[int]] = field(default_factory=list, init=False, repr=False,
                                                  compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = {int(t): float(b) for t, b in (self.logit_bias or {}).items()}
        if isinstance(self.bad_words, str):
            self.bad_words = [self.bad_words]
        self.bad_words = list(self.bad_words or [])
        self._check()

    def _check(self) -> None:
        """Refuse what the sampler cannot run: a value that passes here never fails a step."""
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
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
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p}")
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
        if self.truncate_prompt_tokens is not None and (
            self.truncate_prompt_tokens == 0 or self.truncate_prompt_tokens < -1
        ):
            raise InvalidRequestError("truncate_prompt_tokens must be an integer >= 1 or -1, "
                                      f"got {self.truncate_prompt_tokens}")
        if bad := [w for w in self.bad_words if not isinstance(w, str) or not w.strip()]:
            raise InvalidRequestError(f"bad_words must be non-empty strings, got {bad!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 0:  # the engine bounds it (max_logprobs)
                raise InvalidRequestError(f"{name} must be at least 0, got {value}")

    def update_from_tokenizer(self, tokenizer) -> None:  # noqa: ANN001 - a loraserve Tokenizer
        """Tokenize ``bad_words`` as vLLM does: each word (leading spaces stripped), and with one
        leading space when that gives a different first token and as many tokens (the word
        inside a text)."""
        sequences: list[list[int]] = []
        for word in self.bad_words:
            plain = list(tokenizer.encode(word.lstrip(), add_special_tokens=False))
            spaced = list(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
            if plain:
                sequences.append(plain)
                if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
                    sequences.append(spaced)
        vocab = len(tokenizer)
        if outside := [t for ids in sequences for t in ids if not 0 <= t < vocab]:
            raise InvalidRequestError(
                f"The model vocabulary size is {vocab}, but the following tokens were specified "
                f"as bad: {outside}. All token id values should be integers satisfying: "
                f"0 <= token_id <= {vocab - 1}.")
        self._bad_words_token_ids = sequences

    @property
    def bad_words_token_ids(self) -> list[list[int]]:
        """The banned token sequences (after ``update_from_tokenizer``)."""
        return self._bad_words_token_ids

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
