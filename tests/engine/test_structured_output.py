"""Constrained decoding in the batched step, on the tiny model: constrained rows of the base
model and of adapters share a step with free rows; free rows are untouched (same tokens as in
a batch without constraints, no mask work); a grammar compiles once per spec."""

from __future__ import annotations

import re

import pytest

from loraserve import LLM, SamplingParams
from loraserve.engine import sampler
from loraserve.errors import InvalidRequestError
from loraserve.lora.request import LoRARequest
from loraserve.sampling_params import StructuredOutputsParams

PROMPTS = ["the quick brown", "select name from", "hello world", "many adapters"]
ID = r"[a-z]{2,6}-[0-9]{3}"
CHOICES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=16, seed=3)


def _constrained(spec: StructuredOutputsParams, temperature: float = 0.0) -> SamplingParams:
    return SamplingParams(temperature=temperature, max_tokens=24, seed=11, structured_outputs=spec)


def test_constrained_and_free_rows_of_several_adapters_share_a_step(llm, adapter_dirs,
                                                                   monkeypatch):
    sql = LoRARequest("sql", 1, str(adapter_dirs["sql"]))
    chat = LoRARequest("chat", 2, str(adapter_dirs["chat"]))
    free = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    alone = llm.generate(PROMPTS[:2], free, [sql, None], use_tqdm=False)
    masked_rows: list[list[int]] = []
    apply = sampler.apply_grammar_masks
    monkeypatch.setattr(sampler, "apply_grammar_masks", lambda logits, rows: (
        masked_rows.append([row for row, _ in rows]), apply(logits, rows))[1])
    mixed = llm.generate(
        PROMPTS, [free, free, _constrained(StructuredOutputsParams(regex=ID), 1.0),
                  _constrained(StructuredOutputsParams(choice=CHOICES))],
        [sql, None, chat, sql], use_tqdm=False)
    # the free rows' tokens are what they are without constrained neighbours
    assert [o.outputs[0].token_ids for o in mixed[:2]] == [o.outputs[0].token_ids for o in alone]
    assert re.fullmatch(ID, mixed[2].outputs[0].text), mixed[2].outputs[0].text
    assert mixed[3].outputs[0].text in CHOICES
    assert {o.outputs[0].finish_reason for o in mixed[2:]} == {"stop"}
    assert masked_rows and all(set(rows) <= {2, 3} for rows in masked_rows)  # never rows 0, 1


def test_a_batch_without_constraints_does_no_mask_work(llm, monkeypatch):
    monkeypatch.setattr(sampler, "apply_grammar_masks", pytest.fail)
    llm.generate(PROMPTS, SamplingParams(temperature=0.8, max_tokens=4, seed=1), use_tqdm=False)


def test_json_schema_rows_give_valid_json_however_they_sample(llm):
    import json

    import jsonschema

    schema = {"type": "object", "properties": {
        "word": {"enum": ["fox", "dog", "model"]}, "n": {"type": "integer", "minimum": 0,
                                                       "maximum": 99}},
              "required": ["word", "n"], "additionalProperties": False}
    spec = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=1.0, n=3, max_tokens=40, seed=4,
                                                   structured_outputs=spec), use_tqdm=False)
    for output in outputs:
        for choice in output.outputs:
            assert choice.finish_reason == "stop", choice.text
            jsonschema.validate(json.loads(choice.text), schema)


def test_a_spec_compiles_once_and_bad_specs_are_refused(llm):
    spec = StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "string"}}})
    same = StructuredOutputsParams(json='{"properties": {"a": {"type": "string"}}, "type": "object"}')
    assert llm.engine.grammars.compile(spec) is llm.engine.grammars.compile(same)
    for bad in (StructuredOutputsParams(regex="a(b"), StructuredOutputsParams(json="{not json"),
                StructuredOutputsParams(grammar="start: undefined_rule")):
        with pytest.raises(InvalidRequestError, match="constraint"):
            llm.generate(["x"], _constrained(bad), use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="only use one kind"):
        StructuredOutputsParams(regex="a", choice=["a"])
