"""/metrics of a live server, through real clients: the openai package sends the requests,
aiohttp scrapes, prometheus_client's parsers read. vLLM's series (every one its Grafana
dashboard and the Gateway API Inference Extension's endpoint picker read) beside loraserve's."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterator

import aiohttp
import openai
import pytest
from openai_harness import BASE, RunningServer
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from loraserve import metrics

MAX_TOKENS = 5
PROMPT = "the quick brown fox"
MESSAGES = [{"role": "user", "content": "hello there"}]

# Every series vLLM's published Grafana dashboard (examples/observability/prometheus_grafana/
# grafana.json) queries, with the labels it selects or groups by, and the series' type.
DASHBOARD = {
    "vllm:e2e_request_latency_seconds": ("histogram", {"model_name"}),
    "vllm:prompt_tokens": ("counter", {"model_name"}),
    "vllm:generation_tokens": ("counter", {"model_name"}),
    "vllm:inter_token_latency_seconds": ("histogram", {"model_name"}),
    "vllm:request_time_per_output_token_seconds": ("histogram", {"model_name"}),
    "vllm:num_requests_running": ("gauge", {"model_name"}),
    "vllm:num_requests_waiting": ("gauge", {"model_name"}),
    "vllm:time_to_first_token_seconds": ("histogram", {"model_name"}),
    "vllm:kv_cache_usage_perc": ("gauge", {"model_name"}),
    "vllm:request_prompt_tokens": ("histogram", {"model_name"}),
    "vllm:request_generation_tokens": ("histogram", {"model_name"}),
    "vllm:request_success": ("counter", {"model_name", "finished_reason"}),
    "vllm:request_queue_time_seconds": ("histogram", {"model_name"}),
    "vllm:request_prefill_time_seconds": ("histogram", {"model_name"}),
    "vllm:request_decode_time_seconds": ("histogram", {"model_name"}),
    "vllm:request_max_num_generation_tokens": ("histogram", {"model_name"}),
}
# What the endpoint picker reads (its model-server protocol, docs/proposals/003-model-server-protocol).
ENDPOINT_PICKER = {
    "vllm:num_requests_waiting": ("gauge", set()),
    "vllm:num_requests_running": ("gauge", set()),
    "vllm:kv_cache_usage_perc": ("gauge", set()),
    "vllm:lora_requests_info": ("gauge", {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}),
    "vllm:cache_config_info": ("gauge", {"block_size", "num_gpu_blocks"}),
}
# The rest of the list, with vLLM's types.
OTHERS = {
    "vllm:request_inference_time_seconds": ("histogram", {"model_name", "engine"}),
    "vllm:request_params_n": ("histogram", {"model_name", "engine"}),
    "vllm:request_params_max_tokens": ("histogram", {"model_name", "engine"}),
    "vllm:iteration_tokens_total": ("histogram", {"model_name", "engine"}),
    "vllm:num_preemptions": ("counter", {"model_name", "engine"}),
    "process_cpu_seconds": ("counter", set()),
    "process_resident_memory_bytes": ("gauge", set()),
    "python_info": ("gauge", {"implementation", "version"}),
}
# vLLM's buckets (vllm/v1/metrics/loggers.py), copied here as the reference
REQUEST_LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
TOKEN_LATENCY = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0]
BUCKETS = {
    "vllm:time_to_first_token_seconds": [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
                                         0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
                                         160.0, 640.0, 2560.0],
    "vllm:inter_token_latency_seconds": TOKEN_LATENCY,
    "vllm:request_time_per_output_token_seconds": TOKEN_LATENCY,
    "vllm:e2e_request_latency_seconds": REQUEST_LATENCY,
    "vllm:request_queue_time_seconds": REQUEST_LATENCY,
    "vllm:request_inference_time_seconds": REQUEST_LATENCY,
    "vllm:request_prefill_time_seconds": REQUEST_LATENCY,
    "vllm:request_decode_time_seconds": REQUEST_LATENCY,
    "vllm:iteration_tokens_total": [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
    "vllm:request_params_n": [1, 2, 5, 10, 20],
}
TOKEN_COUNT_HISTOGRAMS = ("vllm:request_prompt_tokens", "vllm:request_generation_tokens",
                          "vllm:request_params_max_tokens", "vllm:request_max_num_generation_tokens")
PER_REQUEST_HISTOGRAMS = (  # one observation per finished sequence
    "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
    "vllm:request_inference_time_seconds", "vllm:request_time_per_output_token_seconds",
    "vllm:request_prompt_tokens", "vllm:request_generation_tokens",
    "vllm:request_params_max_tokens", "vllm:request_params_n",
    "vllm:request_max_num_generation_tokens", "vllm:time_to_first_token_seconds",
)


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


async def _get(url: str, headers: dict[str, str] | None = None, raw: bool = False) -> tuple[dict, bytes]:
    """GET with aiohttp (which asks for gzip or deflate); ``raw`` keeps the body as sent."""
    async with aiohttp.ClientSession(auto_decompress=not raw) as session:
        async with session.get(url, headers=headers or {}) as response:
            assert response.status == 200
            return dict(response.headers), await response.read()


def scrape(server: RunningServer) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], from the text exposition."""
    _, body = asyncio.run(_get(f"{server.url}/metrics"))
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def families(server: RunningServer) -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, the label names of its samples, `le` aside)."""
    _, body = asyncio.run(_get(f"{server.url}/metrics"))
    return {
        family.name: (family.type, {k for s in family.samples for k in s.labels} - {"le"})
        for family in text_string_to_metric_families(body.decode())
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def _idle(server: RunningServer, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while server.engine.engine.has_unfinished_requests():
        assert time.monotonic() < deadline, "the engine did not go idle"
        time.sleep(0.02)


def settle(server: RunningServer, ready, timeout: float = 15.0) -> dict:  # noqa: ANN001
    """Scrape until ``ready(samples)`` (the step thread publishes the idle state last)."""
    deadline = time.monotonic() + timeout
    while not ready(samples := scrape(server)):
        assert time.monotonic() < deadline, "the metrics did not settle"
        time.sleep(0.02)
    return samples


@pytest.fixture
def slow_steps(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each engine step takes >= 20 ms, so a 200-token request runs for seconds."""
    engine = server.engine.engine
    step = engine.step

    def slow_step():  # noqa: ANN202
        time.sleep(0.02)
        return step()

    monkeypatch.setattr(engine, "step", slow_step)


