"""benchmarks/gpu_check.sh's dry run: every stage of the GPU check runs on CPU, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_gpu_check_dry_run_passes_every_stage(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    summary = (out / "summary.txt").read_text()
    logs = {p.name: p.read_text()[-2000:] for p in out.glob("*.log")}
    assert proc.returncode == 0, (summary, logs)
    stages = [line.split()[0] for line in summary.splitlines()[:-1]]
    assert stages == ["install", "kernel_tests", "parity", "lora_kernels", "multilora"]
    assert summary.splitlines()[-1] == "stages failed: 0"
    assert "passed" in logs["kernel_tests.log"]
    cases = [json.loads(line) for line in (out / "parity.json").read_text().splitlines()]
    assert [(c["model"], c["dtype"], c["passed"]) for c in cases] == [("llama", "float32", True)]
    assert "16 distinct adapters / engine base" in logs["multilora.log"]
