"""LLM.chat, LLM.generate's progress bar and RequestOutput.lora_request, as in vLLM; chat
prompts are checked against transformers' own chat template rendering."""

from __future__ import annotations

import pytest

from loraserve import LLM, SamplingParams
from loraserve.errors import InvalidRequestError
from loraserve.lora.request import LoRARequest

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
CONVERSATION = [
    {"role": "system", "content": "You answer in SQL."},
    {"role": "user", "content": "all users"},
]


@pytest.fixture(scope="module")
def llm(llama_dir, adapter_dirs):
    return LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=16)


@pytest.fixture(scope="module")
def hf_tokenizer(llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(llama_dir))


def test_chat_renders_the_tokenizers_template_and_generates(llm, hf_tokenizer):
    out = llm.chat(CONVERSATION, GREEDY, use_tqdm=False)
    assert len(out) == 1
    expected = hf_tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
    assert out[0].prompt_token_ids == list(expected)
    generated = llm.generate({"prompt_token_ids": list(expected)}, GREEDY, use_tqdm=False)
    assert out[0].outputs[0].token_ids == generated[0].outputs[0].token_ids


def test_chat_continue_final_message_matches_transformers(llm, hf_tokenizer):
    conversation = [*CONVERSATION, {"role": "assistant", "content": "SELECT * FROM"}]
    out = llm.chat(conversation, GREEDY, add_generation_prompt=False,
                   continue_final_message=True, use_tqdm=False)
    expected = hf_tokenizer.apply_chat_template(conversation, add_generation_prompt=False,
                                                continue_final_message=True, tokenize=True,
                                                return_dict=False)
    assert out[0].prompt_token_ids == list(expected)
    assert out[0].prompt.endswith("SELECT * FROM")
    with pytest.raises(InvalidRequestError, match="cannot both be True"):
        llm.chat(conversation, GREEDY, continue_final_message=True, use_tqdm=False)


def test_chat_takes_a_list_of_conversations_a_template_and_kwargs(llm, hf_tokenizer):
    second = [{"role": "user", "content": "count orders"}]
    template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                "{% if add_generation_prompt %}<{{ reply_as }}>{% endif %}")
    outs = llm.chat([CONVERSATION, second], GREEDY, chat_template=template,
                    chat_template_kwargs={"reply_as": "bot"}, use_tqdm=False)
    assert [o.prompt for o in outs] == [
        "<system>You answer in SQL.<user>all users<bot>", "<user>count orders<bot>"]
    for out in outs:
        assert out.prompt_token_ids == hf_tokenizer.encode(out.prompt, add_special_tokens=False)


def test_outputs_name_the_lora_request_that_served_them(llm, adapter_dirs):
    sql = LoRARequest("sql", 1, str(adapter_dirs["sql"]))
    outs = llm.generate(["select", "hello"], GREEDY, lora_request=[sql, None], use_tqdm=False)
    assert outs[0].lora_request.lora_name == "sql"
    assert outs[0].lora_request.lora_path == str(adapter_dirs["sql"])
    assert outs[1].lora_request is None
    chats = llm.chat(CONVERSATION, GREEDY, lora_request="sql", use_tqdm=False)
    assert chats[0].lora_request.lora_name == "sql"


def test_generate_shows_a_progress_bar_unless_told_not_to(llm, capsys):
    llm.generate(["a", "b", "c"], GREEDY)  # vLLM's default: a bar over prompts
    err = capsys.readouterr().err
    assert "Processed prompts" in err and "3/3" in err and "est. speed input" in err
    llm.generate(["a", "b"], GREEDY, use_tqdm=False)
    llm.chat(CONVERSATION, GREEDY, use_tqdm=False)
    assert "Processed prompts" not in capsys.readouterr().err
    llm.chat(CONVERSATION, GREEDY)
    assert "1/1" in capsys.readouterr().err


def test_use_tqdm_may_be_the_bar_class(llm):
    from tqdm import tqdm

    made = []

    def bar(**kwargs):
        made.append(kwargs)
        return tqdm(**{**kwargs, "disable": True})

    llm.generate(["a", "b"], GREEDY, use_tqdm=bar)
    assert made[0]["total"] == 2 and made[0]["desc"] == "Processed prompts"
