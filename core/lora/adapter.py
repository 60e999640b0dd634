"""Parse and validate a PEFT LoRA adapter directory into host tensors, reading its file once.

Every refusal is a LoRAAdapterError naming the adapter and the reason, raised before any
state changes, so a bad adapter is never half-loaded.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraserve.errors import LoRAAdapterError
from loraserve.lora.layout import MODULE_GROUP, MODULE_PARENT, SUPPORTED_MODULES, group_shapes
from loraserve.lora.peft_config import BIN_FILE, CONFIG_FILE, SAFETENSORS_FILE, read_adapter_config
from loraserve.lora.request import LoRARequest
from loraserve.lora.safetensors_file import SafetensorsError, read_header, read_safetensors
from loraserve.model.spec import ModelSpec

_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\."
    r"(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$"
)


@dataclass(frozen=True)
class ModuleLoRA:
    """One projection's LoRA pair, in PEFT's own layout (no copy, no transpose at load)."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scale: float


@dataclass
class LoRAAdapter:
    """One validated adapter in host memory; its tensors are views of the file's bytes.

    Reshaping into slot layout (and scaling B) happens once, when a slot receives it.
    """

    name: str
    path: str
    rank: int  # the largest rank of any module
    modules: dict[tuple[int, str], ModuleLoRA]  # (layer, module name) -> weights

    @property
    def nbytes(self) -> int:
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())

    @property
    def target_modules(self) -> frozenset[str]:
        return frozenset(module for _, module in self.modules)


def load_adapter(
    request: LoRARequest, spec: ModelSpec, max_rank: int
) -> LoRAAdapter:
    """Read ``request.lora_path`` and return its weights, or raise LoRAAdapterError.

    Names and shapes are checked against the base model and ``max_rank`` before the
    weights are read, so a file cannot make the loader read more than such an adapter
    needs; the weights must then be finite.
    """
    name = request.lora_name
    path = Path(request.lora_path)
    if not path.is_dir():
        raise LoRAAdapterError(name, f"path {str(path)!r} does not exist or is not a directory")
    config = read_adapter_config(path / CONFIG_FILE, name)
    check = functools.partial(_check_shapes, name, spec=spec, max_rank=max_rank)
    pairs = _pairs(name, _read_tensors(name, path, check, _max_bytes(spec, max_rank)))
    return _assemble(name, str(path), config, pairs)


def _read_tensors(
    name: str, path: Path, check_shapes: Callable[[dict[str, tuple[int, ...]]], None],
    max_bytes: int,
) -> dict[str, torch.Tensor]:
    safetensors_file, bin_file = path / SAFETENSORS_FILE, path / BIN_FILE
    if safetensors_file.is_file():
        try:
            _, entries = read_header(safetensors_file)
            check_shapes({key: tuple(e.shape) for key, e in entries.items()})
            return read_safetensors(safetensors_file)
        except SafetensorsError as exc:
            raise LoRAAdapterError(name, f"{SAFETENSORS_FILE} is corrupt: {exc}") from None
    if bin_file.is_file():
        if (size := bin_file.stat().st_size) > max_bytes:  # a pickle has no header to check first
            raise LoRAAdapterError(
                name, f"{BIN_FILE} is {size} bytes, more than any adapter of rank <= "
                f"--max-lora-rank for this base model needs ({max_bytes})"
            )
        try:
            tensors = torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise LoRAAdapterError(name, f"{BIN_FILE} could not be read ({exc})") from None
        if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in tensors.items()
        ):
            raise LoRAAdapterError(name, f"{BIN_FILE} does not hold a state dict of tensors")
        check_shapes({key: tuple(t.shape) for key, t in tensors.items()})
        return tensors
    raise LoRAAdapterError(name, f"no {SAFETENSORS_FILE} or {BIN_FILE} in {str(path)!r}")


ModuleKey = tuple[int, str]  # (layer, module name)


