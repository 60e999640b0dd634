"""Prometheus metrics, defined once; the engine and the server update them, /metrics exports.

``REGISTRY`` holds loraserve's own ``loraserve_*`` series (below), prometheus_client's process,
platform and GC collectors, and, while a server engine runs, vLLM's ``vllm:*`` series
(``loraserve.engine.stat_logger``). The per-model ``loraserve_*`` series take their ``model``
label from ``ADAPTER_LABELS``, which keeps the number of adapter label values bounded.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_* (CPU, memory, file descriptors), as vLLM serves
PlatformCollector(registry=REGISTRY)  # python_info
GCCollector(registry=REGISTRY)  # python_gc_*

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter(
    "loraserve_requests", "Finished sequences (one per choice of a request) per model or adapter.", ["model", "finish_reason"],
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "loraserve_prompt_tokens", "Prompt tokens processed per model or adapter.", ["model"],
    registry=REGISTRY,
)
GENERATION_TOKENS = Counter(
    "loraserve_generation_tokens", "Tokens generated per model or adapter.", ["model"],
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "loraserve_time_to_first_token_seconds", "Time from arrival to the first output token.",
    ["model"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
QUEUE_LENGTH = Gauge(
    "loraserve_queue_length", "Requests waiting to be scheduled.", registry=REGISTRY
)
RUNNING = Gauge("loraserve_running_requests", "Requests being decoded.", registry=REGISTRY)
LORA_LOADS = Counter(
    "loraserve_lora_loads", "Adapters parsed from disk into the host cache.", ["outcome"],
    registry=REGISTRY,
)
LORA_LOAD_SECONDS = Histogram(
    "loraserve_lora_load_seconds", "Time to parse and validate an adapter from disk.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
LORA_EVICTIONS = Counter(
    "loraserve_lora_evictions", "Adapters evicted, by tier ('gpu' slot or 'cpu' cache).", ["tier"],
    registry=REGISTRY,
)
LORA_MERGE_SECONDS = Histogram(
    "loraserve_lora_merge_seconds",
    "Time to merge an adapter that owns every step into a copy of the projections.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
LORA_MERGED_STEPS = Counter(
    "loraserve_lora_merged_steps",
    "Engine steps run on an adapter's merged weights (every layer, or those merged so far).",
    registry=REGISTRY,
)
LORA_RESOLUTIONS = Counter(
    "loraserve_lora_resolutions", "Unknown model names sent to the resolvers, by outcome.",
    ["outcome"], registry=REGISTRY,
)
LORA_RESOLUTION_SECONDS = Histogram(
    "loraserve_lora_resolution_seconds", "Time to resolve and load an unknown adapter name.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "loraserve_http_requests", "HTTP requests answered by the server, by route and status.",
    ["route", "status"], registry=REGISTRY,
)

MAX_ADAPTER_LABELS = 100  # adapters with their own `model` value at once; the rest share one
OTHER_ADAPTERS = "__other__"  # the `model` value they share


class AdapterLabels:
    """Which adapters get their own ``model`` label value on the per-model series.

    The first ``limit`` adapters registered (and still registered) do; any other adapter, and
    a request of an adapter still running after it was unloaded, counts under
    ``OTHER_ADAPTERS``. Unregistering an adapter (unload, or the download cache releasing it)
    drops its series, so resolvers cycling through thousands of adapters keep /metrics bounded
    and a freed place goes to the next adapter registered.
    """

    def __init__(self, series: tuple[MetricWrapperBase, ...], limit: int) -> None:
        self.series = series  # each has a `model` label
        self.limit = limit
        self._registered: Tally[str] = Tally()  # name -> engines that registered it
        self._labelled: set[str] = set()
        self._lock = threading.Lock()

    def register(self, name: str) -> None:
        with self._lock:
            self._registered[name] += 1
            if name != OTHER_ADAPTERS and len(self._labelled) < self.limit:
                self._labelled.add(name)

    def unregister(self, name: str) -> None:
        """The adapter is gone: drop its series once no engine has it registered."""
        with self._lock:
            self._registered[name] -= 1
            if self._registered[name] > 0:
                return
            del self._registered[name]
            if name in self._labelled:
                self._labelled.discard(name)
                for metric in self.series:
                    metric.remove_by_labels({"model": name})

    def labels(  # noqa: ANN201 - the metric's labelled child
        self, metric: MetricWrapperBase, lora_name: str | None, base: str, **labels: str
    ):
        """``metric``'s series for a request of ``lora_name`` (None: the base model ``base``).

        Looked up under the lock that ``unregister`` drops series under, so an update racing
        an unload lands on a series already gone (unexported) rather than bringing it back.
        """
        with self._lock:
            if lora_name is None:
                model = base
            else:
                model = lora_name if lora_name in self._labelled else OTHER_ADAPTERS
            return metric.labels(model=model, **labels)


ADAPTER_LABELS = AdapterLabels(
    (REQUESTS, PROMPT_TOKENS, GENERATION_TOKENS, TIME_TO_FIRST_TOKEN), MAX_ADAPTER_LABELS
)


def openmetrics_accept(accept: str) -> str:
    """``accept`` with each OpenMetrics media range asking for ``escaping=allow-utf-8`` (and
    version 1.0.0 unless it names one).

    Every name here is in the legacy character set, so that is the exposition the default
    underscores scheme should give; prometheus_client (0.24 to 0.26 at least) writes that one
    wrongly for names with a colon: `vllm_x_total` samples under `# TYPE vllm:x counter`
    (client_python issue 1177).
    """
    ranges = []
    for media_range in accept.split(","):
        media_type, *params = [part.strip() for part in media_range.split(";")]
        if media_type == "application/openmetrics-text":
            params = [p for p in params if not p.startswith("escaping=")]
            if not any(p.startswith("version=") for p in params):
                params.append("version=1.0.0")
            params.append("escaping=allow-utf-8")
        ranges.append(";".join([media_type, *params]))
    return ",".join(ranges)
