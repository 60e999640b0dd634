"""A Llama-family GGUF file read as a Hugging Face checkpoint: config, tensors and tokenizer.

llama.cpp's converter renames every tensor, reverses shapes, and permutes the rows of
``attn_q``/``attn_k`` so rotary pairs sit side by side; reading undoes all three, so the rest
of the engine sees exactly what ``from_pretrained(dir, gguf_file=...)`` gives transformers.
Quantized tensors are dequantized with the ``gguf`` library (llama.cpp's own reference code,
imported only when a GGUF file is opened) and cast to the engine's dtype one at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from loraserve.errors import UnsupportedModelError

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")
ARCHITECTURES = {"llama": "LlamaForCausalLM"}  # GGUF general.architecture -> HF class
TOKENIZER_MODELS = ("gpt2",)  # byte-level BPE (SmolLM2, Llama 3, Qwen2); others: --tokenizer
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values
# GGUF name -> HF name; "{i}" is the layer
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_MODEL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf" and Path(path).is_file()


@dataclass
class GGUFCheckpoint:
    """One GGUF file: ``config`` is its config.json, ``tensors`` its state dict (HF names)."""

    path: Path

    @cached_property
    def _reader(self) -> Any:
        import gguf

        return gguf.GGUFReader(str(self.path))

    def _field(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    @cached_property
    def architecture(self) -> str:
        arch = self._field("general.architecture")
        if arch not in ARCHITECTURES:
            raise UnsupportedModelError(
                f"{self.path.name}: GGUF architecture {arch!r} is not supported; "
                f"supported: {', '.join(ARCHITECTURES)}"
            )
        return arch

    @cached_property
    def config(self) -> dict[str, Any]:
        """What config.json would say, from the ``<arch>.*`` metadata."""
        arch = self.architecture
        key = lambda name, default=None: self._field(f"{arch}.{name}", default)  # noqa: E731
        if key("rope.scaling.type", "none") not in ("none", None) or "rope_freqs.weight" in self._names:
            raise UnsupportedModelError(f"{self.path.name}: GGUF rope scaling is not supported")
        heads = key("attention.head_count")
        hidden = key("embedding_length")
        tokens = self._field("tokenizer.ggml.tokens") or []
        return {
            "architectures": [ARCHITECTURES[arch]],
            "model_type": arch,
            "hidden_size": hidden,
            "intermediate_size": key("feed_forward_length"),
            "num_hidden_layers": key("block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": key("attention.head_count_kv", heads),
            "head_dim": key("attention.key_length", hidden // heads),
            "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-5),
            "rope_theta": key("rope.freq_base", 10000.0),
            "max_position_embeddings": key("context_length", 2048),
            "vocab_size": key("vocab_size", len(tokens)),
            "tie_word_embeddings": "output.weight" not in self._names,
            "bos_token_id": self._field("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self._field("tokenizer.ggml.eos_token_id"),
            "hidden_act": "silu",
            "torch_dtype": "float32",
        }

    @cached_property
    def _names(self) -> set[str]:
        return {t.name for t in self._reader.tensors}

    def tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Every tensor dequantized to ``dtype`` under its HF name, with a progress bar."""
        from gguf import quants

        config = self.config
        tensors = {}
        for t in tqdm(self._reader.tensors, desc=f"Dequantizing {self.path.name}", unit="tensor"):
            if t.tensor_type.name not in SUPPORTED_TYPES:
                raise UnsupportedModelError(
                    f"{self.path.name}: tensor {t.name} is {t.tensor_type.name}; supported GGUF "
                    f"types: {', '.join(SUPPORTED_TYPES)}"
                )
            array = quants.dequantize(t.data, t.tensor_type)  # [rows, cols] float32
            values = torch.from_numpy(array if array.flags.writeable else array.copy())
            name = hf_name(t.name)
            if name.endswith("self_attn.q_proj.weight"):
                values = unpermute_rotary(values, config["num_attention_heads"])
            elif name.endswith("self_attn.k_proj.weight"):
                values = unpermute_rotary(values, config["num_key_value_heads"])
            tensors[name] = values.to(dtype)
        return tensors

    def tokenizer_files(self) -> tuple[str, dict[str, Any]]:
        """(tokenizer.json text, tokenizer_config.json dict) built from ``tokenizer.ggml.*``."""
        model = self._field("tokenizer.ggml.model")
        if model not in TOKENIZER_MODELS:
            raise UnsupportedModelError(
                f"{self.path.name}: its tokenizer is {model!r}; loraserve builds {TOKENIZER_MODELS} "
                "tokenizers from GGUF metadata: pass --tokenizer DIR (a Hugging Face tokenizer) instead"
            )
        tokens = self._field("tokenizer.ggml.tokens")
        types = self._field("tokenizer.ggml.token_type") or [1] * len(tokens)
        backend = _byte_level_bpe(
            tokens, self._field("tokenizer.ggml.merges") or [], types,
            self._field("tokenizer.ggml.pre"),
        )
        special = {
            name: tokens[index]
            for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                              ("pad_token", "padding"))
            if (index := self._field(f"tokenizer.ggml.{key}_token_id")) is not None
            and index < len(tokens)
        }
        add_bos = bool(self._field("tokenizer.ggml.add_bos_token", False))
        if add_bos and "bos_token" in special:
            _add_bos(backend, special["bos_token"], tokens.index(special["bos_token"]))
        config = {**special, "add_bos_token": add_bos, "clean_up_tokenization_spaces": False}
        template = self._field("tokenizer.chat_template")
        if template:
            config["chat_template"] = template
        return backend.to_str(), config

    def save_pretrained(self, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write the file as a Hugging Face directory (config, tokenizer, safetensors)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer_json, tokenizer_config = self.tokenizer_files()
        (out / "tokenizer.json").write_text(tokenizer_json)
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        config = {**self.config, "torch_dtype": str(dtype).removeprefix("torch.")}
        (out / "config.json").write_text(json.dumps(config, indent=2))
        tensors = {k: v.contiguous() for k, v in self.tensors(dtype).items()}
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return out


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    if gguf_name in _MODEL_NAMES:
        return _MODEL_NAMES[gguf_name]
    prefix, layer, rest = gguf_name.split(".", 2) if gguf_name.startswith("blk.") else ("", "", "")
    if rest not in _LAYER_NAMES:
        raise UnsupportedModelError(f"GGUF tensor {gguf_name!r} is not one loraserve knows")
    return f"model.layers.{layer}.{_LAYER_NAMES[rest]}"


def unpermute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: per head, rows (0, half, 1, half+1, ...) go back to
    (0, 1, ..., half-1, half, ...), the rotate-half layout HF models use."""
    rows, cols = weight.shape
    half = rows // num_heads // 2
    return weight.reshape(num_heads, half, 2, cols).transpose(1, 2).reshape(rows, cols)


# the split rules llama.cpp names in tokenizer.ggml.pre; any other name splits as GPT-2 does
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


def _byte_level_bpe(tokens: list[str], merges: list[str], types: list[int], pre: str | None):
    """The ``tokenizers`` pipeline of a GPT-2-style vocabulary, control tokens kept whole."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    backend = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    if pre in _SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    spelled = set(pre_tokenizers.ByteLevel.alphabet())
    backend.add_special_tokens([
        AddedToken(token, normalized=False, special=True)
        for token, kind in zip(tokens, types)
        if kind == CONTROL and set(token) <= spelled
    ])
    backend.add_tokens([
        AddedToken(token, normalized=False, special=False)
        for token, kind in zip(tokens, types)
        if kind == USER_DEFINED
    ])
    return backend


def _add_bos(backend: Any, bos: str, bos_id: int) -> None:
    from tokenizers import processors

    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
