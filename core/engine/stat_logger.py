"""vLLM's ``vllm:*`` Prometheus series, fed from the engine's step stats.

Names, types, help texts, label names and buckets are vLLM's (``vllm/v1/metrics/loggers.py``),
so its Grafana dashboard, KEDA/HPA recipes and the Gateway API Inference Extension's endpoint
picker read loraserve unchanged. Every series but the two ``*_info`` gauges has vLLM's
``model_name`` (the served name of the base model, adapter requests included, as vLLM labels
them) and ``engine`` ("0") labels. Only the server's engine has them, as in vLLM (whose
offline ``LLM`` logs no stats).
"""

from __future__ import annotations

import threading
import time

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from loraserve import metrics
from loraserve.config import EngineConfig
from loraserve.engine.stats import BatchState, StepStats

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM's, all shown from 0
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                          2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                            40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_N_BUCKETS = (1, 2, 5, 10, 20)
_LABELS = ("model_name", "engine")


def one_two_five_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's token-count buckets)."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return buckets
            buckets.append(mantissa * scale)
        scale *= 10


class LoRARequestsInfo:
    """``vllm:lora_requests_info``: one series, whose labels name the adapters running and
    waiting now and whose value is the Unix time they were last updated.

    vLLM keeps a series for every combination of adapters it has ever seen; routers read the
    one with the largest value. Only the latest is exported here (the same answer, bounded),
    swapped in one assignment so a scrape never sees none.
    """

    def __init__(self, max_lora: int) -> None:
        self.max_lora = str(max_lora)
        self._latest = (("", ""), time.time())  # (running, waiting), updated at

    def update(self, running: tuple[str, ...], waiting: tuple[str, ...]) -> None:
        self._latest = ((",".join(running), ",".join(waiting)), time.time())

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> list[GaugeMetricFamily]:
        (running, waiting), updated = self._latest
        family = self._family()
        family.add_metric([self.max_lora, waiting, running], updated)
        return [family]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "vllm:lora_requests_info", "Running stats on lora requests.",
            labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        )


class PrometheusStatLogger:
    """The ``vllm:*`` series of one engine, on ``metrics.REGISTRY``.

    Building one unregisters the previous one's series, as vLLM does: one process serves one
    engine, and a second engine in the same process (tests) takes the names over.
    """

    _registered: list = []  # the collectors of the logger that owns the names now
    _lock = threading.Lock()

    def __init__(self, config: EngineConfig, max_model_len: int, num_kv_blocks: int) -> None:
        self._collectors: list = []
        self._values = (str(config.served_model_name), "0")  # model_name, engine
        tokens = one_two_five_buckets(max_model_len)
        latency = _REQUEST_LATENCY_BUCKETS
        gauge, counter, histogram = self._gauge, self._counter, self._histogram

        self.running = gauge("vllm:num_requests_running",
                             "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting",
                             "Number of requests waiting to be processed.")
        self.kv_cache_usage = gauge("vllm:kv_cache_usage_perc",
                                    "KV-cache usage. 1 means 100 percent usage.")
        self.preemptions = counter("vllm:num_preemptions",
                                   "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.")
        self.success = self._add(Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            (*_LABELS, "finished_reason"), registry=None))
        for reason in FINISH_REASONS:
            self.success.labels(*self._values, reason)

        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens)
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tokens)
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            _ITERATION_TOKEN_BUCKETS)
        self.max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", tokens)
        self.params_n = histogram(
            "vllm:request_params_n", "Histogram of the n request parameter.", _N_BUCKETS)
        self.params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
            tokens)

        self.time_to_first_token = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            _TTFT_BUCKETS)
        self.inter_token_latency = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            _TOKEN_LATENCY_BUCKETS)
        self.time_per_output_token = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.", _TOKEN_LATENCY_BUCKETS)
        self.e2e_latency = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            latency)
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.", latency)
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.", latency)
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.", latency)
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.", latency)

        cache_info = {  # vLLM's CacheConfig fields that mean something here, and `engine`
            "block_size": str(config.block_size), "cache_dtype": "auto",
            "enable_prefix_caching": "False", "num_gpu_blocks": str(num_kv_blocks),
            "num_cpu_blocks": "None", "engine": "0",
        }
        cache = self._add(Gauge(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
            tuple(cache_info), registry=None))
        cache.labels(**cache_info).set(1)
        self.lora_info = None
        if config.enable_lora:  # present from the start, with empty adapter lists
            self.lora_info = self._add(LoRARequestsInfo(config.max_loras))
        self._take_over_names()

    def _gauge(self, name: str, doc: str):  # noqa: ANN202 - the labelled child
        return self._add(Gauge(name, doc, _LABELS, registry=None)).labels(*self._values)

    def _counter(self, name: str, doc: str):  # noqa: ANN202
        return self._add(Counter(name, doc, _LABELS, registry=None)).labels(*self._values)

    def _histogram(self, name: str, doc: str, buckets):  # noqa: ANN001, ANN202
        histogram = Histogram(name, doc, _LABELS, buckets=buckets, registry=None)
        return self._add(histogram).labels(*self._values)

    def _add(self, collector):  # noqa: ANN001, ANN202
        self._collectors.append(collector)
        return collector

    def _take_over_names(self) -> None:
        cls = type(self)
        with cls._lock:
            for collector in cls._registered:
                metrics.REGISTRY.unregister(collector)
            for collector in self._collectors:
                metrics.REGISTRY.register(collector)
            cls._registered = self._collectors

    def record(self, state: BatchState, step: StepStats | None) -> None:
        """Export the batch after a step (or while idle) and, given one, what the step did."""
        self.running.set(state.running)
        self.waiting.set(state.waiting)
        self.kv_cache_usage.set(state.kv_cache_usage)
        if self.lora_info is not None:
            self.lora_info.update(state.running_adapters, state.waiting_adapters)
        if step is not None:
            self._record_step(step)

    def _record_step(self, step: StepStats) -> None:
        self.preemptions.inc(step.preemptions)
        self.prompt_tokens.inc(step.prompt_tokens)
        self.generation_tokens.inc(step.generation_tokens)
        self.iteration_tokens.observe(step.num_tokens)
        for seconds in step.time_to_first_token:
            self.time_to_first_token.observe(seconds)
        for seconds in step.inter_token_latency:
            self.inter_token_latency.observe(seconds)
        for seq in step.finished_sequences:
            self.success.labels(*self._values, seq.finish_reason).inc()
            self.e2e_latency.observe(seq.e2e_latency)
            self.queue_time.observe(seq.queue_time)
            self.prefill_time.observe(seq.prefill_time)
            self.inference_time.observe(seq.inference_time)
            self.decode_time.observe(seq.decode_time)
            self.request_prompt_tokens.observe(seq.prompt_tokens)
            self.request_generation_tokens.observe(seq.generation_tokens)
            self.time_per_output_token.observe(seq.time_per_output_token)
            if seq.max_tokens:
                self.params_max_tokens.observe(seq.max_tokens)
        for request in step.finished_requests:
            self.params_n.observe(request.n)
            self.max_generation_tokens.observe(request.max_generation_tokens)
