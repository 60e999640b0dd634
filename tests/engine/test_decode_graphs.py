"""Decode graphs' static buffers, bucket padding and refill, run on CPU with eager replay.

A graph reads only its static buffers, so the same outputs as the eager engine prove that
every step refills them fully: tokens, positions, cache slots, block tables, context
lengths and the LoRA segment table, with adapters changing between replays.
"""

from __future__ import annotations

import pytest
import torch

from loraserve import LLM, SamplingParams
from loraserve.config import EngineConfig
from loraserve.engine.builder import decode_graphs_wanted
from loraserve.engine.decode_graphs import bucket_sizes
from loraserve.lora.request import LoRARequest
from loraserve.testing import make_tiny_model
from loraserve.testing.devices import StrictDevices


def test_buckets_cover_every_batch_size_up_to_the_limit():
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 48, 64]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert bucket_sizes(1) == [1]


def test_graphs_are_on_for_cuda_unless_enforce_eager(llama_dir):
    config = EngineConfig(str(llama_dir))
    assert decode_graphs_wanted(config, torch.device("cuda"))
    assert not decode_graphs_wanted(EngineConfig(str(llama_dir), enforce_eager=True), torch.device("cuda"))
    assert not decode_graphs_wanted(config, torch.device("cpu"))
    assert LLM(str(llama_dir), device="cpu").engine.runner.decode_graphs is None
    assert LLM(str(llama_dir), enforce_eager=True).config.enforce_eager


def _engines(model_dir, **kw):
    """The eager engine and one whose decode steps go through DecodeGraphs (eager replay)."""
    eager = LLM(str(model_dir), lora_merge=False, **kw)
    graphed = LLM(str(model_dir), lora_merge=False, **kw)
    runner = graphed.engine.runner
    runner.enable_decode_graphs(kw.get("max_num_seqs", 64), graphed.engine.max_model_len,
                                capture=False)
    return eager, graphed, runner.decode_graphs


def _tokens(llm, prompts, params, loras=None):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, lora_request=loras,
                                                          use_tqdm=False)]


def test_graph_steps_equal_eager_steps_with_adapters_changing(llama_dir, adapter_dirs):
    eager, graphed, graphs = _engines(llama_dir, enable_lora=True, max_loras=2, max_lora_rank=16,
                                      max_num_seqs=6)
    requests = {name: LoRARequest(name, i + 1, str(adapter_dirs[name]))
                for i, name in enumerate(("sql", "chat", "mlp"))}
    prompts = ["the quick brown fox", "select name from users", "hello world", "a b c", "x y"]
    # rows finish at different lengths, so the batch shrinks through buckets 6, 4, 2 and 1
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 6, 9, 12, 15)]
    mixes = [  # more adapters than slots: slots are rewritten between runs (and within one)
        [requests["sql"], None, requests["chat"], requests["sql"], None],
        [requests["mlp"], requests["mlp"], None, requests["chat"], requests["sql"]],
        [None] * 5,
    ]
    for loras in mixes:
        with StrictDevices():  # the refill names its devices too
            got = _tokens(graphed, prompts, params, loras)
        assert got == _tokens(eager, prompts, params, loras)
    assert {bucket for bucket, _ in graphs._graphs} == {6, 4, 2, 1}  # 5, 3 rows were padded
    assert {use_lora for _, use_lora in graphs._graphs} == {True, False}


@pytest.mark.parametrize("arch", ["mistral", "qwen3"])
def test_graph_steps_equal_eager_steps_for_sliding_and_qk_norm_models(model_dirs, tmp_path, arch):
    """Mistral with a window of 8 (shorter than the contexts), Qwen3's q/k norms."""
    model_dir = model_dirs[arch]
    if arch == "mistral":
        model_dir = make_tiny_model(tmp_path / "model", arch="mistral", seed=5, sliding_window=8)
    eager, graphed, graphs = _engines(model_dir, max_num_seqs=4)
    prompts = ["the quick brown fox jumps over the lazy dog " * 2, "hello", "a b c"]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    assert _tokens(graphed, prompts, params) == _tokens(eager, prompts, params)
    assert graphs._graphs
