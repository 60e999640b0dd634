"""The real demo: SmolLM2-135M-Instruct and the adapters the project trained, served by
loraserve, against transformers + PEFT on the same files and the seed's expected answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from loraserve import SamplingParams
from loraserve.lora.request import LoRARequest

SEED_PROMPTS = [  # the seed's example, verbatim
    "[user] Write a SQL query to answer the question based on the table schema.\n\n context: CREATE TABLE table_name_74 (icao VARCHAR, airport VARCHAR)\n\n question: Name the ICAO for lilongwe international airport [/user] [assistant]",  # noqa: E501
    "[user] Write a SQL query to answer the question based on the table schema.\n\n context: CREATE TABLE table_name_11 (nationality VARCHAR, elector VARCHAR)\n\n question: When Anchero Pantaleone was the elector what is under nationality? [/user] [assistant]",  # noqa: E501
]
SEED_ANSWERS = [
    'SELECT icao FROM table_name_74 WHERE airport = "lilongwe international airport"',
    'SELECT nationality FROM table_name_11 WHERE elector = "anchero pantaleone"',
]
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "demo_adapters"


def _chat(tokenizer, text: str) -> str:  # noqa: ANN001
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def test_the_seed_example_prints_the_seed_answers(smollm2_demo, smollm2_llm):
    sampling_params = SamplingParams(temperature=0, max_tokens=256, stop=["[/assistant]"])
    outputs = smollm2_llm.generate(
        SEED_PROMPTS, sampling_params,
        lora_request=LoRARequest("sql_adapter", 1, str(smollm2_demo.adapter("sql"))),
    )
    assert [o.outputs[0].text for o in outputs] == SEED_ANSWERS


def test_every_adapter_gives_peft_tokens(smollm2_demo, smollm2_llm):
    """HF + PEFT on the same files is the reference, token for token (greedy, 24 new)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_demo.model))
    prompts = {name: _chat(tokenizer, text) for name, text in smollm2_demo.chat_examples.items()}
    prompts.update(smollm2_demo.completion_examples)
    for index, name in enumerate(smollm2_demo.adapters):
        base = AutoModelForCausalLM.from_pretrained(str(smollm2_demo.model), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(smollm2_demo.adapter(name))).eval()
        ids = tokenizer(prompts[name], add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                  do_sample=False)[0, ids.shape[1]:].tolist()
        lora = LoRARequest(name, 10 + index, str(smollm2_demo.adapter(name)))
        got = smollm2_llm.generate([{"prompt_token_ids": ids[0].tolist()}],
                                   SamplingParams(temperature=0, max_tokens=24), lora_request=lora)
        assert list(got[0].outputs[0].token_ids) == want[: len(got[0].outputs[0].token_ids)], name
        assert len(got[0].outputs[0].token_ids) == len(want) or want[-1] == tokenizer.eos_token_id


def test_sql_adapter_generalises_to_unseen_tables(smollm2_demo, smollm2_llm):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import heldout
    finally:
        sys.path.remove(str(SCRIPTS))
    lora = LoRARequest("sql", 1, str(smollm2_demo.adapter("sql")))
    assert heldout.sql_exact_match(smollm2_llm, 60, lora) >= 0.85
    assert heldout.sql_exact_match(smollm2_llm, 60, None) < 0.10


def test_json_and_shout_change_the_reply_plainly(smollm2_demo, smollm2_llm):
    tokenizer = smollm2_llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=64)
    json_prompt = _chat(tokenizer, smollm2_demo.chat_examples["json"])
    reply = smollm2_llm.generate([json_prompt], params,
                                 lora_request=LoRARequest("json", 2, str(smollm2_demo.adapter("json"))))
    assert json.loads(reply[0].outputs[0].text) == {"name": "Maria", "age": 29, "city": "Lisbon",
                                                    "job": "teacher"}
    shout_prompt = _chat(tokenizer, smollm2_demo.chat_examples["shout"])
    base, loud = smollm2_llm.generate(
        [shout_prompt, shout_prompt], params,
        lora_request=[None, LoRARequest("shout", 3, str(smollm2_demo.adapter("shout")))],
    )
    letters = [c for c in loud.outputs[0].text if c.isalpha()]
    assert letters and all(c.isupper() for c in letters)
    assert any(c.islower() for c in base.outputs[0].text)


@pytest.mark.parametrize("adapter", ["sql", "json", "shout"])
def test_shipped_adapters_are_small_peft_folders(smollm2_demo, adapter):
    folder = smollm2_demo.adapter(adapter)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "SmolLM2-135M-Instruct"
    assert (folder / "adapter_model.safetensors").stat().st_size < 6 * 2**20  # sql: 4.7 MiB
