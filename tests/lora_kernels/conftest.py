"""Random LoRA problems and an explicit per-token reference, shared by the kernel tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch

from loraserve.kernels import NO_ADAPTER, LoRABatch
from loraserve.kernels.torch_ops import slices
from loraserve.lora.layout import slice_stacks

# Stated tolerances, absolute and relative, against the float64 loop for outputs of order
# one: fp32 is exact up to summation order; fp16/bf16 round x @ A to the weight dtype
# before expand (as the torch path does) and round the sum into out.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass
class LoRAProblem:
    x: torch.Tensor  # [T, in]
    lora_a: torch.Tensor  # [slots, in, n_slices * R]
    lora_b: list[torch.Tensor]  # B stacks [slots, k, R, w], as the engine stores them
    out: torch.Tensor  # [T, sum(out_i)], the base projection's output
    token_slots: list[int]

    def batch(self) -> LoRABatch:
        return LoRABatch.build(self.token_slots, device=self.x.device)


def per_token_reference(problem: LoRAProblem) -> torch.Tensor:
    """out + delta, token by token in float64: independent of every batched code path."""
    out = problem.out.double().clone()
    rank = problem.lora_b[0].shape[2]
    for t, slot in enumerate(problem.token_slots):
        if slot == NO_ADAPTER:
            continue
        y = problem.x[t].double() @ problem.lora_a[slot].double()  # [n_slices * R]
        for i, b, offset in slices(problem.lora_b):
            out[t, offset : offset + b.shape[-1]] += y[i * rank : (i + 1) * rank] @ b[slot].double()
    return out


def make_problem(
    token_slots: Sequence[int],
    in_features: int = 40,
    rank: int = 8,
    out_sizes: Sequence[int] = (24,),
    num_slots: int = 4,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = "cpu",
) -> LoRAProblem:
    """Values of order one in the output, so tolerances can be stated relative to 1."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device, dtype)

    n_tokens = len(token_slots)
    return LoRAProblem(
        x=rand(n_tokens, in_features),
        lora_a=rand(num_slots, in_features, len(out_sizes) * rank, scale=in_features**-0.5),
        lora_b=[
            rand(num_slots, count, rank, width, scale=rank**-0.5)
            for count, width in slice_stacks(tuple(out_sizes))
        ],
        out=rand(n_tokens, sum(out_sizes)),
        token_slots=list(token_slots),
    )


@pytest.fixture
def problem_factory() -> Callable[..., LoRAProblem]:
    return make_problem


def assert_matches_reference(got: torch.Tensor, problem: LoRAProblem) -> None:
    """got is out after add_lora; compare with the loop within the dtype's tolerance."""
    tol = TOLERANCE[problem.x.dtype]
    torch.testing.assert_close(got.double(), per_token_reference(problem), atol=tol, rtol=tol)


@pytest.fixture
def reference() -> Callable[[LoRAProblem], torch.Tensor]:
    return per_token_reference


@pytest.fixture
def matches_reference() -> Callable[[torch.Tensor, LoRAProblem], None]:
    return assert_matches_reference
