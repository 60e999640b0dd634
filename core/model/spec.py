"""What the engine needs to know about a base model, read from its config (config.json's keys)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from loraserve.errors import UnsupportedModelError
from loraserve.model.checkpoint import open_checkpoint

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    layer_windows: tuple[int | None, ...]  # per layer: sliding-window size, None = full attention
    eos_token_ids: tuple[int, ...]
    config_dtype: torch.dtype

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def sliding_window(self) -> int | None:
        """The window every sliding layer shares (configs have one), or None if no layer slides."""
        return next((w for w in self.layer_windows if w is not None), None)


def load_spec(model: str | Path) -> ModelSpec:
    """The spec of the model directory or GGUF file at ``model``."""
    return spec_from_config(open_checkpoint(model).config)


def spec_from_config(cfg: dict[str, Any]) -> ModelSpec:
    """Refuse what our model code cannot run, saying what it can."""
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise UnsupportedModelError(
            f"architecture {archs or cfg.get('model_type')!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act {cfg['hidden_act']!r} is not supported (silu only)")
    heads = cfg["num_attention_heads"]
    rope_theta, rope_scaling = _rope(cfg)
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    return ModelSpec(
        architecture=arch,
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        layer_windows=_layer_windows(arch, cfg),
        eos_token_ids=eos_ids,
        config_dtype=_DTYPES.get(cfg.get("torch_dtype") or cfg.get("dtype"), torch.float32),
    )


def _layer_windows(arch: str, cfg: dict[str, Any]) -> tuple[int | None, ...]:
    """Which layers slide, as transformers 5 decides it (a query at i sees keys i - window < j <= i).

    Mistral slides every layer when ``sliding_window`` is set; Qwen2/3 only with
    ``use_sliding_window``, then the layers marked "sliding_attention" in ``layer_types``, or
    without it the layers from ``max_window_layers`` on; Llama never slides.
    """
    layers = cfg["num_hidden_layers"]
    window = cfg.get("sliding_window")
    if arch == "LlamaForCausalLM" or not window:
        return (None,) * layers
    if arch == "MistralForCausalLM":
        return (window,) * layers
    if not cfg.get("use_sliding_window", False):
        return (None,) * layers
    types = cfg.get("layer_types")
    if types is None:
        first = cfg.get("max_window_layers", 28)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    if len(types) != layers:
        raise UnsupportedModelError(
            f"config.json lists {len(types)} layer_types for {layers} layers; they must match"
        )
    return tuple(window if t == "sliding_attention" else None for t in types)


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """Rope settings from either transformers 4 (rope_theta/rope_scaling) or 5 (rope_parameters)."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope type {rope_type!r} is not supported; supported: {', '.join(_ROPE_TYPES)}"
        )
    return float(theta), (None if rope_type == "default" else {**params, "rope_type": rope_type})


def resolve_dtype(name: str, spec: ModelSpec, device: torch.device) -> torch.dtype:
    """'auto' is the config's dtype on GPUs. On a CPU it is bfloat16 for a bfloat16 or float16
    checkpoint where the CPU computes in bfloat16 natively, else float32 (half matmuls
    emulated in float32 are slow, and a float32 checkpoint stays exact)."""
    if name == "auto":
        if device.type != "cpu":
            return spec.config_dtype
        half = spec.config_dtype in (torch.bfloat16, torch.float16)
        return torch.bfloat16 if half and cpu_has_native_bf16() else torch.float32
    return parse_dtype(name)


def parse_dtype(name: str) -> torch.dtype:
    """A dtype named as on the command line (float32, bfloat16, float16)."""
    if name not in _DTYPES:
        raise UnsupportedModelError(f"dtype {name!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


@cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16; Linux x86 flags).

    The one place that asks: without them oneDNN emulates bfloat16 matmuls in float32, slower
    than float32 itself.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
