"""The server keeps CPUs for its front end: torch's threads are the usable CPUs minus those."""

from __future__ import annotations

import pytest
import torch

from loraserve.entrypoints.cpu_threads import (
    RESERVED_CPU_ENV,
    front_end_threads,
    keep_cores_for_front_end,
)


@pytest.mark.parametrize(("environ", "usable", "threads"), [
    ({}, 2, 1),  # the default keeps one CPU
    ({}, 16, 15),
    ({}, 1, 1),  # never fewer than one thread
    ({RESERVED_CPU_ENV: "0"}, 2, 2),  # vLLM's variable: 0 gives torch every CPU
    ({RESERVED_CPU_ENV: " 4 "}, 16, 12),
    ({RESERVED_CPU_ENV: "8"}, 4, 1),
    ({"OMP_NUM_THREADS": "2", RESERVED_CPU_ENV: "1"}, 16, None),  # the operator's choice wins
])
def test_threads_are_the_usable_cpus_minus_the_reserved(environ, usable, threads) -> None:
    assert front_end_threads(environ, usable=usable) == threads


@pytest.mark.parametrize("raw", ["x", "1.5", "-1"])
def test_a_bad_reserved_count_names_the_variable(raw) -> None:
    with pytest.raises(ValueError, match=RESERVED_CPU_ENV):
        front_end_threads({RESERVED_CPU_ENV: raw}, usable=4)


def test_only_a_cpu_engine_changes_torch_threads(monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    keep_cores_for_front_end(torch.device("cuda"), 3)
    keep_cores_for_front_end(torch.device("cpu"), None)  # OMP_NUM_THREADS set: left alone
    assert calls == []
    keep_cores_for_front_end(torch.device("cpu"), 3)
    assert calls == [3]


def test_a_bad_value_stops_the_server_before_the_model_loads(tmp_path, monkeypatch, capsys) -> None:
    from loraserve.entrypoints.cli import main

    monkeypatch.setenv(RESERVED_CPU_ENV, "many")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main(["serve", str(tmp_path / "no-model")]) == 1
    assert f"{RESERVED_CPU_ENV} must be a whole number of CPUs, got 'many'" in capsys.readouterr().err
