"""Real vLLM on CPU, run by its own interpreter beside loraserve (which never imports vLLM).

Two halves, stdlib only at the top so both interpreters can import this file:

- ``vllm_env`` / ``OfflineVLLM``, used by the benchmarks in loraserve's interpreter: the
  environment vLLM CPU runs best in (both cores bound, tcmalloc and the venv's libiomp5
  preloaded), and a long-lived ``vllm.LLM`` in a subprocess so its start-up is paid once.
- ``main``, run as ``VLLM_PYTHON benchmarks/vllm_cpu.py``: that subprocess. It reads one JSON
  command a line on stdin and answers one JSON line on a private copy of stdout; vLLM's own
  output (and its engine process's) goes to stderr.

Install vLLM CPU with ``scripts/install_vllm_cpu.sh`` (docs/benchmarks.md says why each step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

KV_CACHE_GIB = 1  # the benchmarks hold 16 sequences of <= 128 tokens: 1 GiB is plenty


def vllm_env(python: str, threads: str | None = None) -> dict[str, str]:
    """Environment for a vLLM CPU process started with interpreter ``python``."""
    venv = Path(python).parent.parent  # not resolved: bin/python links out of the venv
    preload = [str(venv / "lib" / "libiomp5.so")]
    from loraserve.allocator import find_tcmalloc  # loraserve's side only: see the docstring

    tcmalloc = find_tcmalloc()
    if tcmalloc is None:
        raise SystemExit("tcmalloc not found: run scripts/install_vllm_cpu.sh")
    preload.insert(0, tcmalloc)
    cores = threads or f"0-{(os.cpu_count() or 1) - 1}"
    return {**os.environ, "LD_PRELOAD": ":".join(preload), "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_OMP_THREADS_BIND": cores, "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB),
            "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
            "TOKENIZERS_PARALLELISM": "false"}


class OfflineVLLM:
    """A ``vllm.LLM`` in a subprocess of interpreter ``python``, driven line by line."""

    def __init__(self, python: str, model: str, dtype: str, max_loras: int, max_lora_rank: int,
                 max_num_seqs: int, max_model_len: int, log: Path) -> None:
        self.proc = subprocess.Popen(
            [python, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log.open("w"), env=vllm_env(python), cwd="/tmp", text=True)
        self.log = log
        self.call("start", model=model, dtype=dtype, max_loras=max_loras,
                  max_lora_rank=max_lora_rank, max_num_seqs=max_num_seqs,
                  max_model_len=max_model_len)

    def call(self, op: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"vLLM worker exited ({self.proc.wait()}); see {self.log}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"vLLM worker: {answer['error']}; see {self.log}")
        return answer

    def generate(self, prompts: list[list[int]], max_tokens: int,
                 loras: list[tuple[str, int, str] | None] | None) -> list[list[int]]:
        """Greedy token ids, one list per prompt; ``loras`` as (name, id, path) per row."""
        return self.call("generate", prompts=prompts, max_tokens=max_tokens, loras=loras)["tokens"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- the subprocess, in vLLM's interpreter ----------------------------------------------
def main() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever vLLM (or its engine process) prints goes to the log
    llm = None
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["op"] == "start":
                llm = start(command)
                answer = {"dtype": str(llm.llm_engine.vllm_config.model_config.dtype)}
            else:
                answer = generate(llm, command)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which stops
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        reply.write(json.dumps(answer) + "\n")


def start(command: dict):  # noqa: ANN201 - vllm.LLM, not importable on loraserve's side
    from vllm import LLM

    # No prefix caching: loraserve has none, and the benchmarks repeat the same prompts.
    return LLM(model=command["model"], dtype=command["dtype"], enable_lora=True,
               max_loras=command["max_loras"], max_lora_rank=command["max_lora_rank"],
               max_num_seqs=command["max_num_seqs"], max_model_len=command["max_model_len"],
               enforce_eager=True, enable_prefix_caching=False, seed=0)


def generate(llm, command: dict) -> dict:  # noqa: ANN001
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    params = SamplingParams(temperature=0, max_tokens=command["max_tokens"], ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in command["prompts"]]
    loras = command["loras"] and [LoRARequest(*row) if row else None for row in command["loras"]]
    start_time = time.perf_counter()
    outs = llm.generate(prompts, params, lora_request=loras or None, use_tqdm=False)
    return {"tokens": [list(o.outputs[0].token_ids) for o in outs],
            "seconds": time.perf_counter() - start_time}


if __name__ == "__main__":
    main()
