"""What the engine reports to its stat logger (engine/stats.py), under preemption: every
sequence finishes once, a prompt counts once however often it is recomputed, the intervals
nest, and the batch state names the adapters running."""

from __future__ import annotations

import pytest

from loraserve.config import EngineConfig
from loraserve.engine.llm_engine import LLMEngine
from loraserve.engine.stat_logger import one_two_five_buckets
from loraserve.engine.stats import BatchState, StepStats
from loraserve.lora.request import LoRARequest
from loraserve.model.spec import load_spec
from loraserve.sampling_params import SamplingParams

MAX_TOKENS = 24
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
TWO = SamplingParams(temperature=1.0, seed=7, n=2, max_tokens=MAX_TOKENS, ignore_eos=True)
PROMPTS = ["hello world", "the quick brown fox", "select name", "a b c d", "many adapters", "0123"]


class Recorder:
    def __init__(self) -> None:
        self.states: list[BatchState] = []
        self.steps: list[StepStats] = []

    def record(self, state: BatchState, step: StepStats | None) -> None:
        self.states.append(state)
        if step is not None:
            self.steps.append(step)


def test_step_stats_under_preemption(llama_dir, adapter_dirs):
    config = dict(model=str(llama_dir), max_model_len=64, enable_lora=True, max_lora_rank=16)
    spec = load_spec(llama_dir)
    block_bytes = 2 * spec.num_layers * 16 * spec.kv_size * 4
    engine = LLMEngine(EngineConfig(**config, kv_cache_memory_bytes=8 * block_bytes))
    assert engine.scheduler.blocks.num_blocks == 8  # far less than 8 sequences need at once
    engine.stat_loggers.append(recorder := Recorder())
    encode = engine.tokenizer.encode
    prompts = [encode(p) for p in PROMPTS]
    for i, ids in enumerate(prompts):
        lora = LoRARequest("sql", 1, str(adapter_dirs["sql"])) if i == 0 else None
        engine.add_request(str(i), ids, GREEDY, lora_request=lora)
    engine.add_request("two", encode("two samples"), TWO)
    while engine.has_unfinished_requests():
        engine.step()
    engine.record_state()

    steps = recorder.steps
    finished = [seq for step in steps for seq in step.finished_sequences]
    prompt_lens = [len(ids) for ids in prompts] + [len(encode("two samples"))] * 2
    assert sum(step.preemptions for step in steps) > 0
    assert len(finished) == len(prompt_lens)
    assert {seq.finish_reason for seq in finished} == {"length"}
    assert all(seq.generation_tokens == MAX_TOKENS for seq in finished)
    assert sum(step.prompt_tokens for step in steps) == sum(prompt_lens)  # once, recomputed or not
    assert sum(step.generation_tokens for step in steps) == MAX_TOKENS * len(prompt_lens)
    assert sum(len(step.time_to_first_token) for step in steps) == len(prompt_lens)
    assert sum(len(step.inter_token_latency) for step in steps) == (MAX_TOKENS - 1) * len(prompt_lens)
    fed_once = sum(prompt_lens) + (MAX_TOKENS - 1) * len(prompt_lens)
    assert sum(step.num_tokens for step in steps) > fed_once  # recomputation is work done too
    for seq in finished:
        assert min(seq.queue_time, seq.prefill_time, seq.decode_time) >= 0
        assert seq.inference_time == pytest.approx(seq.prefill_time + seq.decode_time)
        assert seq.e2e_latency >= seq.queue_time + seq.inference_time
        assert seq.time_per_output_token == pytest.approx(seq.decode_time / (MAX_TOKENS - 1))
        assert seq.max_tokens == MAX_TOKENS
    requests = sorted((r.n, r.max_generation_tokens) for step in steps for r in step.finished_requests)
    assert requests == [(1, MAX_TOKENS)] * len(PROMPTS) + [(2, MAX_TOKENS)]

    states = recorder.states
    assert all(0 <= state.kv_cache_usage <= 1 for state in states)
    assert max(state.kv_cache_usage for state in states) > 0.5
    assert any(state.running_adapters == ("sql",) for state in states)
    assert states[-1] == BatchState(0, 0, 0.0, (), ())


def test_offline_engines_have_no_stat_loggers(llama_dir):
    """As vLLM's offline LLM: the vllm:* series belong to the server's engine."""
    assert LLMEngine(EngineConfig(model=str(llama_dir))).stat_loggers == []


def test_token_count_buckets_are_vllms():
    assert one_two_five_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert one_two_five_buckets(4096)[-2:] == [1000, 2000]
