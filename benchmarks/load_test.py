"""Load test: many concurrent streams over many adapters through the real server (loopback).

Builds a tiny model and N adapters, computes each request's greedy answer offline with
``LLM``, starts ``loraserve serve`` as a subprocess with the filesystem resolver (adapters
load on first use, more adapters than GPU slots), fires every stream at once with an
aiohttp client, and checks each stream's text against the offline answer for its adapter.

    python benchmarks/load_test.py                 # 200 streams, 50 adapters, max_loras 8
    python benchmarks/load_test.py --markdown docs/benchmarks.md   # also append the figures
    python benchmarks/load_test.py --soak 10000 --adapters 200 --concurrency 64

``--soak N`` sends N requests at a bounded concurrency, each for a random adapter and one
of a few prompts, half of them streamed, and prints completed requests, errors by status,
outputs that differ from the offline ``LLM``'s and the server's RSS at start, middle and end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

SERVED = "bench-base"


def build_fixtures(root: Path, num_adapters: int, rank: int = 8,
                   **model_config) -> tuple[Path, list[str]]:
    """A tiny Llama (or one of ``model_config``'s shape) and ``num_adapters`` random PEFT
    adapters on all seven projections (one made by PEFT, cloned)."""
    import torch
    from safetensors.torch import load_file, save_file

    from loraserve.testing import make_adapter, make_tiny_model

    model = make_tiny_model(root / "model", seed=3, **model_config)
    adapters = root / "adapters"
    template = make_adapter(model, root / "template", rank=rank, seed=1, base_model_name=SERVED)
    tensors = load_file(str(template / "adapter_model.safetensors"))
    names = [f"lora-{i:02d}" for i in range(num_adapters)]
    for i, name in enumerate(names):
        out = adapters / name
        out.mkdir(parents=True)
        gen = torch.Generator().manual_seed(1000 + i)
        fresh = {k: torch.randn(v.shape, generator=gen) * 0.15 for k, v in tensors.items()}
        save_file(fresh, str(out / "adapter_model.safetensors"))
        shutil.copy(template / "adapter_config.json", out / "adapter_config.json")
    return model, names


def prompts_for(num_requests: int) -> list[str]:
    words = ["the quick brown fox", "hello world", "select name from users", "many adapters"]
    return [f"{words[i % len(words)]} {i}" for i in range(num_requests)]


def offline_answers(model: Path, adapters: Path, names: list[str], prompts: list[str],
                    max_tokens: int, max_loras: int, per_prompt: list[str] | None = None) -> list[str]:
    """Greedy answers from the offline ``LLM``: prompt i with adapter ``per_prompt[i]`` (or
    the adapters in turn)."""
    from loraserve import LLM, SamplingParams
    from loraserve.lora.request import LoRARequest

    llm = LLM(str(model), enable_lora=True, max_loras=max_loras, max_cpu_loras=len(names),
              served_model_name=SERVED)
    loras = {n: LoRARequest(n, i + 1, str(adapters / n)) for i, n in enumerate(names)}
    order = per_prompt or [names[i % len(names)] for i in range(len(prompts))]
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate(prompts, params, lora_request=[loras[n] for n in order], use_tqdm=True)
    return [o.outputs[0].text for o in outs]


def start_server(model: Path, adapters: Path, max_loras: int, max_num_seqs: int,
                 log: Path, max_cpu_loras: int | None = None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
           "VLLM_PLUGINS": "lora_filesystem_resolver",
           "VLLM_LORA_RESOLVER_CACHE_DIR": str(adapters)}
    exe = shutil.which("loraserve", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "loraserve.entrypoints.cli"]
    proc = subprocess.Popen(
        [*cmd, "serve", str(model), "--served-model-name", SERVED, "--port", "0",
         "--enable-lora", "--max-loras", str(max_loras), "--max-num-seqs", str(max_num_seqs),
         "--log-level", "warning",
         *(["--max-cpu-loras", str(max_cpu_loras)] if max_cpu_loras else [])],
        env=env, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
        stderr=log.open("w"), text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"ready on (http://\S+)", line or "")
        if match:
            return proc, match.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"server did not start; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    """Ctrl-C the server, as an operator would; kill it if it has not exited in 30 s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def one_stream(session: aiohttp.ClientSession, url: str, model: str, prompt: str | list[int],
                     max_tokens: int, **fields) -> dict:
    """One streamed completion (``fields`` go into the body). ``chunk_times`` are seconds from
    the start to each chunk with text or token ids (with ``return_token_ids=True``, every
    token's, even one whose text waits for the rest of its UTF-8 character)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, **fields}
    start = time.perf_counter()
    text, status, times = [], None, []
    async with session.post(f"{url}/v1/completions", json=body) as response:
        status = response.status
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choice = chunk["choices"][0] if chunk.get("choices") else {}
            piece = choice.get("text", "")
            if piece or choice.get("token_ids"):
                times.append(time.perf_counter() - start)
            text.append(piece)
    return {"status": status, "ttft": times[0] if times else None, "text": "".join(text),
            "chunk_times": times, "latency": time.perf_counter() - start}


async def fire(url: str, names: list[str], prompts: list[str], max_tokens: int,
               timeout_s: float) -> tuple[list[dict], float]:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0)  # every stream open at once
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.perf_counter()
        results = await asyncio.gather(*[
            one_stream(session, url, names[i % len(names)], p, max_tokens)
            for i, p in enumerate(prompts)
        ], return_exceptions=True)
        wall = time.perf_counter() - start
    return [r if isinstance(r, dict) else {"status": None, "error": repr(r)} for r in results], wall


async def one_whole(session: aiohttp.ClientSession, url: str, model: str, prompt: str,
                    max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}
    async with session.post(f"{url}/v1/completions", json=body) as response:
        data = await response.json(content_type=None)
        text = data["choices"][0]["text"] if response.status == 200 else ""
        return {"status": response.status, "text": text}


def rss_mib(pid: int) -> float:
    """The resident set size of process ``pid`` (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def soak(url: str, pid: int, names: list[str], prompts: list[str],
               expected: dict[tuple[str, str], str], total: int, concurrency: int,
               max_tokens: int, timeout_s: float) -> dict:
    """``total`` requests, ``concurrency`` at a time, random adapter and prompt, half streamed."""
    from tqdm import tqdm

    rng = random.Random(0)
    plan = [(rng.choice(names), rng.choice(prompts), i % 2 == 0) for i in range(total)]
    statuses: Counter[str] = Counter()
    wrong: list[tuple[str, str]] = []
    rss = {"start": rss_mib(pid)}
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=total, desc="soak", unit="req")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(name: str, prompt: str, stream: bool) -> None:
            async with gate:
                call = one_stream if stream else one_whole
                try:
                    result = await call(session, url, name, prompt, max_tokens)
                except Exception as exc:  # noqa: BLE001 - counted, the soak goes on
                    statuses[type(exc).__name__] += 1
                else:
                    statuses[str(result["status"])] += 1
                    if result["status"] == 200 and result["text"] != expected[(name, prompt)]:
                        wrong.append((name, prompt))
            bar.update()
            if bar.n == total // 2:
                rss["middle"] = rss_mib(pid)

        start = time.perf_counter()
        await asyncio.gather(*(one(*item) for item in plan))
        wall = time.perf_counter() - start
    bar.close()
    rss["end"] = rss_mib(pid)
    return {"requests": total, "adapters": len(names), "concurrency": concurrency,
            "completed": statuses.get("200", 0), "statuses": dict(statuses),
            "wrong_outputs": len(wrong), "wall_s": round(wall, 1),
            "requests_per_s": round(total / wall, 1), "rss_mib": rss}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--max-loras", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run")
    parser.add_argument("--markdown", type=Path, help="append a 'Load test' section here")
    parser.add_argument("--soak", type=int, metavar="N", help="soak mode: N requests in all")
    parser.add_argument("--concurrency", type=int, default=64, help="soak: requests in flight")
    parser.add_argument("--max-cpu-loras", type=int, default=32, help="soak: host-cached adapters")
    args = parser.parse_args()
    if args.soak:
        return run_soak(args)

    with tempfile.TemporaryDirectory(prefix="loraserve-load-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        model, names = build_fixtures(root, args.adapters)
        prompts = prompts_for(args.requests)
        expected = offline_answers(model, root / "adapters", names, prompts, args.max_tokens,
                                   args.max_loras)
        print(f"fixtures and offline reference: {time.perf_counter() - t0:.1f} s", flush=True)
        proc, url = start_server(model, root / "adapters", args.max_loras, args.max_num_seqs,
                                 root / "server.log")
        try:
            results, wall = asyncio.run(fire(url, names, prompts, args.max_tokens, args.timeout))
        finally:
            stop_server(proc)

    ok = [r for r in results if r.get("status") == 200]
    correct = sum(1 for r, e in zip(results, expected) if r.get("status") == 200 and r["text"] == e)
    ttfts = [r["ttft"] for r in ok if r.get("ttft") is not None]
    report = {
        "requests": args.requests, "adapters": args.adapters, "max_loras": args.max_loras,
        "max_num_seqs": args.max_num_seqs, "max_tokens": args.max_tokens,
        "completed": len(ok), "correct_adapter_output": correct,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 2),
        "output_tokens_per_s": round(len(ok) * args.max_tokens / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p99_s": round(percentile(ttfts, 99), 3) if ttfts else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "errors": [r.get("error") for r in results if r.get("status") != 200][:3],
    }
    print(json.dumps(report, indent=2))
    if args.markdown:
        append_markdown(args.markdown, report)
    return 0 if correct == args.requests else 1


def run_soak(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="loraserve-soak-") as tmp:
        root = Path(tmp)
        model, names = build_fixtures(root, args.adapters)
        prompts = prompts_for(4)
        pairs = [(n, p) for n in names for p in prompts]
        answers = offline_answers(model, root / "adapters", names, [p for _, p in pairs],
                                  args.max_tokens, args.max_loras, [n for n, _ in pairs])
        expected = dict(zip(pairs, answers))
        proc, url = start_server(model, root / "adapters", args.max_loras, args.max_num_seqs,
                                 root / "server.log", max_cpu_loras=args.max_cpu_loras)
        try:
            report = asyncio.run(soak(url, proc.pid, names, prompts, expected, args.soak,
                                      args.concurrency, args.max_tokens, args.timeout))
        finally:
            stop_server(proc)
    report.update(max_loras=args.max_loras, max_cpu_loras=args.max_cpu_loras,
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor()}")
    print(json.dumps(report, indent=2))
    return 0 if report["completed"] == args.soak and not report["wrong_outputs"] else 1


def append_markdown(path: Path, r: dict) -> None:
    section = f"""
## Load test

`python benchmarks/load_test.py` — {r['requests']} concurrent streaming completions over
{r['adapters']} adapters (tiny random Llama from `loraserve.testing`, greedy,
{r['max_tokens']} tokens each, `ignore_eos`), `--max-loras {r['max_loras']}`, adapters found
by the filesystem resolver on first use; aiohttp client on loopback, all streams opened at once.
Machine: {r['machine']} (CPU only).

| metric | value |
| --- | --- |
| completed | {r['completed']} / {r['requests']} |
| output equals offline `LLM` greedy output for its adapter | {r['correct_adapter_output']} / {r['requests']} |
| wall time | {r['wall_s']} s |
| throughput | {r['requests_per_s']} req/s, {r['output_tokens_per_s']} output tokens/s |
| time to first token p50 / p99 | {r['ttft_p50_s']} s / {r['ttft_p99_s']} s |
"""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if "\n## Load test\n" in text:  # replace our own section, keep everyone else's
        head, _, rest = text.partition("\n## Load test\n")
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        text = head.rstrip("\n") + "\n" + section + tail
    else:
        text = text.rstrip("\n") + "\n" + section
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
