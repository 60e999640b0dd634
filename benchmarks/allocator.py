"""What the host allocator is worth: the multilora workload on glibc's malloc and on tcmalloc.

``core/allocator.py`` preloads tcmalloc for ``loraserve serve``. This measures why:
``vs_vllm.py``'s workload (16 prompts x 32 tokens + 32 new, base and 16 distinct adapters)
in child processes that differ only in the allocator, started in alternation so drift hits
both alike: ``glibc`` (what an offline ``LLM`` gets unless its script is started with
``LD_PRELOAD``) and ``tcmalloc`` (preloaded, what ``loraserve serve`` gets).

It prints tokens/s (median and best over the processes), page faults and system time per
run, and each allocator's ratio to glibc's.

    python benchmarks/allocator.py [--processes 5] [--model smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

MODES = ("glibc", "tcmalloc")


def child(model: str, dtypes: list[str], rounds: int) -> None:
    """One process: best tokens/s of each case, with its page faults and system time per run."""
    import torch
    from multilora import NEW_TOKENS, build_workload
    from vs_vllm import InProcess, batches

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="loraserve-allocator-") as work:
        model_dir, adapters, prompts = build_workload(Path(work), model)
        loras = batches(adapters)
        for dtype in dtypes:
            engine = InProcess(model_dir, dtype)
            for case in ("base", "16 adapters"):
                engine.generate(prompts, NEW_TOKENS, loras[case])  # warm up
                before, best = resource.getrusage(resource.RUSAGE_SELF), float("inf")
                for _ in range(rounds):
                    start = time.perf_counter()
                    engine.generate(prompts, NEW_TOKENS, loras[case])
                    best = min(best, time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_SELF)
                print(json.dumps({
                    "case": f"{dtype} {case}", "tok/s": len(prompts) * NEW_TOKENS / best,
                    "faults": (after.ru_minflt - before.ru_minflt) / rounds,
                    "sys ms": (after.ru_stime - before.ru_stime) / rounds * 1e3}), flush=True)


def environment(mode: str, tcmalloc: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if mode == "tcmalloc":
        env["LD_PRELOAD"] = tcmalloc
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5, help="processes per allocator")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per case in a process")
    parser.add_argument("--model", choices=("bench", "smollm2", "tiny"), default="bench")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.dtypes.split(","), args.rounds)
        return

    from multilora import cpu_description

    from loraserve.allocator import find_tcmalloc

    tcmalloc = find_tcmalloc()
    modes = MODES if tcmalloc else MODES[:-1]
    print(f"CPU: {cpu_description()}; tcmalloc: "
          f"{tcmalloc or 'not found (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)'}",
          flush=True)
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    command = [sys.executable, __file__, "--child", "--model", args.model, "--dtypes", args.dtypes,
               "--rounds", str(args.rounds)]
    for index in range(args.processes):
        for mode in modes:
            print(f"process {index + 1}/{args.processes}: {mode}", flush=True)
            done = subprocess.run(command, env=environment(mode, tcmalloc), capture_output=True,
                                  text=True, check=True, cwd=Path(__file__).parent)
            for line in done.stdout.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    rows[mode, row["case"]].append(row)
    report(rows, modes)


def report(rows: dict[tuple[str, str], list[dict]], modes: tuple[str, ...]) -> None:
    cases = list(dict.fromkeys(case for _, case in rows))
    print(f"\n{'case':<22}{'allocator':<10}{'tok/s median':>13}{'best':>8}{'/ glibc':>9}"
          f"{'faults/run':>12}{'sys ms/run':>12}")
    for case in cases:
        glibc = statistics.median(row["tok/s"] for row in rows["glibc", case])
        for mode in modes:
            runs = rows[mode, case]
            speed = statistics.median(row["tok/s"] for row in runs)
            print(f"{case:<22}{mode:<10}{speed:>13.0f}{max(row['tok/s'] for row in runs):>8.0f}"
                  f"{speed / glibc:>9.2f}{statistics.median(row['faults'] for row in runs):>12.0f}"
                  f"{statistics.median(row['sys ms'] for row in runs):>12.1f}")


if __name__ == "__main__":
    main()
