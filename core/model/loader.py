"""A checkpoint's tensors (Hugging Face names) into our fused ModelWeights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from loraserve.errors import UnsupportedModelError
from loraserve.model.checkpoint import Checkpoint, open_checkpoint
from loraserve.model.decoder import LayerWeights, ModelWeights
from loraserve.model.linear import Projection
from loraserve.model.spec import ModelSpec

logger = logging.getLogger(__name__)

def load_weights(
    model: str | Path | Checkpoint, spec: ModelSpec, dtype: torch.dtype, device: torch.device
) -> ModelWeights:
    """Map HF names to our fused layout; a missing tensor is an error naming it."""
    checkpoint = open_checkpoint(model) if isinstance(model, (str, Path)) else model
    where = checkpoint.path
    tensors = checkpoint.tensors(dtype)

    def take(name: str) -> torch.Tensor:
        try:
            return tensors.pop(name).to(device)
        except KeyError:
            raise UnsupportedModelError(f"checkpoint {where} has no tensor {name!r}") from None

    def maybe(name: str) -> torch.Tensor | None:
        return take(name) if name in tensors else None

    layers = []
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        qkv = torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        biases = [maybe(p + f"self_attn.{n}_proj.bias") for n in "qkv"]
        qkv_bias = torch.cat(biases) if all(b is not None for b in biases) else None
        gate_up = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        layers.append(
            LayerWeights(
                input_norm=take(p + "input_layernorm.weight"),
                qkv=Projection(qkv, qkv_bias),
                q_norm=maybe(p + "self_attn.q_norm.weight"),
                k_norm=maybe(p + "self_attn.k_norm.weight"),
                o=Projection(take(p + "self_attn.o_proj.weight"), maybe(p + "self_attn.o_proj.bias")),
                post_norm=take(p + "post_attention_layernorm.weight"),
                gate_up=Projection(gate_up),
                down=Projection(take(p + "mlp.down_proj.weight")),
            )
        )
    embed = take("model.embed_tokens.weight")
    lm_head = maybe("lm_head.weight")
    weights = ModelWeights(
        embed=embed,
        layers=layers,
        final_norm=take("model.norm.weight"),
        lm_head=Projection(embed if spec.tie_word_embeddings or lm_head is None else lm_head),
    )
    unexpected = [name for name in tensors if name.startswith("model.layers.")]
    if unexpected:  # e.g. MLP biases: running without them would silently give wrong outputs
        raise UnsupportedModelError(
            f"checkpoint {where} has tensors our model code does not use: {unexpected[:3]}"
        )
    if tensors:
        logger.warning("ignoring %d unexpected tensors, e.g. %s", len(tensors), next(iter(tensors)))
    return weights