def test_every_series_the_dashboard_and_the_endpoint_picker_read_is_served(server: RunningServer):
    client(server).completions.create(model="a1", prompt=PROMPT, max_tokens=2)
    found = families(server)
    for name, (kind, labels) in {**DASHBOARD, **ENDPOINT_PICKER, **OTHERS}.items():
        assert name in found, name
        assert found[name][0] == kind, (name, found[name][0])
        assert labels <= found[name][1], (name, found[name][1])
    samples = scrape(server)
    for name in ("vllm:num_requests_running", "vllm:e2e_request_latency_seconds_count",
                 "vllm:prompt_tokens_total"):  # the base model's served name, as vLLM labels
        assert {labels["model_name"] for labels, _ in samples[name]} == {BASE}, name
        assert {labels["engine"] for labels, _ in samples[name]} == {"0"}, name
    reasons = {labels["finished_reason"] for labels, _ in samples["vllm:request_success_total"]}
    assert {"stop", "length", "abort", "error"} <= reasons
    (cache_labels, _), = samples["vllm:cache_config_info"]
    blocks = server.engine.engine.scheduler.blocks
    assert cache_labels["block_size"] == str(blocks.block_size)
    assert cache_labels["num_gpu_blocks"] == str(blocks.num_blocks)
    assert value(samples, "loraserve_requests_total", model="a1") >= 1  # loraserve's own stay


