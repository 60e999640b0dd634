"""Device-resident LoRA weights for ``max_loras`` adapters, stacked so a kernel indexes by slot.

Per LoRA group: A is [layers, slots, in, n_slices * R] and each slice's B is
[layers, slots, R, out_i], where R is ``max_lora_rank``; an adapter of smaller rank is
zero-padded, which adds nothing to the product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraserve.lora.adapter import LoRAAdapter
from loraserve.lora.layout import group_shapes
from loraserve.model.spec import ModelSpec


@dataclass
class LayerLoRA:
    """One layer's views of the slot tensors, in the shapes ``add_lora`` takes."""

    qkv_a: torch.Tensor
    qkv_b: list[torch.Tensor]
    o_a: torch.Tensor
    o_b: list[torch.Tensor]
    gate_up_a: torch.Tensor
    gate_up_b: list[torch.Tensor]
    down_a: torch.Tensor
    down_b: list[torch.Tensor]


class AdapterSlots:
    def __init__(
        self,
        spec: ModelSpec,
        num_slots: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_slots = num_slots
        self.max_rank = max_rank
        layers = spec.num_layers
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, list[torch.Tensor]] = {}
        for group, shape in group_shapes(spec).items():
            slices = len(shape.out_features)
            self.a[group] = torch.zeros(
                layers, num_slots, shape.in_features, slices * max_rank, dtype=dtype, device=device
            )
            self.b[group] = [
                torch.zeros(layers, num_slots, max_rank, out, dtype=dtype, device=device)
                for out in shape.out_features
            ]
        self._layers = [self._layer_views(i) for i in range(layers)]

    def _layer_views(self, i: int) -> LayerLoRA:
        views = {}
        for group in self.a:
            views[f"{group}_a"] = self.a[group][i]
            views[f"{group}_b"] = [b[i] for b in self.b[group]]
        return LayerLoRA(**views)

    def layer(self, index: int) -> LayerLoRA:
        return self._layers[index]

    def write(self, slot: int, adapter: LoRAAdapter) -> None:
        """Copy an adapter's host tensors into ``slot`` (replacing whatever was there)."""
        rank, max_rank = adapter.rank, self.max_rank
        for group, a in self.a.items():
            a[:, slot].zero_()
            for index, b in enumerate(self.b[group]):
                src_a = adapter.a[group][:, :, index * rank : (index + 1) * rank]
                a[:, slot, :, index * max_rank : index * max_rank + rank].copy_(src_a)
                b[:, slot].zero_()
                b[:, slot, :rank].copy_(adapter.b[group][index])

    def clear(self, slot: int) -> None:
        for group, a in self.a.items():
            a[:, slot].zero_()
            for b in self.b[group]:
                b[:, slot].zero_()
