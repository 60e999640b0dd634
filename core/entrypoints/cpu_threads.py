"""torch's CPU threads for the HTTP server: every usable core but those kept for the front end.

torch runs each op on a team of OpenMP threads, one per core, and the op ends when the
slowest of them does. The server's front end (aiohttp, SSE, detokenizing, JSON) runs in the
same process on the same cores: whenever it runs, it takes a core from the team, and every
op of the step waits until that thread is scheduled again. The LoRA path runs many small ops
a step, so a server with many adapters suffers most. On the 2-core host of docs/benchmarks.md
(`serve_load.py`, 64 adapters, 8 slots), py-spy showed the step thread waiting about 70 % of
the time at 12 req/s, and the server sustained 8 req/s; with one core kept for the front end
it sustained 16 (vLLM: 12). The price: steps of an idle server are slower (4.2 instead of
3.4 ms for one sequence on that host), and with a single adapter it sustained 24 instead of
32 req/s (vLLM: 24).

vLLM has the same knob, ``VLLM_CPU_NUM_OF_RESERVED_CPU``; its default is 0 because its front
end is another process. loraserve reads that variable and defaults to 1. An explicit
``OMP_NUM_THREADS`` wins over both; the offline ``LLM`` uses every core.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

logger = logging.getLogger(__name__)

RESERVED_CPU_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
DEFAULT_RESERVED = 1


def front_end_threads(environ: Mapping[str, str] | None = None,
                      usable: int | None = None) -> int | None:
    """torch threads for a CPU server, or None where the operator set ``OMP_NUM_THREADS``."""
    env = os.environ if environ is None else environ
    if env.get("OMP_NUM_THREADS"):
        return None
    raw = env.get(RESERVED_CPU_ENV, str(DEFAULT_RESERVED)).strip()
    try:
        reserved = int(raw)
    except ValueError:
        raise ValueError(f"{RESERVED_CPU_ENV} must be a whole number of CPUs, got {raw!r}") from None
    if reserved < 0:
        raise ValueError(f"{RESERVED_CPU_ENV} must be 0 or more, got {reserved}")
    return max(1, (usable_cpus() if usable is None else usable) - reserved)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def keep_cores_for_front_end(device: torch.device, threads: int | None) -> None:
    """Give torch ``threads`` (``front_end_threads``) on a CPU engine, before the step
    thread's first op (each thread reads the setting once)."""
    if device.type != "cpu":
        return
    if threads is None:
        logger.info("torch threads: %d (OMP_NUM_THREADS)", torch.get_num_threads())
        return
    torch.set_num_threads(threads)
    logger.info("torch threads: %d of %d usable CPUs; the rest serve HTTP (%s)",
                threads, usable_cpus(), RESERVED_CPU_ENV)
