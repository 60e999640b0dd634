"""The LoRA operands of one projection group: what ``add_lora`` multiplies by.

The model's layers receive these from the model runner each step; they never ask where the
adapter weights live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoRAOperands:
    """A and B of every slot for one fused projection, in the layouts of docs/kernels.md."""

    a: torch.Tensor  # [slots, in, n_slices * R], each slice's A side by side
    b: Sequence[torch.Tensor]  # stacks [slots, k, R, w], one per run of equal-width slices
