"""Where a base model comes from: a Hugging Face directory or one GGUF file, behind one face.

The engine asks a checkpoint for its config (config.json's keys), its tensors under Hugging
Face names, its tokenizer and its generation defaults, and never looks at files itself;
``tokenizer=DIR`` takes the tokenizer from another directory (vLLM's ``--tokenizer``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from loraserve.errors import UnsupportedModelError
from loraserve.model.gguf import GGUFCheckpoint, is_gguf
from loraserve.tokenizer import Tokenizer, from_tokenizer_json

_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


class Checkpoint(Protocol):
    path: Path
    config: dict[str, Any]
    generation_config: dict[str, Any]

    def tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]: ...

    def tokenizer(self) -> Tokenizer: ...


def open_checkpoint(model: str | Path, tokenizer: str | Path | None = None) -> Checkpoint:
    """The checkpoint at ``model`` (a directory or a ``.gguf`` file)."""
    path = Path(model)
    override = Path(tokenizer) if tokenizer else None
    if is_gguf(path):
        return GGUFFile(GGUFCheckpoint(path), override)
    return HFDirectory(path, override)


@dataclass
class HFDirectory:
    path: Path
    tokenizer_dir: Path | None = None

    @cached_property
    def config(self) -> dict[str, Any]:
        file = self.path / "config.json"
        if not file.is_file():
            raise UnsupportedModelError(
                f"{self.path!s} is not a Hugging Face model directory (config.json is missing) "
                "nor a .gguf file"
            )
        return json.loads(file.read_text())

    @cached_property
    def generation_config(self) -> dict[str, Any]:
        file = self.path / "generation_config.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """All tensors on CPU in ``dtype``, with a progress bar over shards."""
        tensors: dict[str, torch.Tensor] = {}
        files = _safetensors_files(self.path)
        for file in tqdm(files, desc="Loading weights", unit="shard", disable=len(files) < 2):
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if not _IGNORED.match(name):
                        tensors[name] = f.get_tensor(name).to(dtype)
        return tensors

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_pretrained(self.tokenizer_dir or self.path)


@dataclass
class GGUFFile:
    gguf: GGUFCheckpoint
    tokenizer_dir: Path | None = None
    generation_config: dict[str, Any] = field(default_factory=dict)  # GGUF keeps none

    @property
    def path(self) -> Path:
        return self.gguf.path

    @property
    def config(self) -> dict[str, Any]:
        return self.gguf.config

    def tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return self.gguf.tensors(dtype)

    def tokenizer(self) -> Tokenizer:
        if self.tokenizer_dir is not None:
            return Tokenizer.from_pretrained(self.tokenizer_dir)
        return from_tokenizer_json(*self.gguf.tokenizer_files())


def _safetensors_files(model_dir: Path) -> list[Path]:
    """The safetensors shards named by the index file, or the single model file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in shards]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(f"no *.safetensors weights found in {model_dir}")
    return files
