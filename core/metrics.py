"""Prometheus metrics, defined once; the engine and the server update them, /metrics exports."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

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