def test_histogram_buckets_are_vllms(server: RunningServer):
    samples = scrape(server)

    def bounds(name: str) -> list[float]:
        return [float(labels["le"]) for labels, _ in samples[f"{name}_bucket"]]

    for name, buckets in BUCKETS.items():
        assert bounds(name) == [*map(float, buckets), float("inf")], name
    max_model_len = server.engine.max_model_len  # 1, 2, 5, 10, 20, 50, ... up to it
    one_two_five = sorted(m * 10**e for e in range(6) for m in (1, 2, 5) if m * 10**e <= max_model_len)
    for name in TOKEN_COUNT_HISTOGRAMS:
        assert bounds(name) == [*map(float, one_two_five), float("inf")], name


def test_histograms_and_token_counters_match_the_requests_sent(server: RunningServer):
    api = client(server)
    extra = {"ignore_eos": True}
    before = scrape(server)
    usages = [
        api.completions.create(model=BASE, prompt=PROMPT, max_tokens=MAX_TOKENS, extra_body=extra).usage,
        api.chat.completions.create(model="a1", messages=MESSAGES, max_tokens=MAX_TOKENS,
                                    extra_body=extra).usage,
    ]
    for create, kwargs in ((api.completions.create, {"model": "a1", "prompt": PROMPT}),
                           (api.chat.completions.create, {"model": BASE, "messages": MESSAGES})):
        stream = create(**kwargs, max_tokens=MAX_TOKENS, stream=True, extra_body=extra,
                        stream_options={"include_usage": True})
        usages += [chunk.usage for chunk in stream if chunk.usage is not None]
    _idle(server)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    sent = len(usages)
    assert sent == 4 and all(u.completion_tokens == MAX_TOKENS for u in usages)
    for name in PER_REQUEST_HISTOGRAMS:
        assert delta(f"{name}_count", model_name=BASE) == sent, name
        assert delta(f"{name}_bucket", model_name=BASE, le="+Inf") == sent, name
    assert delta("vllm:request_success_total", model_name=BASE, finished_reason="length") == sent
    assert delta("vllm:prompt_tokens_total", model_name=BASE) == sum(u.prompt_tokens for u in usages)
    assert delta("vllm:generation_tokens_total", model_name=BASE) == sum(
        u.completion_tokens for u in usages)
    assert delta("vllm:inter_token_latency_seconds_count") == sent * (MAX_TOKENS - 1)
    assert delta("vllm:request_params_max_tokens_sum") == sent * MAX_TOKENS
    assert delta("vllm:request_generation_tokens_sum") == sent * MAX_TOKENS
    assert delta("vllm:request_params_n_sum") == sent
    # the intervals nest: queue + inference within e2e, inference = prefill + decode
    e2e, queue, inference, prefill, decode = (delta(f"vllm:{name}_seconds_sum") for name in (
        "e2e_request_latency", "request_queue_time", "request_inference_time",
        "request_prefill_time", "request_decode_time"))
    assert 0 < queue + inference <= e2e
    assert inference == pytest.approx(prefill + decode)
    # loraserve's own per-adapter series count the same requests
    assert delta("loraserve_requests_total", model="a1") == 2
    assert delta("loraserve_requests_total", model=BASE) == 2