def _pairs(name: str, weights: dict[str, Any]) -> dict[ModuleKey, dict[str, Any]]:
    """Group LoRA weights (tensors or shapes) by (layer, module): {"A": ..., "B": ...} each."""
    pairs: dict[ModuleKey, dict[str, Any]] = {}
    for key, value in weights.items():
        match = _KEY.match(key)
        if match is None or match.group(2) not in SUPPORTED_MODULES:
            raise LoRAAdapterError(
                name,
                f"weight {key!r} is not a LoRA weight of a supported module "
                f"({', '.join(SUPPORTED_MODULES)})",
            )
        layer, module, which = int(match.group(1)), match.group(2), match.group(3)
        pairs.setdefault((layer, module), {})[which] = value
    if not pairs:
        raise LoRAAdapterError(name, "the weights file holds no LoRA weights")
    for (layer, module), pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise LoRAAdapterError(name, f"layer {layer} {module} has lora_A or lora_B missing")
    return pairs


def _check_shapes(
    name: str, shapes: dict[str, tuple[int, ...]], spec: ModelSpec, max_rank: int
) -> None:
    """Every pair is [r, in] and [out, r] for the base model, with 1 <= r <= max_rank."""
    dims = group_shapes(spec)
    ranks = []
    for (layer, module), pair in _pairs(name, shapes).items():
        group, index = MODULE_GROUP[module]
        in_features, out_features = dims[group].in_features, dims[group].out_features[index]
        a, b = pair["A"], pair["B"]
        if layer >= spec.num_layers:
            raise LoRAAdapterError(
                name, f"has weights for layer {layer}; the base model has {spec.num_layers}"
            )
        if len(a) != 2 or len(b) != 2 or a[1] != in_features or b != (out_features, a[0]):
            raise LoRAAdapterError(
                name,
                f"layer {layer} {module} has lora_A {a} and lora_B {b}; the base model needs "
                f"[r, {in_features}] and [{out_features}, r]: is it an adapter for another "
                "base model?",
            )
        if a[0] < 1:
            raise LoRAAdapterError(name, f"layer {layer} {module} has rank 0")
        ranks.append(a[0])
    if (rank := max(ranks)) > max_rank:
        raise LoRAAdapterError(
            name,
            f"rank {rank} exceeds --max-lora-rank {max_rank}; restart with --max-lora-rank {rank} "
            f"(or max_lora_rank={rank})",
        )


def _max_bytes(spec: ModelSpec, max_rank: int) -> int:
    """The most an adapter of rank <= ``max_rank`` needs, in float64, plus pickle overhead."""
    per_layer = sum(
        (shape.in_features + out) * max_rank
        for shape in group_shapes(spec).values() for out in shape.out_features
    )
    return per_layer * spec.num_layers * 8 + (1 << 20)


def _module_scale(config: dict[str, Any], layer: int, module: str, rank: int) -> float:
    """lora_alpha / r (or / sqrt(r) for rsLoRA), honouring PEFT's per-module alpha_pattern."""
    alpha = float(config.get("lora_alpha", 8))
    full_name = f"model.layers.{layer}.{MODULE_PARENT[module]}.{module}"
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", full_name):  # PEFT's own match: "q_proj|v_proj" works
            alpha = float(value)
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _assemble(
    name: str, path: str, config: dict[str, Any], pairs: dict[ModuleKey, dict[str, torch.Tensor]]
) -> LoRAAdapter:
    """Keep the (shape-checked) tensors as they are, once they are finite floats."""
    checked: dict[ModuleKey, ModuleLoRA] = {}
    for (layer, module), pair in pairs.items():
        lora_a, lora_b = pair["A"], pair["B"]  # [r, in], [out, r]
        if not (lora_a.is_floating_point() and lora_b.is_floating_point()):
            raise LoRAAdapterError(name, f"layer {layer} {module} weights are not floating point")
        if not (_finite(lora_a) and _finite(lora_b)):
            raise LoRAAdapterError(name, f"layer {layer} {module} weights hold NaN or infinity")
        scale = _module_scale(config, layer, module, lora_a.shape[0])
        checked[(layer, module)] = ModuleLoRA(lora_a, lora_b, scale)
    rank = max(m.a.shape[0] for m in checked.values())
    return LoRAAdapter(name=name, path=path, rank=rank, modules=checked)


def _finite(weights: torch.Tensor) -> bool:
    """No NaN or infinity: min and max carry any NaN, in one read without a mask tensor."""
    low, high = torch.aminmax(weights)
    return math.isfinite(low) and math.isfinite(high)
