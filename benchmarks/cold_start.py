"""Cold start through the remote resolvers (S3, Hub, HTTP), served by AsyncLLMEngine on CPU.

Model: random Llama, hidden 512, 8 layers; adapters of rank 16 on all seven projections.
Each resolver in turn serves one adapter from a local server: S3 from moto_server behind a
throttling proxy, the Hub from a fake Hub (HF_ENDPOINT), HTTP from an aiohttp file server.
Every round starts from an empty download cache and a new adapter name, so each first
request really downloads. Two figures, each a ratio of timings taken in this process,
interleaved, best of N rounds:

1. time to first token of the first request for a new adapter name / the same once loaded
   (servers at full loopback speed: what resolving, downloading and loading cost);
2. how long requests of 4 loaded adapters take (TTFT and total latency) while a cold
   adapter downloads over a link throttled to ~2 s / the same with no download
   (target <= 1.2: downloads must not stall the batch).

    python benchmarks/cold_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from loraserve.config import EngineConfig
from loraserve.engine.async_engine import AsyncLLMEngine
from loraserve.lora.request import LoRARequest
from loraserve.plugins import get_plugin_manager, reset_plugin_manager
from loraserve.resolution.download import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from loraserve.sampling_params import SamplingParams
from loraserve.testing import BENCHMARK_MODEL as MODEL
from loraserve.testing import make_adapter, make_tiny_model
from loraserve.testing.servers import AppThread, Faults, serve_bytes

RANK, WARM_ADAPTERS, PROMPT_LEN, NEW_TOKENS = 16, 4, 32, 16
SERVED = "bench-base"
DOWNLOAD_S = 2.0  # how long the throttled link takes to send the weights
_ids = itertools.count()


# ---- the three remotes ------------------------------------------------------------------
def resolver_test_fakes(resolver: str) -> ModuleType:
    """The fake backend a resolver's tests use (``resolvers/<resolver>/tests/conftest.py``):
    fakes live with the tests, so this script loads that file by its path."""
    path = Path(__file__).resolve().parents[1] / "resolvers" / resolver / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location(f"{resolver}_test_fakes", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Remote:
    """A local stand-in for one remote store; ``slow`` throttles adapter weight downloads."""

    plugin: str
    files: dict[str, bytes]  # the adapter's files, published under every name

    def env(self, work: Path) -> dict[str, str]: ...

    def publish(self, lora_name: str) -> None: ...

    def adapter_name(self, stem: str) -> str:
        return stem

    def set_slow(self, slow: bool) -> None:
        size = len(self.files[ADAPTER_WEIGHTS])
        chunk = 64 * 1024
        delay = DOWNLOAD_S / max(1, size // chunk)
        self.faults = (
            Faults(mode="slow", chunk=chunk, delay=delay, only=ADAPTER_WEIGHTS)
            if slow
            else Faults()
        )

    def close(self) -> None: ...


class HttpRemote(Remote):
    plugin = "lora_http_resolver"

    def __init__(self, files: dict[str, bytes]) -> None:
        from aiohttp import web

        self.files, self.paths, self.faults = files, {}, Faults()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = AppThread(app)

    async def _handle(self, request):
        from aiohttp import web

        data = self.paths.get(request.path)
        if data is None:
            return web.Response(status=404)
        return await serve_bytes(request, data, self.faults)

    def env(self, work: Path) -> dict[str, str]:
        return {"VLLM_LORA_RESOLVER_HTTP_URL": self.server.url + "/a/{base_model_name}/{lora_name}"}

    def publish(self, lora_name: str) -> None:
        for name, data in self.files.items():
            self.paths[f"/a/{SERVED}/{lora_name}/{name}"] = data

    def close(self) -> None:
        self.server.close()


class HubRemote(Remote):
    plugin = "lora_hf_hub_resolver"

    def __init__(self, files: dict[str, bytes]) -> None:
        fakes = resolver_test_fakes("hf_hub")
        self.files, self.hub = files, fakes.FakeHub()
        self.server = AppThread(fakes.hub_app(self.hub))

    @property
    def faults(self) -> Faults:
        return self.hub.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self.hub.faults = value

    def env(self, work: Path) -> dict[str, str]:
        return {
            "HF_ENDPOINT": self.server.url,
            "HF_HUB_CACHE": str(work / "hf-cache"),  # fresh per round: the Hub's cache is reused
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "VLLM_LORA_RESOLVER_HF_REPO_LIST": "bench",
        }

    def adapter_name(self, stem: str) -> str:
        return f"bench/{stem}"

    def publish(self, lora_name: str) -> None:
        self.hub.repos[lora_name] = dict(self.files)

    def close(self) -> None:
        self.server.close()


class S3Remote(Remote):
    """moto_server in a subprocess, reached through a proxy that can throttle GETs."""

    plugin = "lora_s3_resolver"
    bucket = "adapters"

    def __init__(self, files: dict[str, bytes]) -> None:
        fakes = resolver_test_fakes("s3")
        self.files = files
        self._moto = fakes.moto_server()
        self.moto = self._moto.__enter__()
        self._s3().create_bucket(Bucket=self.bucket)
        self._forward = fakes.S3Proxy(self.moto)
        self.proxy = AppThread(self._forward.app())

    @property
    def faults(self) -> Faults:
        return self._forward.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self._forward.faults = value

    def _s3(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.moto,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        )

    def env(self, work: Path) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.proxy.url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "VLLM_LORA_RESOLVER_S3_URI": f"s3://{self.bucket}/{{base_model_name}}/{{lora_name}}",
        }

    def publish(self, lora_name: str) -> None:
        s3 = self._s3()
        for name, data in self.files.items():
            s3.put_object(Bucket=self.bucket, Key=f"{SERVED}/{lora_name}/{name}", Body=data)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._forward.close(), self.proxy.loop).result(10)
        self.proxy.close()
        self._moto.__exit__(None, None, None)


def use_remote(remote: Remote, work: Path) -> None:
    """Point the resolver variables at ``remote`` with an empty cache; reload the plugins."""
    work.mkdir(parents=True)
    os.environ.update(remote.env(work))
    os.environ["VLLM_PLUGINS"] = remote.plugin
    os.environ["VLLM_LORA_RESOLVER_DOWNLOAD_DIR"] = str(work / "cache")
    reset_plugin_manager()


class CurrentPlugins:
    """Adapter events for whichever plugin manager is current (it is reset per resolver)."""

    def notify_loaded(self, lora_request):
        get_plugin_manager().notify_loaded(lora_request)

    def notify_evicted(self, lora_name):
        get_plugin_manager().notify_evicted(lora_name)

    def notify_load_failed(self, lora_name, lora_path, error):
        get_plugin_manager().notify_load_failed(lora_name, lora_path, error)


# ---- requests -----------------------------------------------------------------------------
@dataclass
class Timing:
    start: float
    ttft: float
    total: float


async def timed_request(
    engine: AsyncLLMEngine, model: str, prompt: list[int], max_tokens: int
) -> Timing:
    """One request as the server runs it: resolve the model name, then stream the output."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    lora = await engine.resolve_model(model, allow_resolvers=True)
    ttft = None
    async for _ in engine.generate(prompt, params, f"r{next(_ids)}", lora):
        if ttft is None:
            ttft = time.perf_counter() - start
    return Timing(start, ttft, time.perf_counter() - start)


