"""How B slices are stacked (consecutive equal widths share one tensor), and what slots hold."""

from __future__ import annotations

import pytest
import torch

from loraserve.lora.layout import SUPPORTED_MODULES, slice_stacks
from loraserve.lora.slots import AdapterSlots
from loraserve.model.spec import load_spec


@pytest.mark.parametrize(
    ("widths", "stacks"),
    [
        ((512, 512, 512), [(3, 512)]),  # q/k/v without GQA: one stack
        ((512, 128, 128), [(1, 512), (2, 128)]),  # with GQA: q, then k and v
        ((1376, 1376), [(2, 1376)]),  # gate/up
        ((512,), [(1, 512)]),  # o, down
        ((8, 16, 8), [(1, 8), (1, 16), (1, 8)]),  # only consecutive slices stack
    ],
)
def test_slice_stacks(widths, stacks):
    assert slice_stacks(widths) == stacks


def test_slot_memory_is_a_and_b_of_every_module_in_every_slot(llama_dir):
    """What the engine logs and the benchmark reads: R x (in + out) per module, layer, slot."""
    spec = load_spec(llama_dir)
    hidden, inter, q, kv = spec.hidden_size, spec.intermediate_size, spec.q_size, spec.kv_size
    in_out = {  # (in, out) of each targetable module
        "q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
        "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden),
    }
    assert set(in_out) == set(SUPPORTED_MODULES)
    slots, rank = 3, 4
    per_slot_layer = rank * sum(i + o for i, o in in_out.values()) * 4  # float32
    adapter_slots = AdapterSlots(spec, slots, rank, torch.float32, torch.device("cpu"))
    assert adapter_slots.nbytes == spec.num_layers * slots * per_slot_layer
