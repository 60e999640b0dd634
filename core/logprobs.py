"""Log-probabilities of generated tokens, in vLLM's shapes (``vllm.logprobs``)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_LOGPROBS = 20  # vLLM's default max_logprobs, and OpenAI's bound on top_logprobs


@dataclass
class Logprob:
    """One token's log-probability under the model's raw distribution, as vLLM reports it."""

    logprob: float
    rank: int  # 1 for the most likely token
    decoded_token: str | None = None


# One dict per generated token: the sampled token and the top-N, by token id.
SampleLogprobs = list[dict[int, Logprob]]
# One entry per prompt token: the prompt's own token and the top-N; None for the first
# token, which nothing predicts (vLLM's shape).
PromptLogprobs = list[dict[int, Logprob] | None]
