"""The periodic statistics line in the log (vLLM's ``LoggingStatLogger``), off with
``--disable-log-stats``.

While the engine is busy, one line every ``VLLM_LOG_STATS_INTERVAL`` seconds (default 10):
prompt and generation throughput over the interval, running and waiting sequences, KV cache
usage and, with LoRA, adapters loaded and device slots in use. As in vLLM, an interval with no
tokens after another with none logs at DEBUG, so an idle server stays quiet at INFO.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from loraserve.engine.stats import BatchState, StepStats

logger = logging.getLogger(__name__)

INTERVAL_ENV = "VLLM_LOG_STATS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0

AdapterUsage = Callable[[], tuple[int, int, int]]  # (registered, slots in use, slots)


def log_stats_interval(environ: dict[str, str] | None = None) -> float:
    """``VLLM_LOG_STATS_INTERVAL`` in seconds (vLLM's variable), 10 by default."""
    raw = (os.environ if environ is None else environ).get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{INTERVAL_ENV} must be positive, got {raw!r}")
    return value


class LoggingStatLogger:
    """Counts tokens per step; logs one line when an interval has passed (``record`` is called
    after every step and when the engine goes idle)."""

    def __init__(self, interval_s: float, adapters: AdapterUsage | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._adapters = adapters
        self._clock = clock
        self._last_log = clock()
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._last_throughputs = (0.0, 0.0)

    @property
    def pending(self) -> bool:
        """Whether a line is still owed: tokens not logged yet, or a busy last interval."""
        return bool(self._prompt_tokens or self._generation_tokens or any(self._last_throughputs))

    def seconds_until_due(self) -> float:
        return max(0.0, self._last_log + self.interval_s - self._clock())

    def record(self, state: BatchState, step: StepStats | None) -> None:
        if step is not None:
            if not self.pending:  # a busy period starts: its first line comes an interval on
                self._last_log = self._clock()
            self._prompt_tokens += step.prompt_tokens
            self._generation_tokens += step.generation_tokens
        if self.seconds_until_due() <= 0:
            self.log(state)

    def log(self, state: BatchState) -> None:
        now = self._clock()
        elapsed = max(now - self._last_log, 1e-9)
        throughputs = (self._prompt_tokens / elapsed, self._generation_tokens / elapsed)
        idle = not any(throughputs) and not any(self._last_throughputs)
        self._last_log, self._prompt_tokens, self._generation_tokens = now, 0, 0
        self._last_throughputs = throughputs
        adapters = ""
        if self._adapters is not None:
            loaded, busy, slots = self._adapters()
            adapters = f", LoRA adapters: {loaded} loaded, {busy}/{slots} slots in use"
        (logger.debug if idle else logger.info)(
            "Engine 000: Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f "
            "tokens/s, Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%%s",
            *throughputs, state.running, state.waiting, state.kv_cache_usage * 100, adapters,
        )