def test_lora_requests_info_names_the_adapter_of_a_running_request(server: RunningServer, slow_steps):
    stream = client(server).completions.create(
        model="a2", prompt=PROMPT, max_tokens=200, stream=True, extra_body={"ignore_eos": True})
    try:
        next(iter(stream))  # the request is in the batch now, and stays for seconds
        busy = scrape(server)
    finally:
        stream.close()  # hang up: the server aborts it
    (labels, updated), = busy["vllm:lora_requests_info"]
    assert "a2" in labels["running_lora_adapters"].split(",")
    assert labels["max_lora"] == "2"
    assert time.time() - 60 < updated <= time.time()  # the Unix time of the last update
    assert value(busy, "vllm:num_requests_running", model_name=BASE) >= 1
    assert 0 < value(busy, "vllm:kv_cache_usage_perc", model_name=BASE) <= 1

    idle = settle(server, lambda s: value(s, "vllm:num_requests_running") == 0)
    (labels, _), = idle["vllm:lora_requests_info"]  # still there, with nothing named
    assert labels == {"max_lora": "2", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    assert value(idle, "vllm:num_requests_running", model_name=BASE) == 0
    assert value(idle, "vllm:kv_cache_usage_perc", model_name=BASE) == 0


async def _post(url: str, body: dict) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as response:
            assert response.status == 200, await response.text()


def _load(server: RunningServer, name: str, path: str) -> None:
    asyncio.run(_post(f"{server.url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}))


def _unload(server: RunningServer, name: str) -> None:
    asyncio.run(_post(f"{server.url}/v1/unload_lora_adapter", {"lora_name": name}))


def _models(samples: dict) -> set[str]:
    """The `model` values of loraserve's per-model series."""
    names = ("loraserve_requests_total", "loraserve_generation_tokens_total",
             "loraserve_prompt_tokens_total", "loraserve_time_to_first_token_seconds_count")
    return {labels["model"] for name in names for labels, _ in samples.get(name, [])}


def test_adapter_series_are_dropped_on_unload_and_capped(
    server: RunningServer, server_adapters, monkeypatch: pytest.MonkeyPatch
):
    path = str(server_adapters["extra"])
    _load(server, "extra", path)
    client(server).completions.create(model="extra", prompt=PROMPT, max_tokens=2)
    assert "extra" in _models(scrape(server))
    _unload(server, "extra")
    assert "extra" not in _models(scrape(server))

    # past the cap, a new adapter counts under the shared value and never gets its own
    monkeypatch.setattr(metrics.ADAPTER_LABELS, "limit", 0)
    before = value(scrape(server), "loraserve_requests_total", model=metrics.OTHER_ADAPTERS)
    _load(server, "extra", path)
    try:
        client(server).completions.create(model="extra", prompt=PROMPT, max_tokens=2)
        samples = scrape(server)
    finally:
        _unload(server, "extra")
    assert "extra" not in _models(samples)
    assert value(samples, "loraserve_requests_total", model=metrics.OTHER_ADAPTERS) == before + 1
    assert {"a1", "a2"} <= _models(samples)  # adapters within the cap keep theirs


def test_gzip_and_openmetrics_are_negotiated(server: RunningServer):
    headers, body = asyncio.run(_get(f"{server.url}/metrics", {"Accept-Encoding": "gzip"}, raw=True))
    assert headers["Content-Encoding"] == "gzip"
    names = {f.name for f in text_string_to_metric_families(gzip.decompress(body).decode())}
    assert {"vllm:num_requests_waiting", "vllm:lora_requests_info"} <= names

    for accept in ("application/openmetrics-text",  # what Prometheus 2 and 3 send, first
                   "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.5"):
        headers, body = asyncio.run(_get(f"{server.url}/metrics", {"Accept": accept}))
        assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        text = body.decode()
        assert text.endswith("# EOF\n")
        found = {f.name: f for f in openmetrics_families(text)}
        assert found["vllm:prompt_tokens"].type == "counter"
        assert "vllm:prompt_tokens_total" in {s.name for s in found["vllm:prompt_tokens"].samples}
        assert found["vllm:e2e_request_latency_seconds"].type == "histogram"
        assert found["vllm:lora_requests_info"].samples
        assert not [name for name in found if name.startswith("vllm_")]  # colons kept


def test_the_serving_core_exports_what_the_http_route_serves(server: RunningServer):
    from loraserve.entrypoints.openai.server_config import ServerConfig
    from loraserve.entrypoints.openai.serving import OpenAIServing

    async def direct():  # noqa: ANN202
        core = OpenAIServing(server.engine, ServerConfig(allow_runtime_lora_updating=True))
        return await core.handle("GET", "/metrics")

    response = server.call(direct())
    headers, _ = asyncio.run(_get(f"{server.url}/metrics"))
    assert response.headers["Content-Type"] == headers["Content-Type"]
    core = {f.name: f.type for f in text_string_to_metric_families(response.body.decode())}
    assert core == {name: kind for name, (kind, _) in families(server).items()}


@pytest.fixture(autouse=True)
def _no_leftover_requests(server: RunningServer) -> Iterator[None]:
    yield
    _idle(server)
