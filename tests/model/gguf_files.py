"""Writing small GGUF files the way llama.cpp's converter does, for the GGUF reader's tests.

A tiny Hugging Face model (from loraserve.testing) is written with its q/k rows permuted for
llama.cpp's rotary layout, each 2-D weight in the chosen type, and the tokenizer as
``tokenizer.ggml.*`` metadata. K-quant types have no quantizer in the gguf library, so their
blocks are random bytes with finite scales: valid data, though not a useful model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

K_QUANT_SCALES = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # byte offsets of f16 scales
HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{LAYER[rest]}"


def permute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter: per head, the two rotate-half halves are interleaved."""
    rows = weight.shape[0]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def encode(values: np.ndarray, qtype: str, rng: np.random.Generator) -> tuple[np.ndarray, object]:
    """(raw bytes or array for GGUFWriter.add_tensor, its type) of a float32 tensor."""
    import gguf
    from gguf import quants

    kind = gguf.GGMLQuantizationType[qtype]
    if qtype == "F32":
        return values, None
    if qtype == "F16":
        return values.astype(np.float16), None
    if qtype in K_QUANT_SCALES:
        block, size = gguf.GGML_QUANT_SIZES[kind]
        blocks = values.size // block
        raw = rng.integers(0, 256, (blocks, size), dtype=np.uint8)
        for offset in K_QUANT_SCALES[qtype]:
            scale = rng.uniform(1e-3, 2e-2, blocks).astype(np.float16)
            raw[:, offset : offset + 2] = scale.view(np.uint8).reshape(blocks, 2)
        return raw.reshape(values.shape[0], -1), kind
    return quants.quantize(values, kind), kind


def write_gguf(model_dir: Path, out: Path, qtype: str = "F32", seed: int = 0) -> Path:
    """Write the HF model in ``model_dir`` as a llama GGUF file; norms stay F32 (as llama.cpp)."""
    import gguf

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_vocab_size(config["vocab_size"])
    _add_tokenizer(writer, tokenizer, config)
    rng = np.random.default_rng(seed)
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        values = tensor.to(torch.float32).numpy()
        if name.endswith("q_proj.weight"):
            values = permute_rotary(values, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            values = permute_rotary(values, config["num_key_value_heads"])
        data, kind = encode(values, qtype, rng) if values.ndim == 2 else (values, None)
        if kind is None:
            writer.add_tensor(gguf_name(name), np.ascontiguousarray(data))
        else:
            writer.add_tensor(gguf_name(name), data, raw_dtype=kind)  # shape from the bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_tokenizer(writer, tokenizer: dict, config: dict) -> None:  # noqa: ANN001
    vocab = tokenizer["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    types = [1] * len(tokens)  # NORMAL
    for added in tokenizer.get("added_tokens", []):
        if added["id"] < len(tokens):
            types[added["id"]] = 3 if added.get("special") else 4  # CONTROL / USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.get("bos_token_id") or 0)
    writer.add_eos_token_id(config.get("eos_token_id") or 1)
    writer.add_add_bos_token(False)
