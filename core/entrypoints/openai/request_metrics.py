"""Per-request accounting: the ``usage`` block and the per-model Prometheus series."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from loraserve import metrics

if TYPE_CHECKING:
    from loraserve.outputs import RequestOutput


class RequestMetrics:
    """Watches the snapshots of one HTTP request (one or more prompts, n choices each).

    Counts each prompt once and every choice's tokens, like OpenAI's ``usage``; time to
    first token runs from the request's arrival at the server.
    """

    def __init__(self, model: str, prompt_lens: list[int]) -> None:
        self.model = model
        self.prompt_lens = prompt_lens
        self.arrival = time.perf_counter()
        self.completion_tokens: dict[tuple[int, int], int] = {}
        self._first_token_seen = False
        self._finished: set[int] = set()

    def observe(self, prompt_index: int, out: RequestOutput) -> None:
        for comp in out.outputs:
            self.completion_tokens[(prompt_index, comp.index)] = len(comp.token_ids)
        if not self._first_token_seen and any(comp.token_ids for comp in out.outputs):
            self._first_token_seen = True
            metrics.TIME_TO_FIRST_TOKEN.labels(self.model).observe(
                time.perf_counter() - self.arrival
            )
        if out.finished and prompt_index not in self._finished:
            self._finished.add(prompt_index)
            metrics.PROMPT_TOKENS.labels(self.model).inc(self.prompt_lens[prompt_index])
            for comp in out.outputs:
                metrics.GENERATION_TOKENS.labels(self.model).inc(len(comp.token_ids))
                metrics.REQUESTS.labels(self.model, comp.finish_reason or "abort").inc()

    def usage(self) -> dict[str, int]:
        prompt = sum(self.prompt_lens)
        completion = sum(self.completion_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def close(self) -> None:
        """Count prompts that never finished (client gone, error) as aborted."""
        for index in range(len(self.prompt_lens)):
            if index not in self._finished:
                self._finished.add(index)
                metrics.REQUESTS.labels(self.model, "abort").inc()
