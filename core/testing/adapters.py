"""A LoRA adapter's files and archives as bytes, built from a seed (no peft, no model), for
tests of what a resolver downloads, unpacks and refuses."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Iterable

from loraserve.resolution.download import ADAPTER_CONFIG, ADAPTER_WEIGHTS


def lora_adapter_files(
    base_model_name: str,
    rank: int = 4,
    hidden: int = 64,
    layers: int = 2,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
) -> dict[str, bytes]:
    """``{adapter_config.json: ..., adapter_model.safetensors: ...}`` of a PEFT-shaped LoRA."""
    import torch
    from safetensors.torch import save

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for target in targets:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            a = torch.randn(rank, hidden, generator=gen)  # [r, in]
            b = torch.randn(hidden, rank, generator=gen)  # [out, r]
            tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = a, b
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_model_name,
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(targets),
        "task_type": "CAUSAL_LM",
    }
    return {
        ADAPTER_CONFIG: json.dumps(config, indent=2).encode(),
        ADAPTER_WEIGHTS: save(tensors),
    }


TarMember = tarfile.TarInfo | tuple[str | tarfile.TarInfo, bytes]


def tar_bytes(members: Iterable[TarMember], mode: str = "w:gz") -> bytes:
    """A tar archive in memory. A member is ``(name, content)``, or a prepared ``TarInfo``
    (a link, a device, a hostile path; see ``tar_member``) alone or with content."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for member in members:
            info, data = (member, b"") if isinstance(member, tarfile.TarInfo) else member
            if not isinstance(info, tarfile.TarInfo):
                info = tarfile.TarInfo(info)
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    """A tar header of any type, for archives that must be refused."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def zip_bytes(
    members: Iterable[tuple[str | zipfile.ZipInfo, bytes]],
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A zip archive in memory, one ``(name or ZipInfo, content)`` per member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buffer.getvalue()
