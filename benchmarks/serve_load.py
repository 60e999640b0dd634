"""A server under load: an open-loop Poisson arrival sweep over M adapters, loraserve and vLLM.

The benchmark model of ``benchmarks/multilora.py`` (hidden 512, 8 layers, float32) and 64
random rank-16 adapters on all seven projections, found on first use by the filesystem
resolver (``VLLM_PLUGINS=lora_filesystem_resolver``, ``VLLM_LORA_RESOLVER_CACHE_DIR``), which
both servers implement. For each M in 1, 8, 64 (``--max-loras 8``, so 64 adapters must swap
through 8 slots and 8 host-cache places), each server is started on loopback and sent
requests at rising rates: Poisson arrivals for ``--duration`` seconds, each request a
streamed completion of 32 random prompt tokens + 32 new ones (greedy, ``ignore_eos``) for an
adapter drawn with Zipf popularity (weight 1/k for the k-th adapter). Per rate it prints
requests completed, goodput (requests/s whose time to first token met the target), TTFT and
inter-token latency p50/p99 and adapter loads (from ``/metrics``; loraserve only: vLLM 0.32
exports no load counter). A rate is sustained when every request completed and TTFT p99 met
the target; the sweep for one server stops at the first rate that is not.

    python benchmarks/serve_load.py [--vllm-python /work/vllm-venv/bin/python]
    python benchmarks/serve_load.py --quick     # a tiny model, two short rates: a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from load_test import SERVED, build_fixtures, one_stream, percentile, start_server, stop_server
from multilora import NEW_TOKENS, PROMPT_LEN, RANK, TINY
from prometheus_client.parser import text_string_to_metric_families
from vllm_cpu import vllm_env

from loraserve.testing import BENCHMARK_MODEL

ZIPF_S = 1.0
LOADS_METRIC = "loraserve_lora_loads"  # adapters parsed from disk into the host cache


@dataclass
class Load:
    """One sweep's settings."""

    adapters: list[str]  # the M adapter names requests are spread over
    duration: float  # seconds of arrivals per rate
    max_tokens: int
    prompt_len: int
    ttft_target: float  # seconds, for TTFT p99
    seed: int = 0


