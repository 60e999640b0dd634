"""Continuous batching under pressure: preemption, joining mid-flight, aborts."""

from __future__ import annotations

from loraserve import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
PROMPTS = ["hello world", "the quick brown fox", "select name", "a b c d", "many adapters", "0123"]


def test_preemption_keeps_outputs_exact(llama_dir):
    roomy = LLM(str(llama_dir))
    expected = [o.outputs[0].token_ids for o in roomy.generate(PROMPTS, GREEDY)]
    spec = roomy.engine.spec
    block_bytes = 2 * spec.num_layers * 16 * spec.kv_size * 4
    tight = LLM(str(llama_dir), max_model_len=64)
    tight.engine.__init__(  # rebuild with a cache of 8 blocks: far less than 6 sequences need
        type(tight.config)(model=str(llama_dir), max_model_len=64, kv_cache_memory_bytes=8 * block_bytes)
    )
    assert tight.engine.scheduler.blocks.num_blocks == 8
    got = [o.outputs[0].token_ids for o in tight.generate(PROMPTS, GREEDY)]
    assert got == expected


def test_requests_join_a_running_batch(llama_dir):
    llm = LLM(str(llama_dir))
    engine = llm.engine
    tokenizer = llm.get_tokenizer()
    alone = {p: llm.generate(p, GREEDY)[0].outputs[0].token_ids for p in PROMPTS[:3]}
    engine.add_request("a", tokenizer.encode(PROMPTS[0]), GREEDY)
    finished = {}
    for step in range(40):
        if step == 5:
            engine.add_request("b", tokenizer.encode(PROMPTS[1]), GREEDY)
        if step == 9:
            engine.add_request("c", tokenizer.encode(PROMPTS[2]), GREEDY)
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0].token_ids
    assert finished == {"a": alone[PROMPTS[0]], "b": alone[PROMPTS[1]], "c": alone[PROMPTS[2]]}


def test_abort_frees_blocks(llama_dir):
    llm = LLM(str(llama_dir))
    engine = llm.engine
    free = engine.scheduler.blocks.num_free
    engine.add_request("x", llm.get_tokenizer().encode("hello"), GREEDY)
    engine.step()
    assert engine.scheduler.blocks.num_free < free
    engine.abort_request("x")
    assert engine.scheduler.blocks.num_free == free
    assert not engine.has_unfinished_requests()
