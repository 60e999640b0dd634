"""Device-resident LoRA weights for ``max_loras`` adapters, stacked so a kernel indexes by slot.

Per LoRA group the kernels see A as [layers, slots, in, n_slices * R] and B as stacks
[layers, slots, k, R, w] of consecutive equal-width slices (``slice_stacks``; R =
``max_lora_rank``, smaller ranks are zero-padded, which adds nothing). A is a transposed
view: its storage keeps PEFT's row layout [r, in], so writing it is row copies and a decode
step reads it in storage order. B is stored as the kernels see it, [R, out], written from
PEFT's [out, r] by one transposing copy.
"""

from __future__ import annotations

import torch

from loraserve.kernels import LoRAOperands
from loraserve.lora.adapter import LoRAAdapter
from loraserve.lora.layout import MODULE_GROUP, group_shapes, slice_stacks
from loraserve.model.decoder import LayerLoRA
from loraserve.model.spec import ModelSpec


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
        self.dtype = dtype
        self.device = device
        layers = spec.num_layers
        self._a_rows: dict[str, torch.Tensor] = {}  # group -> [layers, slots, n_slices * R, in]
        self._b: dict[str, list[torch.Tensor]] = {}  # group -> stacks [layers, slots, k, R, w]
        self._b_slices: dict[str, list[torch.Tensor]] = {}  # group -> per slice [layers, slots, R, w]
        for group, shape in group_shapes(spec).items():
            slices = len(shape.out_features)
            self._a_rows[group] = torch.zeros(
                layers, num_slots, slices * max_rank, shape.in_features, dtype=dtype, device=device
            )
            self._b[group] = [
                torch.zeros(layers, num_slots, count, max_rank, width, dtype=dtype, device=device)
                for count, width in slice_stacks(shape.out_features)
            ]
            self._b_slices[group] = [b for stack in self._b[group] for b in stack.unbind(2)]
        self._layers = [self._layer_views(i) for i in range(layers)]
        self._versions = [0] * num_slots  # bumped on every change, so copies can tell they are stale

    def _layer_views(self, i: int) -> LayerLoRA:
        def operands(group: str) -> LoRAOperands:
            return LoRAOperands(self._a_rows[group][i].transpose(-1, -2), [b[i] for b in self._b[group]])

        return LayerLoRA(
            qkv=operands("qkv"), o=operands("o"), gate_up=operands("gate_up"), down=operands("down")
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every slot buffer (A rows and B stacks of every group), each [layers, slots, ...]."""
        return [t for group, a in self._a_rows.items() for t in (a, *self._b[group])]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors())

    @property
    def layers(self) -> list[LayerLoRA]:
        """Each layer's operands: views of the slot tensors, so they follow every write."""
        return self._layers

    def version(self, slot: int) -> int:
        """Changes whenever the slot's contents do."""
        return self._versions[slot]

    def write(self, slot: int, adapter: LoRAAdapter) -> None:
        """Copy an adapter into ``slot``, scaling B; modules it does not target become zero."""
        self.clear(slot)
        max_rank = self.max_rank
        scales = {weights.scale for weights in adapter.modules.values()}
        one_scale = scales.pop() if len(scales) == 1 else None
        for (layer, module), weights in adapter.modules.items():
            group, index = MODULE_GROUP[module]
            r = weights.a.shape[0]
            start = index * max_rank
            self._a_rows[group][layer, slot, start : start + r].copy_(weights.a)
            b = self._b_slices[group][index][layer, slot, :r]  # [r, out]
            b.copy_(weights.b.t())  # host -> device copy; a mul with out= cannot cross devices
            if one_scale is None:
                b.mul_(weights.scale)
        if one_scale is not None and one_scale != 1.0:  # one pass per B instead of per module
            for stacks in self._b.values():
                for b in stacks:
                    b[:, slot].mul_(one_scale)

    def clear(self, slot: int) -> None:
        self._versions[slot] += 1
        for buffer in self.tensors():
            buffer[:, slot].zero_()
