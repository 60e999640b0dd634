"""Unloading an adapter that running requests use, then loading another under its name."""

from __future__ import annotations

from loraserve import LLM, SamplingParams
from loraserve.lora.request import LoRARequest

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def test_running_requests_keep_old_weights_after_a_reload_under_the_same_name(llama_dir, adapter_dirs):
    reference = LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=16)
    old = LoRARequest("x", 1, str(adapter_dirs["sql"]))
    new = LoRARequest("x", 2, str(adapter_dirs["mlp"]))
    expected_old = reference.generate("hello", GREEDY, lora_request=old)[0].outputs[0].token_ids
    other = LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=16)
    expected_new = other.generate("hello", GREEDY, lora_request=new)[0].outputs[0].token_ids
    assert expected_old != expected_new

    llm = LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=16)
    engine = llm.engine
    ids = llm.get_tokenizer().encode("hello")
    engine.add_request("old", ids, GREEDY, engine.load_lora(old))
    finished = {}
    for _ in range(3):
        engine.step()
    engine.lora_manager.remove("x")  # in flight: "old" must finish with the old weights
    engine.add_request("new", ids, GREEDY, engine.load_lora(new))
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0].token_ids
    assert finished == {"old": expected_old, "new": expected_new}
    assert engine.lora_manager.num_host_adapters == 1
