"""``loraserve demo --tiny``: the offline fallback must serve visibly different adapters."""

from __future__ import annotations

import os
import signal
import subprocess

import openai
import pytest
import torch
from openai_harness import loraserve_cmd, wait_until_ready

from loraserve.demo import ADAPTER_ANSWERS, BASE_ANSWER, PRELOADED, SERVED_MODEL_NAME, ensure_demo

PROMPTS = ["Hello!", "What is the meaning of life?"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cache = tmp_path_factory.mktemp("demo_cache")
    return cache, ensure_demo(cache, tiny=True)


def test_build_is_cached(demo):
    cache, paths = demo
    stamp = (paths.model / "config.json").stat().st_mtime_ns
    assert ensure_demo(cache, tiny=True).root == paths.root
    assert (paths.model / "config.json").stat().st_mtime_ns == stamp


def test_adapters_are_peft_format_and_answer_in_their_voice(demo):
    """PEFT (the independent reference) loads our files and gives each adapter's answer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, paths = demo
    tokenizer = AutoTokenizer.from_pretrained(str(paths.model))
    expected = {None: BASE_ANSWER, **ADAPTER_ANSWERS}
    for name, answer in expected.items():
        model = AutoModelForCausalLM.from_pretrained(str(paths.model), dtype=torch.float32)
        if name is not None:
            model = PeftModel.from_pretrained(model, str(paths.adapter(name)))
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                 tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                 do_sample=False)
            assert tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == answer


def test_demo_command_serves_with_resolver(demo):
    cache, _ = demo
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    proc = subprocess.Popen(
        [*loraserve_cmd(), "demo", "--tiny", "--cache-dir", str(cache), "--port", "0"],
        cwd=cache, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = wait_until_ready(proc)
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        assert {m.id for m in api.models.list().data} == {SERVED_MODEL_NAME, *PRELOADED}
        for name in (SERVED_MODEL_NAME, *ADAPTER_ANSWERS):  # the last one via the resolver
            reply = api.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Hello!"}], temperature=0)
            expected = ADAPTER_ANSWERS.get(name, BASE_ANSWER)
            assert reply.choices[0].message.content == expected
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "curl" in out
