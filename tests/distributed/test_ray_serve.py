"""loraserve through Ray Serve: a local cluster (2 CPUs), 2 replicas of the tiny model (3 after
the scaling test), the affinity router, adapters from the filesystem resolver. One cluster for
the module; the tests that change the deployment (scaling, a killed replica) run last."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs the loraserve[ray] extra")
pytestmark = pytest.mark.ray

import aiohttp  # noqa: E402
import openai  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from loraserve.config import EngineConfig  # noqa: E402
from loraserve.entrypoints.openai.server_config import ServerConfig  # noqa: E402
from loraserve.testing import make_adapter  # noqa: E402

HEADER = "x-loraserve-replica"
MAX_ADAPTERS = 2  # per replica: fewer than the adapters the tests use
ADAPTERS = [f"a{i}" for i in range(8)]


@pytest.fixture(scope="module")
def adapters(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resolver")
    for i, name in enumerate(ADAPTERS):
        make_adapter(llama_dir, root / name, rank=4, targets=("q_proj", "v_proj"), seed=30 + i)
    return root


class Cluster:
    def __init__(self, llama_dir: Path, state_dir: Path, port: int) -> None:
        self.model = str(llama_dir)
        self.state_dir = state_dir
        self.url = f"http://127.0.0.1:{port}"
        self.engine_config = EngineConfig(
            model=self.model, enable_lora=True, max_loras=2, max_cpu_loras=MAX_ADAPTERS,
            max_num_seqs=4, allow_runtime_lora_updating=True, disable_log_stats=True)
        self.server_config = ServerConfig(allow_runtime_lora_updating=True)

    def deploy(self, num_replicas: int) -> None:
        from ray import serve

        from loraserve.distributed.ray_serve import RayOptions, build_app

        options = RayOptions(num_replicas=num_replicas, affinity_router=True, replica_cpus=0.5,
                             state_dir=str(self.state_dir))
        serve.run(build_app(engine_config=self.engine_config, server_config=self.server_config,
                            options=options), name="loraserve", route_prefix="/")

    def reports(self) -> list:
        from loraserve.distributed.registry import AdapterRegistry

        return AdapterRegistry(self.state_dir).reports()

    def wait_reports(self, ok, timeout: float = 10.0):  # noqa: ANN001, ANN201
        """The replicas' reports once ``ok(reports)`` holds (they are written every second)."""
        deadline = time.monotonic() + timeout
        while True:
            reports = self.reports()
            if ok(reports) or time.monotonic() > deadline:
                return reports
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(llama_dir: Path, adapters: Path, tmp_path_factory: pytest.TempPathFactory):
    from ray import serve

    tmp = tmp_path_factory.mktemp("ray")
    env = {"RAY_USAGE_STATS_ENABLED": "0", "VLLM_PLUGINS": "lora_filesystem_resolver",
           "VLLM_LORA_RESOLVER_CACHE_DIR": str(adapters)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp / "r"),
             runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cluster = Cluster(llama_dir, tmp / "state", port)
        cluster.deploy(2)
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def post(cluster: Cluster, path: str, body: object, raw: bytes | None = None):
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else json.dumps(body).encode()
        async with session.post(cluster.url + path, data=data,
                                headers={"Content-Type": "application/json"}) as response:
            return response.status, response.headers.get(HEADER), await response.read()


def completion(model: str, **kw) -> dict:
    return {"model": model, "prompt": "hello there", "max_tokens": 4, "temperature": 0, **kw}


async def test_requests_for_one_adapter_stick_to_one_replica(cluster):
    served = [await post(cluster, "/v1/completions", completion("a0")) for _ in range(6)]
    assert {status for status, _, _ in served} == {200}
    assert len({replica for _, replica, _ in served}) == 1, served


async def test_a_cold_burst_loads_the_adapter_once_on_one_replica(cluster):
    burst = await asyncio.gather(*[post(cluster, "/v1/completions", completion("a1"))
                                   for _ in range(4)])
    assert {status for status, _, _ in burst} == {200}, burst
    assert len({replica for _, replica, _ in burst}) == 1, burst
    reports = cluster.wait_reports(lambda rs: any("a1" in r.extra.get("loads", {}) for r in rs))
    loads = Counter()
    for report in reports:
        loads.update(report.extra.get("loads", {}))
    assert loads["a1"] == 1, [r.extra for r in reports]


async def test_streamed_text_equals_the_single_engine_text(cluster, llama_dir):
    from loraserve import LLM, SamplingParams
    from loraserve.lora.request import LoRARequest

    client = openai.AsyncOpenAI(base_url=cluster.url + "/v1", api_key="none")
    stream = await client.completions.create(model="a2", prompt="hello there", max_tokens=12,
                                             temperature=0, stream=True)
    text = "".join([chunk.choices[0].text async for chunk in stream])
    llm = LLM(str(llama_dir), enable_lora=True, max_lora_rank=8)
    path = os.path.join(os.environ["VLLM_LORA_RESOLVER_CACHE_DIR"], "a2")
    [expected] = llm.generate(["hello there"], SamplingParams(temperature=0, max_tokens=12),
                              lora_request=LoRARequest("a2", 1, path))
    assert text == expected.outputs[0].text and text