@dataclass
class Stream:
    """Back-to-back requests for each loaded adapter until ``stop`` (at most ``cap`` each)."""

    engine: AsyncLLMEngine
    adapters: list[str]
    prompts: list[list[int]]
    cap: int = 200
    timings: list[Timing] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        async def client(name: str, prompt: list[int]) -> None:
            for _ in range(self.cap):
                if stop.is_set():
                    return
                self.timings.append(await timed_request(self.engine, name, prompt, NEW_TOKENS))

        await asyncio.gather(*(client(n, p) for n, p in zip(self.adapters, self.prompts)))

    def during(self, t0: float, t1: float) -> list[Timing]:
        return [t for t in self.timings if t0 <= t.start <= t1]


async def stream_window(
    stream: Stream, cold: str | None, length: float
) -> tuple[list[Timing], Timing | None]:
    """Run the stream; after a short lead, download ``cold`` (or just wait ``length``).

    Returns the stream's requests started while the download ran (or during ``length``).
    """
    stop = asyncio.Event()
    task = asyncio.ensure_future(stream.run(stop))
    await asyncio.sleep(0.5)  # the batch is in its steady state
    t0 = time.perf_counter()
    cold_timing = None
    if cold is None:
        await asyncio.sleep(length)
    else:
        cold_timing = await timed_request(stream.engine, cold, stream.prompts[0], 1)
    t1 = time.perf_counter()
    stop.set()
    await task
    return stream.during(t0, t1), cold_timing


