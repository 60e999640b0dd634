"""Parse and validate a PEFT LoRA adapter directory into host tensors, reading its file once.

Every refusal is a LoRAAdapterError naming the adapter and the reason, raised before any
state changes, so a bad adapter is never half-loaded.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraserve.errors import LoRAAdapterError
from loraserve.lora.layout import MODULE_GROUP, MODULE_PARENT, SUPPORTED_MODULES, group_shapes
from loraserve.lora.request import LoRARequest
from loraserve.lora.safetensors_file import SafetensorsError, read_safetensors
from loraserve.model.spec import ModelSpec

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"

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
    """Read ``request.lora_path`` and return its weights, or raise LoRAAdapterError."""
    name = request.lora_name
    path = Path(request.lora_path)
    if not path.is_dir():
        raise LoRAAdapterError(name, f"path {str(path)!r} does not exist or is not a directory")
    config = _read_config(name, path)
    _check_config(name, config)
    modules = _collect_modules(name, _read_tensors(name, path))
    _check_ranks(name, modules, max_rank)
    return _assemble(name, str(path), config, modules, spec)


def _read_config(name: str, path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise LoRAAdapterError(name, f"{CONFIG_FILE} is missing in {str(path)!r}")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoRAAdapterError(name, f"{CONFIG_FILE} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise LoRAAdapterError(name, f"{CONFIG_FILE} must hold a JSON object")
    return config


def _check_config(name: str, config: dict[str, Any]) -> None:
    peft_type = config.get("peft_type")
    if str(peft_type).upper() != "LORA":
        raise LoRAAdapterError(name, f"peft_type is {peft_type!r}; only LORA adapters are supported")
    if config.get("use_dora"):
        raise LoRAAdapterError(name, "DoRA adapters (use_dora=true) are not supported")
    if config.get("modules_to_save"):
        raise LoRAAdapterError(
            name, f"modules_to_save {config['modules_to_save']!r} is not supported"
        )
    if config.get("bias", "none") != "none":
        raise LoRAAdapterError(name, f"bias={config['bias']!r} is not supported (only 'none')")
    targets = config.get("target_modules")
    if isinstance(targets, list):  # short names, or full paths ("all-linear" saves those)
        unsupported = sorted({t for t in targets if t.split(".")[-1] not in SUPPORTED_MODULES})
        if unsupported:
            raise LoRAAdapterError(
                name,
                f"target modules {unsupported} are not supported; "
                f"supported: {', '.join(SUPPORTED_MODULES)}",
            )


def _read_tensors(name: str, path: Path) -> dict[str, torch.Tensor]:
    safetensors_file, bin_file = path / SAFETENSORS_FILE, path / BIN_FILE
    if safetensors_file.is_file():
        try:
            return read_safetensors(safetensors_file)
        except SafetensorsError as exc:
            raise LoRAAdapterError(name, f"{SAFETENSORS_FILE} is corrupt: {exc}") from None
    if bin_file.is_file():
        try:
            tensors = torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise LoRAAdapterError(name, f"{BIN_FILE} could not be read ({exc})") from None
        if not isinstance(tensors, dict):
            raise LoRAAdapterError(name, f"{BIN_FILE} does not hold a state dict")
        return tensors
    raise LoRAAdapterError(name, f"no {SAFETENSORS_FILE} or {BIN_FILE} in {str(path)!r}")


ModuleKey = tuple[int, str]  # (layer, module name)


def _collect_modules(
    name: str, tensors: dict[str, torch.Tensor]
) -> dict[ModuleKey, dict[str, torch.Tensor]]:
    modules: dict[ModuleKey, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None or match.group(2) not in SUPPORTED_MODULES:
            raise LoRAAdapterError(
                name,
                f"weight {key!r} is not a LoRA weight of a supported module "
                f"({', '.join(SUPPORTED_MODULES)})",
            )
        layer, module, which = int(match.group(1)), match.group(2), match.group(3)
        modules.setdefault((layer, module), {})[which] = tensor
    if not modules:
        raise LoRAAdapterError(name, "the weights file holds no LoRA weights")
    for (layer, module), pair in modules.items():
        if set(pair) != {"A", "B"}:
            raise LoRAAdapterError(name, f"layer {layer} {module} has lora_A or lora_B missing")
    return modules


def _check_ranks(name: str, modules: dict[ModuleKey, dict[str, torch.Tensor]], max_rank: int) -> None:
    rank = max(pair["A"].shape[0] for pair in modules.values())
    if rank > max_rank:
        raise LoRAAdapterError(
            name,
            f"rank {rank} exceeds --max-lora-rank {max_rank}; restart with --max-lora-rank {rank} "
            f"(or max_lora_rank={rank})",
        )


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
    name: str,
    path: str,
    config: dict[str, Any],
    modules: dict[ModuleKey, dict[str, torch.Tensor]],
    spec: ModelSpec,
) -> LoRAAdapter:
    """Check every pair's shapes against the base model; keep the tensors as they are."""
    shapes = group_shapes(spec)
    checked: dict[ModuleKey, ModuleLoRA] = {}
    for (layer, module), pair in modules.items():
        group, index = MODULE_GROUP[module]
        in_features, out_features = shapes[group].in_features, shapes[group].out_features[index]
        lora_a, lora_b = pair["A"], pair["B"]  # [r, in], [out, r]
        r = lora_a.shape[0]
        if layer >= spec.num_layers:
            raise LoRAAdapterError(
                name, f"has weights for layer {layer}; the base model has {spec.num_layers}"
            )
        if lora_a.dim() != 2 or lora_b.shape != (out_features, r) or lora_a.shape[1] != in_features:
            raise LoRAAdapterError(
                name,
                f"layer {layer} {module} has lora_A {tuple(lora_a.shape)} and lora_B "
                f"{tuple(lora_b.shape)}; the base model needs [r, {in_features}] and "
                f"[{out_features}, r]: is it an adapter for another base model?",
            )
        if not (lora_a.is_floating_point() and lora_b.is_floating_point()):
            raise LoRAAdapterError(name, f"layer {layer} {module} weights are not floating point")
        checked[(layer, module)] = ModuleLoRA(lora_a, lora_b, _module_scale(config, layer, module, r))
    rank = max(m.a.shape[0] for m in checked.values())
    return LoRAAdapter(name=name, path=path, rank=rank, modules=checked)
