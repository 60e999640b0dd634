"""DecoderModel runs on the layer weights and LoRA operands its caller hands to ``forward``.

The reference is transformers' model with each delta B·A added into its weights by hand;
no adapter slots or merger are involved, so the model is checked on its own.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from loraserve.kernels import LoRABatch, LoRAOperands
from loraserve.lora.layout import group_shapes, slice_stacks
from loraserve.model.decoder import DecoderModel, LayerLoRA
from loraserve.model.forward_batch import AttentionGroup, ForwardBatch
from loraserve.model.loader import load_weights
from loraserve.model.spec import load_spec

RANK, SLOTS, SLOT, BLOCK_SIZE = 4, 2, 1, 16
PROMPT = [5, 17, 42, 99, 7, 3, 250, 64, 11, 120]
# HF module names of each fused group's slices, in our fused order
GROUPS = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down": ("mlp.down_proj",),
}


def prefill_batch(tokens: list[int], lora: LoRABatch | None) -> ForwardBatch:
    """One sequence prefilled from position 0, logits for every token."""
    count = len(tokens)
    blocks = -(-count // BLOCK_SIZE)
    rows = torch.arange(count)
    keys = torch.arange(blocks * BLOCK_SIZE)
    return ForwardBatch(
        input_ids=torch.tensor(tokens),
        positions=rows,
        slot_mapping=rows,  # blocks 0, 1, ... in order: the flat row is the position
        block_tables=torch.arange(blocks).unsqueeze(0),
        attention=(AttentionGroup(
            block_tables=torch.arange(blocks).unsqueeze(0),
            attn_mask=(keys.view(1, -1) <= rows.view(-1, 1)).view(1, 1, count, -1),
            sliding_mask=None,
            query_rows=(torch.zeros(count, dtype=torch.long), rows),
            max_query_len=count,
        ),),
        logits_indices=rows,
        lora=lora,
    )


@pytest.fixture(scope="module")
def setup(llama_dir):
    """Our model, random A/B per layer and group (slot 0 holds other values), the deltas."""
    spec = load_spec(llama_dir)
    weights = load_weights(llama_dir, spec, torch.float32, torch.device("cpu"))
    model = DecoderModel(spec, weights, max_positions=64)
    gen = torch.Generator().manual_seed(7)
    operands, deltas = [], []  # per layer: LayerLoRA; {HF module: [out, in] delta}
    shapes = group_shapes(spec)
    for _ in weights.layers:
        groups, layer_deltas = {}, {}
        for group, modules in GROUPS.items():
            shape = shapes[group]
            a = torch.randn(SLOTS, shape.in_features, len(modules) * RANK, generator=gen) * 0.1
            b = [  # the documented layout: one stack per run of equal-width slices
                torch.randn(SLOTS, count, RANK, width, generator=gen) * 0.1
                for count, width in slice_stacks(shape.out_features)
            ]
            groups[group] = LoRAOperands(a, b)
            b_slices = [stack[SLOT, k] for stack in b for k in range(stack.shape[1])]
            for i, module in enumerate(modules):  # x @ A_i @ B_i == x @ (B_i^T A_i^T)^T
                a_i = a[SLOT, :, i * RANK : (i + 1) * RANK]
                layer_deltas[module] = (a_i @ b_slices[i]).t()
        operands.append(LayerLoRA(**groups))
        deltas.append(layer_deltas)
    return model, operands, deltas


@pytest.fixture(scope="module")
def reference_logits(llama_dir, setup):
    """transformers' logits for PROMPT with every delta merged into its weights, and without."""
    from transformers import AutoModelForCausalLM

    _, _, deltas = setup
    hf = AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32).eval()
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        base = hf(input_ids=ids).logits[0]
        for layer, layer_deltas in zip(hf.model.layers, deltas):
            for module, delta in layer_deltas.items():
                layer.get_submodule(module).weight += delta
        tuned = hf(input_ids=ids).logits[0]
    assert (tuned - base).abs().max() > 0.1  # the deltas matter: the checks below can fail
    return base, tuned


def kv_cache(model: DecoderModel) -> torch.Tensor:
    spec = model.spec
    blocks = -(-len(PROMPT) // BLOCK_SIZE)
    return torch.zeros(2, spec.num_layers, blocks, BLOCK_SIZE, spec.num_kv_heads, spec.head_dim)


def test_lora_operands_handed_to_forward_are_applied(setup, reference_logits):
    model, operands, _ = setup
    batch = prefill_batch(PROMPT, LoRABatch.build([SLOT] * len(PROMPT)))
    got = model.forward(batch, kv_cache(model), lora=operands)
    torch.testing.assert_close(got, reference_logits[1], atol=1e-4, rtol=1e-4)


def merged(layer, layer_deltas):
    """The layer with W + delta in every projection, as a caller merging an adapter passes it."""
    fused = {
        group: getattr(layer, group).merged_with(torch.cat([layer_deltas[m] for m in modules]))
        for group, modules in GROUPS.items()
    }
    return dataclasses.replace(layer, **fused)


def test_layers_handed_to_forward_replace_the_base_weights(setup, reference_logits):
    model, _, deltas = setup
    merged_layers = [merged(layer, d) for layer, d in zip(model.weights.layers, deltas)]
    got = model.forward(prefill_batch(PROMPT, None), kv_cache(model), layers=merged_layers)
    torch.testing.assert_close(got, reference_logits[1], atol=1e-4, rtol=1e-4)
    base = model.forward(prefill_batch(PROMPT, None), kv_cache(model))
    torch.testing.assert_close(base, reference_logits[0], atol=1e-4, rtol=1e-4)


def test_a_layer_without_operands_runs_on_its_weights_alone(setup, reference_logits):
    """Per layer: operands where given, none where the entry is None (a merged layer)."""
    model, operands, deltas = setup
    layers = [merged(model.weights.layers[0], deltas[0]), *model.weights.layers[1:]]
    batch = prefill_batch(PROMPT, LoRABatch.build([SLOT] * len(PROMPT)))
    got = model.forward(batch, kv_cache(model), layers=layers, lora=[None, *operands[1:]])
    torch.testing.assert_close(got, reference_logits[1], atol=1e-4, rtol=1e-4)