async def test_chat_through_the_openai_client_names_its_adapter(cluster):
    client = openai.AsyncOpenAI(base_url=cluster.url + "/v1", api_key="none")
    raw = await client.chat.completions.with_raw_response.create(
        model="a0", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0)
    answer = raw.parse()
    assert answer.model == "a0" and answer.choices[0].message.content is not None
    assert raw.headers[HEADER]
    models = await client.models.list()
    assert {cluster.model, "a0"} <= {m.id for m in models.data}


async def test_more_adapters_than_slots_stay_within_the_bound_and_unload_once(cluster):
    for name in ADAPTERS[3:]:
        status, _, body = await post(cluster, "/v1/completions", completion(name))
        assert status == 200, body
        for report in cluster.reports():  # each replica's engine holds at most its LRU's share
            assert len(report.adapters) <= MAX_ADAPTERS, report
    reports = cluster.wait_reports(
        lambda rs: sum(sum(r.extra.get("unloads", {}).values()) for r in rs) >= 3)
    unloads = [r.extra["unloads"] for r in reports]
    assert sum(sum(u.values()) for u in unloads) >= 3, unloads  # 6+ adapters, 4 slots in all
    assert all(count == 1 for u in unloads for count in u.values()), unloads  # not twice


async def test_unknown_adapter_404_and_bad_body_400_through_ray(cluster):
    status, replica, body = await post(cluster, "/v1/completions", completion("no-such"))
    assert status == 404 and replica and "no-such" in json.loads(body)["error"]["message"]
    status, _, body = await post(cluster, "/v1/completions", None, raw=b"{not json")
    assert status == 400 and json.loads(body)["error"]["code"] == 400
    status, _, body = await post(cluster, "/v1/completions", completion("a0", max_tokens=-3))
    assert status == 400, body


def _generated(cluster: Cluster, model: str) -> float:
    """Tokens generated for ``model`` on all replicas, from the ingress's merged /metrics."""
    import urllib.request

    with urllib.request.urlopen(cluster.url + "/metrics") as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "loraserve_generation_tokens_total" and s.labels.get("model") == model)


async def test_a_client_disconnect_frees_the_sequence(cluster):
    body = completion("a0", max_tokens=400, ignore_eos=True, stream=True)
    before = _generated(cluster, "a0")
    async with aiohttp.ClientSession() as session:
        async with session.post(cluster.url + "/v1/completions", json=body) as response:
            assert response.status == 200
            await response.content.readuntil(b"\n\n")  # the first event, then hang up
    time.sleep(1.0)
    reports = cluster.wait_reports(lambda rs: all(r.extra.get("running") == 0 for r in rs),
                                   timeout=30)
    assert all(r.extra.get("running") == 0 for r in reports)
    assert _generated(cluster, "a0") - before < 100  # aborted, not run to 400 tokens


async def test_models_lists_the_union_and_metrics_name_each_replica(cluster):
    import urllib.request

    with urllib.request.urlopen(cluster.url + "/v1/models") as response:
        assert response.headers[HEADER]
        ids = {card["id"] for card in json.load(response)["data"]}
    held = {name for r in cluster.reports() for name, _ in r.adapters}
    assert cluster.model in ids and held <= ids and len(held) > MAX_ADAPTERS
    with urllib.request.urlopen(cluster.url + "/metrics") as response:
        text = response.read().decode()
    replicas = {s.labels["replica"] for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "vllm:num_requests_running"}
    assert replicas == {r.replica for r in cluster.reports()} and len(replicas) == 2


async def test_load_and_unload_reach_every_replica_and_survive_scaling(cluster, llama_dir,
                                                                      tmp_path):
    path = make_adapter(llama_dir, tmp_path / "pinned", rank=4, targets=("q_proj",), seed=77)
    load = {"lora_name": "pinned", "lora_path": str(path)}
    status, _, body = await post(cluster, "/v1/load_lora_adapter", load)
    assert status == 200, body
    status, _, _ = await post(cluster, "/v1/load_lora_adapter", load)
    assert status == 400  # already loaded, as on one server
    every = cluster.wait_reports(
        lambda rs: all(("pinned", str(path)) in r.adapters for r in rs) and len(rs) == 2)
    assert all(("pinned", str(path)) in r.adapters for r in every)
    cluster.deploy(3)
    three = cluster.wait_reports(lambda rs: len(rs) == 3 and all(
        ("pinned", str(path)) in r.adapters for r in rs), timeout=60)
    assert len(three) == 3 and all(("pinned", str(path)) in r.adapters for r in three), three
    status, _, body = await post(cluster, "/v1/unload_lora_adapter", {"lora_name": "pinned"})
    assert status == 200, body
    gone = cluster.wait_reports(lambda rs: all("pinned" not in dict(r.adapters) for r in rs))
    assert all("pinned" not in dict(r.adapters) for r in gone)
    status, _, _ = await post(cluster, "/v1/completions", completion("pinned"))
    assert status == 404


async def test_a_killed_replica_is_restarted_and_requests_succeed(cluster):
    before = {r.replica for r in cluster.reports()}
    [victim] = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "LoRAReplica" in a["name"]][:1]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not {r.replica for r in cluster.reports()} - before:
        await post(cluster, "/v1/completions", completion("a0"))  # may fail while it is down
        await asyncio.sleep(0.5)
    assert {r.replica for r in cluster.reports()} - before, "Serve started no new replica"
    replies = [await post(cluster, "/v1/completions", completion(m))
               for m in ("a0", "a3", cluster.model, "a5")]
    assert [status for status, _, _ in replies] == [200] * 4, replies
