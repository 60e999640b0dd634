"""Test tooling for loraserve and its plugins; nothing here is imported at run time.

This package builds tiny seeded models, tokenizers and adapters (the names below, also used
by the benchmarks). Its submodules, imported by name, each do one job:

- ``adapters``: a LoRA adapter's files and archives as bytes, no model needed;
- ``servers``: aiohttp servers on 127.0.0.1 that count requests and inject faults;
- ``probes``: what a plugin registers for a hook, how many bytes a source's fetch wrote;
- ``engine``: greedy tokens from a real engine, per adapter;
- ``resolver_contract``: the tests every remote resolver plugin passes (needs pytest).
"""

from loraserve.testing.tiny_models import (
    ALL_TARGETS,
    ARCHITECTURES,
    BENCHMARK_MODEL,
    CHAT_TEMPLATE,
    make_adapter,
    make_tiny_model,
    make_tokenizer,
    set_adapter_base_model,
    tiny_config,
)

__all__ = [
    "ALL_TARGETS",
    "ARCHITECTURES",
    "BENCHMARK_MODEL",
    "CHAT_TEMPLATE",
    "make_adapter",
    "make_tiny_model",
    "make_tokenizer",
    "set_adapter_base_model",
    "tiny_config",
]