# ---- the benchmark ------------------------------------------------------------------------
@dataclass
class Results:
    cold_ttft: float = float("inf")
    loaded_ttft: float = float("inf")
    slow_cold_ttft: float = float("inf")
    base: dict[str, float] = field(
        default_factory=lambda: {"ttft": float("inf"), "total": float("inf")}
    )
    busy: dict[str, float] = field(
        default_factory=lambda: {"ttft": float("inf"), "total": float("inf")}
    )
    worst: dict[str, float] = field(default_factory=lambda: {"base": 0.0, "busy": 0.0})
    requests: int = 0

    def keep_best(self, key: str, timings: list[Timing]) -> None:
        target = self.base if key == "base" else self.busy
        target["ttft"] = min(target["ttft"], statistics.mean(t.ttft for t in timings))
        target["total"] = min(target["total"], statistics.mean(t.total for t in timings))
        self.worst[key] = max(self.worst[key], max(t.ttft for t in timings))


async def measure_round(
    engine: AsyncLLMEngine,
    remote: Remote,
    work: Path,
    stream: Stream,
    result: Results,
    counted: bool,
) -> None:
    prompt = stream.prompts[0]
    # 1. first request for a new name at full speed, then the same adapter once loaded
    use_remote(remote, work / "fast")
    remote.set_slow(False)
    name = remote.adapter_name(f"cold-{next(_ids)}")
    remote.publish(name)
    cold = await timed_request(engine, name, prompt, 1)
    loaded = min(
        [await timed_request(engine, name, prompt, 1) for _ in range(5)], key=lambda t: t.ttft
    )
    await engine.remove_lora(name)
    # 2. the loaded adapters' requests with no download, then during a throttled download
    stream.timings.clear()
    base, _ = await stream_window(stream, None, DOWNLOAD_S + 0.3)
    use_remote(remote, work / "slow")
    remote.set_slow(True)
    name = remote.adapter_name(f"cold-{next(_ids)}")
    remote.publish(name)
    stream.timings.clear()
    busy, slow_cold = await stream_window(stream, name, 0)
    await engine.remove_lora(name)
    remote.set_slow(False)
    if not counted:
        print(
            f"  {remote.plugin:<22} warm-up: first request ever {cold.ttft * 1000:7.1f} ms "
            "(includes importing the resolver's client library)",
            flush=True,
        )
        return
    result.cold_ttft = min(result.cold_ttft, cold.ttft)
    result.loaded_ttft = min(result.loaded_ttft, loaded.ttft)
    result.slow_cold_ttft = min(result.slow_cold_ttft, slow_cold.ttft)
    result.keep_best("base", base)
    result.keep_best("busy", busy)
    result.requests += len(busy)


