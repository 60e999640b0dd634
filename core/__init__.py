"""loraserve: one base LLM, many LoRA adapters in the same batch.

The public names are imported on first use, so ``import loraserve`` stays cheap for the
CLI, plugins and tools that only need a submodule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loraserve.version import __version__  # noqa: F401 (re-exported)

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]

_LAZY = {
    "LLM": "loraserve.entrypoints.llm",
    "SamplingParams": "loraserve.sampling_params",
    "RequestOutput": "loraserve.outputs",
    "CompletionOutput": "loraserve.outputs",
}

if TYPE_CHECKING:
    from loraserve.entrypoints.llm import LLM
    from loraserve.outputs import CompletionOutput, RequestOutput
    from loraserve.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'loraserve' has no attribute {name!r}")
