"""Steps that prefill prompts beside decoding sequences: attention in two groups, outputs
as transformers (+ PEFT) gives each request alone."""

from __future__ import annotations

import pytest

from loraserve import LLM, SamplingParams
from loraserve.engine import model_runner
from loraserve.lora.request import LoRARequest

NEW_TOKENS = 12
EARLY = [("the quick brown fox jumps over", None), ("select name from users", "sql")]
LATE = [("hello", "chat"), ("many adapters share one base model in the same batch", None)]


@pytest.fixture
def groups_seen(monkeypatch):
    """(query lengths, attention groups) of every step the runner prepares."""
    seen: list[tuple] = []
    real = model_runner.ModelRunner._prepare

    def prepare(self, step, extra):
        batch = real(self, step, extra)
        seen.append((list(step.query_lens), batch.attention))
        return batch

    monkeypatch.setattr(model_runner.ModelRunner, "_prepare", prepare)
    return seen


def test_prompts_prefilled_beside_decodes_match_transformers(llama_dir, adapter_dirs, hf_greedy,
                                                             groups_seen):
    llm = LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=16)
    engine = llm.engine
    loras = {name: LoRARequest(name, i + 1, str(adapter_dirs[name]))
             for i, name in enumerate(("sql", "chat"))}
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)

    def add(index: int, prompt: str, adapter: str | None) -> None:
        engine.add_request(str(index), engine.tokenizer.encode(prompt), params,
                           lora_request=loras.get(adapter), prompt=prompt)

    for index, (prompt, adapter) in enumerate(EARLY):
        add(index, prompt, adapter)
    done = {}
    for _ in range(3):  # the early requests are decoding when the late ones arrive
        engine.step()
    for index, (prompt, adapter) in enumerate(LATE, start=len(EARLY)):
        add(index, prompt, adapter)
    while engine.has_unfinished_requests():
        done.update((out.request_id, out) for out in engine.step() if out.finished)

    mixed = [(q_lens, groups) for q_lens, groups in groups_seen if len(groups) == 2]
    assert len(mixed) == 1, "the late prompts should prefill in one step beside two decodes"
    q_lens, (decode, prompts) = mixed[0]
    starts = [sum(q_lens[:i]) for i in range(len(q_lens))]
    decode_rows = [starts[i] for i, n in enumerate(q_lens) if n == 1]
    prompt_rows = [starts[i] + r for i, n in enumerate(q_lens) if n > 1 for r in range(n)]
    assert len(decode_rows) == len(EARLY) and len(q_lens) == len(EARLY) + len(LATE)
    # one query per decoding sequence, none padded to a prompt's length; the prompts apart
    assert decode.max_query_len == 1 and decode.tokens.tolist() == decode_rows
    assert prompts.tokens.tolist() == prompt_rows and prompts.max_query_len == max(q_lens)

    for index, (prompt, adapter) in enumerate(EARLY + LATE):
        want = hf_greedy(llama_dir, prompt, NEW_TOKENS,
                         adapter_dirs[adapter] if adapter else None)
        assert done[str(index)].outputs[0].token_ids == want, f"request {index} ({adapter})"