async def bench(work: Path, rounds: int) -> None:
    print(f"building the model and {WARM_ADAPTERS + 1} adapters in {work} ...", flush=True)
    model_dir = make_tiny_model(work / "model", seed=0, **MODEL)
    warm_paths = [
        make_adapter(model_dir, work / f"warm{i}", rank=RANK, alpha=32, seed=100 + i)
        for i in range(WARM_ADAPTERS)
    ]
    cold_dir = make_adapter(
        model_dir, work / "cold", rank=RANK, alpha=32, seed=200, base_model_name=SERVED
    )
    files = {n: (cold_dir / n).read_bytes() for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    print(
        f"adapter: {len(files[ADAPTER_WEIGHTS]) / 2**20:.1f} MiB of weights; "
        f"throttled link sends it in ~{DOWNLOAD_S:g} s",
        flush=True,
    )

    remotes: list[Remote] = []
    try:
        remotes = [S3Remote(files), HubRemote(files), HttpRemote(files)]
        use_remote(remotes[0], work / "start")
        engine = AsyncLLMEngine(
            EngineConfig(
                model=str(model_dir),
                served_model_name=SERVED,
                enable_lora=True,
                max_loras=8,
                max_lora_rank=RANK,
                max_num_seqs=16,
                allow_runtime_lora_updating=True,
            ),
            lora_events=CurrentPlugins(),
        )
        warm = [f"warm{i}" for i in range(WARM_ADAPTERS)]
        for name, path in zip(warm, warm_paths):
            await engine.add_lora(LoRARequest(name, 1, str(path)))
        prompts = torch.randint(
            3, 300, (WARM_ADAPTERS, PROMPT_LEN), generator=torch.Generator().manual_seed(0)
        ).tolist()
        stream = Stream(engine, warm, prompts)
        results = {r.plugin: Results() for r in remotes}
        for round_ in range(rounds + 1):  # round 0 warms up imports and is not counted
            if round_:
                print(f"round {round_}/{rounds}", flush=True)
            for remote in remotes:
                await measure_round(
                    engine,
                    remote,
                    work / f"r{round_}-{remote.plugin}",
                    stream,
                    results[remote.plugin],
                    counted=round_ > 0,
                )
        await engine.shutdown()
    finally:
        for remote in remotes:
            remote.close()
        reset_plugin_manager()
    report(results, rounds)


def report(results: dict[str, Results], rounds: int) -> None:
    ms = 1000
    print(
        f"\nbest of {rounds} rounds (ms; stream = {WARM_ADAPTERS} loaded adapters, "
        f"{PROMPT_LEN} prompt + {NEW_TOKENS} new tokens each, back to back):"
    )
    print(
        f"  {'resolver':<22} {'cold TTFT':>9} {'loaded':>7} {'throttled':>9} | "
        f"{'stream TTFT':>11} {'+download':>9} {'latency':>8} {'+download':>9} {'worst TTFT none/dl':>18} {'n':>4}"
    )
    for plugin, r in results.items():
        print(
            f"  {plugin:<22} {r.cold_ttft * ms:9.1f} {r.loaded_ttft * ms:7.1f} "
            f"{r.slow_cold_ttft * ms:9.1f} | {r.base['ttft'] * ms:11.1f} {r.busy['ttft'] * ms:9.1f} "
            f"{r.base['total'] * ms:8.1f} {r.busy['total'] * ms:9.1f} "
            f"{r.worst['base'] * ms:11.0f}/{r.worst['busy'] * ms:<6.0f} {r.requests:4d}"
        )
    print("\nratios:")
    for plugin, r in results.items():
        print(
            f"1. {plugin:<22} first-request TTFT / loaded TTFT:      "
            f"{r.cold_ttft / r.loaded_ttft:6.2f}  (lower is better; no target)"
        )
    for plugin, r in results.items():
        print(
            f"2. {plugin:<22} loaded adapters' TTFT, download / none: "
            f"{r.busy['ttft'] / r.base['ttft']:6.2f}  (target <= 1.2)"
        )
        print(
            f"   {plugin:<22} their total latency, download / none:    "
            f"{r.busy['total'] / r.base['total']:6.2f}  (target <= 1.2)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # before huggingface_hub is imported
    logging.getLogger("loraserve_hf_hub_resolver").setLevel(logging.ERROR)  # allowlist notice
    work = Path(tempfile.mkdtemp(prefix="loraserve-cold-"))
    try:
        asyncio.run(bench(work, args.rounds))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
