"""One decoder-only transformer covering Llama, Mistral, Qwen2 and Qwen3.

The families differ only in optional pieces (q/k/v bias, per-head q/k RMSNorm, tied
embeddings), which are present or absent in the weights, and in which layers attend within a
sliding window (``spec.layer_windows``). q/k/v and gate/up are fused into one matmul each;
every projection can take a per-token LoRA delta. Which weights and LoRA operands a step runs
on is the model runner's choice, handed to ``forward``: the model knows nothing of adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loraserve.kernels import LoRAOperands, add_lora
from loraserve.model.attention import paged_attention
from loraserve.model.forward_batch import ForwardBatch
from loraserve.model.layers import RotaryEmbedding, rms_norm, rotate
from loraserve.model.linear import Projection
from loraserve.model.spec import ModelSpec


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: Projection  # hidden -> q + 2 * kv (with bias for Qwen2)
    q_norm: torch.Tensor | None  # [head_dim], Qwen3
    k_norm: torch.Tensor | None
    o: Projection  # q -> hidden
    post_norm: torch.Tensor  # [hidden]
    gate_up: Projection  # hidden -> 2 * intermediate
    down: Projection  # intermediate -> hidden


@dataclass(frozen=True)
class LayerLoRA:
    """One layer's LoRA operands, one per projection LoRA can target (LayerWeights' names)."""

    qkv: LoRAOperands
    o: LoRAOperands
    gate_up: LoRAOperands
    down: LoRAOperands


@dataclass
class ModelWeights:
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    final_norm: torch.Tensor  # [hidden]
    lm_head: Projection  # hidden -> vocab (the embedding's values when tied)


class DecoderModel:
    """Forward pass over a flattened batch of tokens; returns logits of each sequence's last token."""

    def __init__(self, spec: ModelSpec, weights: ModelWeights, max_positions: int) -> None:
        self.spec = spec
        self.weights = weights
        self.rotary = RotaryEmbedding(
            spec.head_dim,
            max_positions,
            spec.rope_theta,
            spec.rope_scaling,
            weights.embed.dtype,
            weights.embed.device,
        )

    @torch.inference_mode()
    def forward(
        self,
        batch: ForwardBatch,
        kv_cache: torch.Tensor,  # [2, layers, blocks, block_size, kv_heads, head_dim]
        layers: Sequence[LayerWeights] | None = None,
        lora: Sequence[LayerLoRA | None] | None = None,
    ) -> torch.Tensor:
        """Logits [B, vocab] float32 of the batch's last tokens.

        ``layers``: the weights each layer runs on (None: the base weights); ``lora``: per
        layer, the operands whose per-token delta ``batch.lora`` adds, or None (no LoRA).
        """
        hidden = self.weights.embed[batch.input_ids]  # [T, hidden]
        rope = self.rotary.tables(batch.positions)
        for index, layer in enumerate(self.weights.layers if layers is None else layers):
            kv = (kv_cache[0, index], kv_cache[1, index])
            window = self.spec.layer_windows[index]
            layer_lora = None if lora is None else lora[index]
            hidden = self._layer(hidden, layer, kv, batch, window, rope, layer_lora)
        last = hidden[batch.logits_indices]  # [B, hidden]
        last = rms_norm(last, self.weights.final_norm, self.spec.rms_norm_eps)
        return self.weights.lm_head(last).float()  # [B, vocab]

    def _layer(
        self,
        hidden: torch.Tensor,
        w: LayerWeights,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        batch: ForwardBatch,
        window: int | None,  # this layer's sliding window; None: full causal attention
        rope: tuple[torch.Tensor, torch.Tensor],
        lora: LayerLoRA | None,
    ) -> torch.Tensor:
        spec = self.spec
        tokens, head_dim = hidden.shape[0], spec.head_dim
        x = rms_norm(hidden, w.input_norm, spec.rms_norm_eps)
        qkv = w.qkv(x)  # [T, q + 2 * kv]
        if lora is not None:
            add_lora(qkv, x, lora.qkv.a, lora.qkv.b, batch.lora)
        heads = (spec.num_heads, spec.num_kv_heads)
        qk = qkv[:, : spec.q_size + spec.kv_size].view(tokens, sum(heads), head_dim)
        v = qkv[:, spec.q_size + spec.kv_size :].view(tokens, spec.num_kv_heads, head_dim)
        if w.q_norm is None:  # q and k side by side: one rotation for both
            q, k = rotate(qk, *rope).split(heads, dim=1)
        else:
            q, k = qk.split(heads, dim=1)
            q = rotate(rms_norm(q, w.q_norm, spec.rms_norm_eps), *rope)
            k = rotate(rms_norm(k, w.k_norm, spec.rms_norm_eps), *rope)
        attn = paged_attention(q, k, v, *kv_cache, batch, window)  # [T, q]
        o = w.o(attn)
        if lora is not None:
            add_lora(o, attn, lora.o.a, lora.o.b, batch.lora)
        hidden = o.add_(hidden)  # o is this layer's own buffer: no new [T, hidden] tensor

        x = rms_norm(hidden, w.post_norm, spec.rms_norm_eps)
        gate_up = w.gate_up(x)  # [T, 2 * intermediate]
        if lora is not None:
            add_lora(gate_up, x, lora.gate_up.a, lora.gate_up.b, batch.lora)
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate).mul_(up)
        down = w.down(act)
        if lora is not None:
            add_lora(down, act, lora.down.a, lora.down.b, batch.lora)
        return down.add_(hidden)
