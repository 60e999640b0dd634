"""Every tensor a step makes names the engine's device: checked on CPU with StrictDevices."""

from __future__ import annotations

import pytest
import torch

from loraserve import LLM, SamplingParams
from loraserve.lora.request import LoRARequest
from loraserve.testing.devices import ImplicitDeviceError, StrictDevices


def test_strict_devices_refuses_a_factory_without_device():
    with StrictDevices() as mode:
        torch.zeros(2, device="cpu")
        torch.as_tensor(torch.ones(1, device="cpu"))
        with pytest.raises(ImplicitDeviceError, match="torch.arange called without device="):
            torch.arange(3)
        with pytest.raises(ImplicitDeviceError):
            torch.tensor([1, 2])
    assert mode.calls == 5  # zeros, ones, as_tensor, arange, tensor
    torch.arange(3)  # the mode is gone again


def _requests(adapter_dirs):
    sql = LoRARequest("sql", 1, str(adapter_dirs["sql"]))
    chat = LoRARequest("chat", 2, str(adapter_dirs["chat"]))
    prompts = ["the quick brown fox", "select name from users", "hello world", "a b c d e"]
    params = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3,
                       prompt_logprobs=2, repetition_penalty=1.3, frequency_penalty=0.5),
        SamplingParams(temperature=0.9, seed=7, top_k=20, top_p=0.9, min_p=0.05, max_tokens=12,
                       ignore_eos=True, presence_penalty=0.4, logit_bias={5: 3.0}, min_tokens=3,
                       stop=["e"]),
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, prompt_logprobs=1,
                       stop=[" d"], bad_words=["the"]),
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=0, n=2,
                       stop_token_ids=[7]),
    ]
    return prompts, params, [sql, None, chat, sql]


def _summary(outputs):
    return [
        (out.prompt_logprobs and [None if e is None else {k: round(v.logprob, 4) for k, v in e.items()}
                                  for e in out.prompt_logprobs],
         [(c.token_ids, c.text, c.finish_reason,
           c.logprobs and [{k: round(v.logprob, 4) for k, v in e.items()} for e in c.logprobs])
          for c in out.outputs])
        for out in outputs
    ]


def test_a_full_generation_makes_no_implicit_cpu_tensor(llama_dir, adapter_dirs):
    """Base and mixed adapter rows, penalties, bias, logprobs, prompt logprobs, stop strings:
    every factory call of the steps names its device, and results do not change under the mode."""
    prompts, params, loras = _requests(adapter_dirs)
    llm = LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=16, lora_merge=False)
    # the same generation outside the mode, on an engine of its own: the reference
    want = _summary(llm.generate(prompts, params, lora_request=loras, use_tqdm=False))
    fresh = LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=16, lora_merge=False)
    with StrictDevices() as mode:
        outputs = fresh.generate(prompts, params, lora_request=loras, use_tqdm=False)
    assert mode.calls > 50  # the mode saw the steps' tensors being made
    assert _summary(outputs) == want
    assert any(c.finish_reason == "stop" for out in outputs for c in out.outputs)
    assert outputs[0].prompt_logprobs is not None and outputs[2].prompt_logprobs is not None
