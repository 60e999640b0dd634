"""Serving steps that one adapter owns alone on base weights with that adapter merged in.

When every token of a step uses the same adapter, the per-token LoRA path still runs a
dozen small matmuls per layer, which on CPU costs 15-20% of a decode step of the
benchmark model. Running such steps on a copy of the projections holding W + B·A (B already
scaled) makes them cost what base steps cost, as dLoRA does. The copy costs memory and one
pass over the weights to build, so:

- it is built only once the same adapter has owned ``after_steps`` consecutive steps, and
  reused whenever that adapter owns a step again; mixed steps use the base weights and the
  LoRA path as before. This is the ski-rental rule: keep paying the LoRA path until what it
  has cost in this run of steps matches the price of a merge, then merge; so a run that ends
  right after a merge costs at most about twice what the best choice would have;
- it is built a layer per step, each step running merged layers where they exist and the
  LoRA path elsewhere, so no step stalls for the whole copy (on a large model, building it
  at once would hold every stream for a second or more);
- at most one copy exists; it is dropped as soon as its slot is rewritten, and replaced when
  another adapter earns one; projections the adapter does not touch are shared, not copied;
- only float32 weights on CPU are merged: there W + B·A rounds no worse than the unmerged sum,
  while in bfloat16 the rounding of W can swallow a small adapter's delta;
- models whose projections exceed ``MAX_MERGE_BYTES`` are never merged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from loraserve import metrics
from loraserve.kernels import LoRABatch, LoRAOperands
from loraserve.lora.slots import AdapterSlots
from loraserve.model.decoder import DecoderModel, LayerLoRA, LayerWeights
from loraserve.model.linear import Projection

logger = logging.getLogger(__name__)

# On the benchmark model a merge costs what 15-60 decode steps of LoRA-path overhead do
# (~45 ms, ~190 ms the first time in a process when every page is fresh, against ~3 ms a
# step, measured): rent about that long, then buy.
MERGE_AFTER_STEPS = 24
MAX_MERGE_BYTES = 2 << 30


@dataclass
class _Merge:
    """One adapter's merged copy, built a layer per step so no step stalls for all of it."""

    slot: int
    version: int  # the slot's version the copy is built from
    layers: list[LayerWeights]  # merged where built (the first ``built``), the base elsewhere
    lora: list[LayerLoRA | None]  # None where merged: those layers skip the LoRA path
    scratch: torch.Tensor | None  # holds each B·A in turn while building; None once built
    built: int = 0
    seconds: float = 0.0  # building time so far


class AdapterMerger:
    """Decides, step by step, which layers run on a merged copy of the weights."""

    def __init__(
        self,
        base_layers: list[LayerWeights],
        slots: AdapterSlots,
        after_steps: int = MERGE_AFTER_STEPS,
    ) -> None:
        self._base_layers = base_layers
        self._slots = slots
        self.after_steps = after_steps
        self._streak_owner: tuple[int, int] | None = None  # (slot, version) owning recent steps
        self._streak = 0
        self._merge: _Merge | None = None
        self._largest = max(p.out_features * p.in_features for p in _projections(base_layers))

    @property
    def merged_slot(self) -> int | None:
        """The slot whose adapter the copy holds (or is being built for), if any."""
        merge = self._current_merge()
        return None if merge is None else merge.slot

    def _current_merge(self) -> _Merge | None:
        """The copy, dropped first if its adapter has left the slot."""
        if self._merge is not None and self._merge.version != self._slots.version(self._merge.slot):
            self._merge = None
        return self._merge

    def weights_for(
        self, batch: LoRABatch | None
    ) -> tuple[list[LayerWeights], list[LayerLoRA | None] | None] | None:
        """The layers this step runs on and each one's LoRA operands, or None: no layer merged.

        While the copy is being built, layers not merged yet keep the base weights and the
        LoRA path; once it is built, no layer has LoRA operands (None).
        """
        slot = None if batch is None else batch.sole_slot
        owner = None if slot is None else (slot, self._slots.version(slot))
        merge = self._current_merge()
        if owner != self._streak_owner:
            self._streak_owner, self._streak = owner, 0
        if slot is None:
            return None
        self._streak += 1
        if merge is None or merge.slot != slot:
            if self._streak < self.after_steps:
                return None
            self._merge = None  # free the old copy before building the next
            scratch = torch.empty(self._largest, dtype=self._slots.dtype, device=self._slots.device)
            layers, lora = list(self._base_layers), list(self._slots.layers)
            self._merge = merge = _Merge(slot, owner[1], layers, lora, scratch)
        if merge.scratch is not None:
            self._build_next_layer(merge)
        metrics.LORA_MERGED_STEPS.inc()
        return merge.layers, None if merge.scratch is None else merge.lora

    def _build_next_layer(self, merge: _Merge) -> None:
        start = time.perf_counter()
        index = merge.built
        merge.layers[index] = _merge_layer(
            self._base_layers[index], self._slots.layers[index], merge.slot, merge.scratch
        )
        merge.lora[index] = None
        merge.built += 1
        merge.seconds += time.perf_counter() - start
        if merge.built < len(merge.layers):
            return
        merge.scratch = None
        metrics.LORA_MERGE_SECONDS.observe(merge.seconds)
        copied = sum(
            merged.nbytes
            for merged, base in zip(_projections(merge.layers), _projections(self._base_layers))
            if merged is not base
        )
        logger.debug(
            "merged the adapter in slot %d into a copy of the base projections "
            "(%.1f MiB, %.0f ms over %d steps); steps it owns alone now skip the LoRA path",
            merge.slot, copied / 2**20, merge.seconds * 1000, len(merge.layers),
        )


