"""lm-eval's ``local-completions`` against a live server started with
``--enable-tokenizer-info-endpoint``, without a ``tokenizer=``: it detects the server's own
tokenizer (``/tokenizer_info``, ``/tokenize``, ``/detokenize``) and its log-likelihoods
equal transformers' on the same model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from openai_harness import BASE, RunningServer, base_model_server

pytest.importorskip("lm_eval")

PAIRS = [("The capital of France is", " Paris"), ("1, 2, 3,", " 4, 5")]


@pytest.fixture(scope="module")
def tokenizer_info_server(llama_dir: Path) -> Iterator[RunningServer]:
    with base_model_server(llama_dir, enable_tokenizer_info_endpoint=True) as running:
        yield running


def test_tokenizer_info_is_off_unless_enabled(server: RunningServer):
    from openai_harness import http

    status, _, _ = http("GET", f"{server.url}/tokenizer_info")
    assert status == 404


def test_local_completions_uses_the_server_tokenizer(tokenizer_info_server, llama_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = LocalCompletionsAPI(base_url=f"{tokenizer_info_server.url}/v1/completions", model=BASE,
                             num_concurrent=1, max_retries=1)
    assert lm.tokenizer_backend == "remote"
    hf_tokenizer = AutoTokenizer.from_pretrained(str(llama_dir))
    text = "".join(PAIRS[0])
    assert lm.tok_encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)

    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]
    got = lm.loglikelihood(requests, disable_tqdm=True)

    model = AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32).eval()
    for (context, continuation), (logprob, _) in zip(PAIRS, got):
        ctx = lm.tok_encode(context)
        cont = lm.tok_encode(context + continuation)[len(ctx):]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logits = model(ids).logits.log_softmax(-1)[0]
        want = sum(logits[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert logprob == pytest.approx(want, abs=1e-3)
