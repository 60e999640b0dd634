"""Which projections LoRA can target and how they are grouped like the fused base weights.

q/k/v share one input and one fused matmul, as do gate/up; each group is applied with one
shrink (all its slices side by side) and one expand per stack of equal-width slices.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraserve.model.spec import ModelSpec

GROUP_MODULES: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
SUPPORTED_MODULES = tuple(m for modules in GROUP_MODULES.values() for m in modules)
MODULE_GROUP = {m: (g, i) for g, modules in GROUP_MODULES.items() for i, m in enumerate(modules)}
MODULE_PARENT = {m: "self_attn" if g in ("qkv", "o") else "mlp" for m, (g, _) in MODULE_GROUP.items()}


@dataclass(frozen=True)
class GroupShape:
    in_features: int
    out_features: tuple[int, ...]  # one per slice


def group_shapes(spec: ModelSpec) -> dict[str, GroupShape]:
    """Input and per-slice output sizes of each LoRA group for this base model."""
    hidden, inter = spec.hidden_size, spec.intermediate_size
    return {
        "qkv": GroupShape(hidden, (spec.q_size, spec.kv_size, spec.kv_size)),
        "o": GroupShape(spec.q_size, (hidden,)),
        "gate_up": GroupShape(hidden, (inter, inter)),
        "down": GroupShape(inter, (hidden,)),
    }


def slice_stacks(widths: tuple[int, ...]) -> list[tuple[int, int]]:
    """(count, width) of each run of consecutive equal-width slices.

    B of a run is stored as one [slots, count, R, width] tensor, so a decode step expands
    all of a run's slices with one batched matmul: q/k/v is one run without GQA, two (q;
    k and v) with it, and gate/up is always one.
    """
    stacks: list[tuple[int, int]] = []
    for width in widths:
        if stacks and stacks[-1][1] == width:
            stacks[-1] = (stacks[-1][0] + 1, width)
        else:
            stacks.append((1, width))
    return stacks
