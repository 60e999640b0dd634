"""What the engine measures for metrics: each sequence's timeline, what one step did, and the
batch after it (vLLM's RequestStateStats, IterationStats and SchedulerStats).

The engine fills these on the step thread, every time from ``time.monotonic()``; a stat
logger turns them into series (``stat_logger.PrometheusStatLogger``, the server's) or a log
line (``logging_stat_logger.LoggingStatLogger``). Nothing here knows Prometheus. Like vLLM, each of a request's ``n`` samples is one sequence here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SequenceTimes:
    """One sequence's lifecycle on the monotonic clock."""

    arrival: float  # the request reached the engine (before its adapter was pinned)
    queued: float  # it entered the scheduler's waiting queue
    scheduled: float | None = None  # first put in the running batch: the queue's end
    first_token: float | None = None
    last_token: float | None = None

    @classmethod
    def starting_now(cls) -> SequenceTimes:
        """Arrived and queued now (a sequence made outside the engine's admission)."""
        now = time.monotonic()
        return cls(arrival=now, queued=now)

    def token(self, now: float) -> float | None:
        """Note an output token at ``now``; the time since the previous one (None for the first)."""
        previous = self.last_token
        if self.first_token is None:
            self.first_token = now
        self.last_token = now
        return None if previous is None else now - previous

    def finished(
        self, now: float, reason: str, prompt_tokens: int, generation_tokens: int,
        max_tokens: int | None,
    ) -> FinishedSequence:
        """The intervals vLLM reports; a sequence that failed before a token has none to decode.

        A preemption moves none of the marks: its recomputation counts in prefill or decode.
        """
        last = self.last_token if self.last_token is not None else now
        first = self.first_token if self.first_token is not None else last
        scheduled = self.scheduled if self.scheduled is not None else first
        return FinishedSequence(
            finish_reason=reason,
            prompt_tokens=prompt_tokens,
            generation_tokens=generation_tokens,
            max_tokens=max_tokens,
            e2e_latency=now - self.arrival,
            queue_time=scheduled - self.queued,
            prefill_time=first - scheduled,
            decode_time=last - first,
            inference_time=last - scheduled,
        )


@dataclass(frozen=True)
class FinishedSequence:
    finish_reason: str  # "stop", "length" or "error"; client aborts are not reported (as vLLM)
    prompt_tokens: int
    generation_tokens: int
    max_tokens: int | None  # the request's max_tokens parameter
    e2e_latency: float  # arrival -> finish
    queue_time: float  # queued -> scheduled
    prefill_time: float  # scheduled -> first token
    decode_time: float  # first token -> last token
    inference_time: float  # scheduled -> last token

    @property
    def time_per_output_token(self) -> float:
        """Decode time per token after the first; 0 for a single token (vLLM's rule)."""
        if self.generation_tokens <= 1:
            return 0.0
        return self.decode_time / (self.generation_tokens - 1)


@dataclass(frozen=True)
class FinishedRequest:
    """A request all of whose samples finished (reported once, whatever its ``n``)."""

    n: int
    max_generation_tokens: int  # the longest of its samples


@dataclass
class StepStats:
    """What one engine step did."""

    num_tokens: int = 0  # tokens fed to the model: prefill and decode, recomputation included
    prompt_tokens: int = 0  # prompt tokens of the sequences whose first token came out
    generation_tokens: int = 0
    preemptions: int = 0
    time_to_first_token: list[float] = field(default_factory=list)  # arrival -> first token
    inter_token_latency: list[float] = field(default_factory=list)
    finished_sequences: list[FinishedSequence] = field(default_factory=list)
    finished_requests: list[FinishedRequest] = field(default_factory=list)


@dataclass(frozen=True)
class BatchState:
    """The scheduler between steps."""

    running: int  # sequences in the batch
    waiting: int  # sequences queued (new, or preempted for recomputation)
    kv_cache_usage: float  # KV blocks in use / all KV blocks, 0..1
    running_adapters: tuple[str, ...]  # adapters with a sequence in the batch, first seen first
    waiting_adapters: tuple[str, ...]  # adapters with a sequence queued


class StatLogger(Protocol):
    """Who hears about every step (``step``) and about the idle engine (``step`` is None)."""

    def record(self, state: BatchState, step: StepStats | None) -> None: ...


def adapter_names(lora_names: list[str | None]) -> tuple[str, ...]:
    """The distinct adapter names, first seen first; the base model (None) is not one."""
    return tuple(dict.fromkeys(name for name in lora_names if name is not None))