def _merge_layer(
    layer: LayerWeights, lora: LayerLoRA, slot: int, scratch: torch.Tensor
) -> LayerWeights:
    """One layer's weights with the adapter's W + B·A in every projection it targets."""
    return dataclasses.replace(
        layer,
        qkv=_merge_projection(layer.qkv, lora.qkv, slot, scratch),
        o=_merge_projection(layer.o, lora.o, slot, scratch),
        gate_up=_merge_projection(layer.gate_up, lora.gate_up, slot, scratch),
        down=_merge_projection(layer.down, lora.down, slot, scratch),
    )


def _merge_projection(
    base: Projection, lora: LoRAOperands, slot: int, scratch: torch.Tensor
) -> Projection:
    """W + B·A of the slot's adapter, or ``base`` itself where the adapter leaves it alone.

    ``scratch`` holds each B·A in turn: reusing it spares a fresh allocation (and its page
    faults) per projection.
    """
    a = lora.a[slot]  # [in, n_slices * R]
    slices = [b for stack in lora.b for b in stack[slot]]  # each [R, out_i], scaled
    if not any(bool(b.any()) for b in slices):
        return base  # not targeted (or a zero B): share the base projection
    delta = scratch[: base.out_features * base.in_features].view(base.out_features, -1)
    rank, row = slices[0].shape[0], 0
    for i, b in enumerate(slices):  # rows of slice i: B_i^T A_i, [out_i, R] @ [R, in]
        torch.mm(b.t(), a[:, i * rank : (i + 1) * rank].t(), out=delta[row : row + b.shape[1]])
        row += b.shape[1]
    return base.merged_with(delta)


def _projections(layers: list[LayerWeights]) -> list[Projection]:
    """Every projection LoRA can target, layer by layer."""
    return [p for layer in layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]


def adapter_merger_for(model: DecoderModel, slots: AdapterSlots) -> AdapterMerger | None:
    """An ``AdapterMerger`` when merging suits the model's device, dtype and size, else None."""
    layers = model.weights.layers
    embed = model.weights.embed
    if embed.device.type != "cpu" or embed.dtype != torch.float32:
        logger.debug("not merging adapters: only float32 weights on CPU are merged")
        return None
    size = sum(projection.nbytes for projection in _projections(layers))
    if size > MAX_MERGE_BYTES:
        logger.debug(
            "not merging adapters: a merged copy of the projections would take %.1f GiB "
            "(limit %.1f GiB)", size / 2**30, MAX_MERGE_BYTES / 2**30,
        )
        return None
    return AdapterMerger(layers, slots)