# ---- the servers -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_vllm(python: str, model: Path, adapters: Path, max_loras: int, max_num_seqs: int,
               log: Path) -> tuple[subprocess.Popen, str]:
    """``vllm serve`` with the same resolver settings ``start_server`` gives loraserve.

    vLLM 0.32's resolvers match an adapter's ``base_model_name_or_path`` against the model
    path it was started with, not the served name loraserve matches: so it is started in the
    model's parent folder on the relative path ``SERVED`` (a link to the model), and the same
    adapter files serve both."""
    link = model.parent / SERVED
    if not link.exists():
        link.symlink_to(model.name)
    port = free_port()
    env = {**vllm_env(python), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
           "VLLM_PLUGINS": "lora_filesystem_resolver",
           "VLLM_LORA_RESOLVER_CACHE_DIR": str(adapters)}
    proc = subprocess.Popen(
        [python, "-m", "vllm.entrypoints.cli.main", "serve", SERVED,
         "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
         "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(RANK),
         "--max-num-seqs", str(max_num_seqs), "--dtype", "float32", "--enforce-eager",
         "--no-enable-prefix-caching", "--max-model-len", "256"],
        env=env, cwd=model.parent, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                if asyncio.run(health(url)):
                    return proc, url
        except OSError:
            pass
        time.sleep(1)
    proc.kill()
    raise SystemExit(f"vllm serve did not start; see {log}")


async def health(url: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as response:
        return response.status == 200


async def adapter_loads(session: aiohttp.ClientSession, url: str) -> float | None:
    """Adapters loaded from disk so far, from the Prometheus text at /metrics (None: no such
    counter on this server)."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        if family.name == LOADS_METRIC:
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return None


# ---- the load ----------------------------------------------------------------------------
def plan(load: Load, rate: float) -> list[tuple[float, str, list[int]]]:
    """(arrival second, adapter, prompt) for each request: Poisson arrivals at ``rate``/s,
    adapters by Zipf popularity, random plain tokens as prompts (the multilora.py range)."""
    rng = random.Random(f"{load.seed}-{rate}-{len(load.adapters)}")
    weights = [1 / (k + 1) ** ZIPF_S for k in range(len(load.adapters))]
    at, requests = rng.expovariate(rate), []
    while at < load.duration:
        adapter = rng.choices(load.adapters, weights)[0]
        requests.append((at, adapter, [rng.randrange(3, 300) for _ in range(load.prompt_len)]))
        at += rng.expovariate(rate)
    return requests


async def run_rate(url: str, load: Load, rate: float) -> dict:
    """Send one rate's requests open-loop (on schedule, whatever is still in flight)."""
    requests = plan(load, rate)
    timeout = aiohttp.ClientTimeout(total=load.duration + 300)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        loads_before = await adapter_loads(session, url)

        async def send(at: float, adapter: str, prompt: list[int]) -> dict:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            try:
                return await one_stream(session, url, adapter, prompt, load.max_tokens,
                                        return_token_ids=True)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return {"status": None, "error": repr(exc)}

        start = time.perf_counter()
        results = await asyncio.gather(*(send(*r) for r in requests))
        loads_after = await adapter_loads(session, url)
    loads = None if loads_before is None else loads_after - loads_before
    return summarize(results, rate, load, loads)


def summarize(results: list[dict], rate: float, load: Load, loads: float | None) -> dict:
    done = [r for r in results if r.get("status") == 200 and len(r["chunk_times"]) > 0]
    ttfts = [r["ttft"] for r in done]
    gaps = [b - a for r in done for a, b in zip(r["chunk_times"], r["chunk_times"][1:])]
    p = lambda values, q: percentile(values, q) if values else float("nan")  # noqa: E731
    ttft_p99 = p(ttfts, 99)
    return {"rate": rate, "sent": len(results), "completed": len(done),
            "goodput": sum(t <= load.ttft_target for t in ttfts) / load.duration,
            "ttft_p50": statistics.median(ttfts) if ttfts else float("nan"), "ttft_p99": ttft_p99,
            "itl_p50": p(gaps, 50), "itl_p99": p(gaps, 99), "loads": loads,
            "sustained": bool(done) and len(done) == len(results) and ttft_p99 <= load.ttft_target}


def sweep(url: str, load: Load, rates: list[float], label: str) -> float:
    """Rates in turn until one is not sustained; the highest sustained rate (0: none)."""
    print(f"\n{label}, M = {len(load.adapters)} adapters, TTFT p99 target {load.ttft_target} s")
    print(f"  {'rate/s':>7} {'sent':>5} {'done':>5} {'goodput/s':>9} {'TTFT p50':>9} "
          f"{'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'loads':>6}")
    best = 0.0
    for rate in rates:
        row = asyncio.run(run_rate(url, load, rate))
        loads = "-" if row["loads"] is None else f"{row['loads']:.0f}"
        print(f"  {rate:7.1f} {row['sent']:5d} {row['completed']:5d} {row['goodput']:9.2f} "
              f"{row['ttft_p50']:9.3f} {row['ttft_p99']:9.3f} {row['itl_p50'] * 1000:6.1f}ms "
              f"{row['itl_p99'] * 1000:6.1f}ms {loads:>6}", flush=True)
        if not row["sustained"]:
            break
        best = rate
    return best


def warm_up(url: str, load: Load) -> None:
    """Two requests first, so start-up work (first calls, first loads) is in no rate."""
    async def go() -> None:
        async with aiohttp.ClientSession() as session:
            for adapter in load.adapters[:2]:
                await one_stream(session, url, adapter, list(range(3, 3 + load.prompt_len)),
                                 load.max_tokens)
    asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", help="an interpreter with vllm-cpu installed")
    parser.add_argument("--adapters", default="1,8,64", help="the values of M")
    parser.add_argument("--rates", default="0.5,1,2,4,8,12,16,24,32", help="requests/s, rising")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals")
    parser.add_argument("--ttft-target", type=float, default=1.0, help="seconds, TTFT p99")
    parser.add_argument("--max-loras", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, M = 1 and 4, two 3-second rates, 4 new tokens")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if args.quick:
        args.adapters, args.rates, args.duration, args.max_loras = "1,4", "2,4", 3.0, 2
    counts = [int(m) for m in args.adapters.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="loraserve-serve-load-"))
    try:
        print(f"building the model and {max(counts)} adapters in {work} ...", flush=True)
        shape = TINY if args.quick else BENCHMARK_MODEL
        model, names = build_fixtures(work, max(counts), rank=RANK, **shape)
        best: dict[tuple[str, int], float] = {}
        for m in counts:  # engines interleaved per M, so both see the machine of that moment
            load = Load(names[:m], args.duration, 4 if args.quick else NEW_TOKENS, PROMPT_LEN,
                        args.ttft_target)
            servers = {"loraserve": lambda: start_server(
                model, work / "adapters", args.max_loras, args.max_num_seqs, work / "server.log")}
            if args.vllm_python:
                servers["vLLM"] = lambda: start_vllm(
                    args.vllm_python, model, work / "adapters", args.max_loras,
                    args.max_num_seqs, Path(tempfile.gettempdir()) / "serve_load-vllm.log")
            for label, start in servers.items():
                proc, url = start()
                try:
                    warm_up(url, load)
                    best[label, m] = sweep(url, load, rates, label)
                finally:
                    stop_server(proc)
        print_summary(best, counts, args.ttft_target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_summary(best: dict[tuple[str, int], float], counts: list[int], target: float) -> None:
    print(f"\nhighest rate sustained (every request done, TTFT p99 <= {target} s), requests/s:")
    for m in counts:
        line = f"  M = {m:<3} loraserve {best['loraserve', m]:5.1f}"
        if ("vLLM", m) in best:
            theirs = best["vLLM", m]
            ratio = f"{best['loraserve', m] / theirs:.2f}" if theirs else "-"
            line += f"   vLLM {theirs:5.1f}   loraserve / vLLM {ratio}"
            if m == 64:
                line += "  (target >= 1.5)"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
