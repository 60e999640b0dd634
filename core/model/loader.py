"""Read a Hugging Face checkpoint (single or sharded safetensors) into fused ModelWeights."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from loraserve.errors import UnsupportedModelError
from loraserve.model.decoder import LayerWeights, ModelWeights
from loraserve.model.linear import Projection
from loraserve.model.spec import ModelSpec

logger = logging.getLogger(__name__)

_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors shards named by the index file, or the single model file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in shards]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(f"no *.safetensors weights found in {model_dir}")
    return files


def read_tensors(model_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint on CPU in ``dtype``, with a progress bar over shards."""
    tensors: dict[str, torch.Tensor] = {}
    files = checkpoint_files(model_dir)
    for path in tqdm(files, desc="Loading weights", unit="shard", disable=len(files) < 2):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                if not _IGNORED.match(name):
                    tensors[name] = f.get_tensor(name).to(dtype)
    return tensors


def load_weights(
    model_dir: str | Path, spec: ModelSpec, dtype: torch.dtype, device: torch.device
) -> ModelWeights:
    """Map HF names to our fused layout; a missing tensor is an error naming it."""
    tensors = read_tensors(Path(model_dir), dtype)

    def take(name: str) -> torch.Tensor:
        try:
            return tensors.pop(name).to(device)
        except KeyError:
            raise UnsupportedModelError(f"checkpoint in {model_dir} has no tensor {name!r}") from None

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
            f"checkpoint in {model_dir} has tensors our model code does not use: {unexpected[:3]}"
        )
    if tensors:
        logger.warning("ignoring %d unexpected tensors, e.g. %s", len(tensors), next(iter(tensors)))
    return weights
