"""A poison request next to running streams: refused (400) or failed alone (500 / an
"error" finish), while every stream beside it completes with exactly the text it gets alone."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from openai_harness import BASE, post_json, stream_lines

from loraserve.engine import sampler

STREAM_MODELS = [BASE, "a1", "a2", BASE, "a1", "a2", BASE, "a1"]
POISON_PROMPT = "poison pill"


def _stream_body(model: str, index: int) -> dict:
    return {"model": model, "prompt": f"bystander {index}", "max_tokens": 200, "temperature": 0,
            "ignore_eos": True, "stream": True}


def _stream_text(url: str, body: dict) -> tuple[str, list[str]]:
    _, lines = stream_lines(f"{url}/v1/completions", body)
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    return text, reasons


def _raw_post(url: str, raw: str) -> tuple[int, str]:
    """POST a body as written: JSON's NaN/Infinity tokens and overflowing numbers included."""
    request = urllib.request.Request(f"{url}/v1/completions", data=raw.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


REFUSED = [
    ('"temperature": NaN', "temperature"),
    ('"temperature": 1e400, "min_tokens": 2', "temperature"),
    ('"repetition_penalty": NaN', "repetition_penalty"),
    ('"repetition_penalty": 1e308', "repetition_penalty"),
    ('"top_p": 1e-300', "top_p"),
    ('"stop_token_ids": [99999999], "min_tokens": 2', "stop_token_ids"),
    ('"seed": 9223372036854775808', "seed"),
]


@pytest.fixture
def poisoned_sampling(monkeypatch):
    """Sampling raises for the poison prompt's rows only, as a broken processor would."""
    real = sampler._sample_row
    state = {"target": None}

    def draw(logits, seq):
        if seq.prompt_token_ids == state["target"]:
            raise RuntimeError("injected failure for one row")
        return real(logits, seq)

    monkeypatch.setattr(sampler, "_sample_row", draw)
    return state


def test_poison_next_to_eight_streams_leaves_them_untouched(server, poisoned_sampling):
    bodies = [_stream_body(model, i) for i, model in enumerate(STREAM_MODELS)]
    alone = [_stream_text(server.url, body)[0] for body in bodies]
    poisoned_sampling["target"] = list(server.engine.tokenizer.encode(POISON_PROMPT))

    results: list[tuple[str, list[str]] | None] = [None] * len(bodies)

    def run(index: int) -> None:
        results[index] = _stream_text(server.url, bodies[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while server.engine.engine.num_running < len(bodies) and time.monotonic() < deadline:
        time.sleep(0.005)  # every bystander is running before the poison arrives
    assert server.engine.engine.num_running == len(bodies)
    for fields, name in REFUSED:
        status, text = _raw_post(server.url, f'{{"prompt": "hi", "max_tokens": 4, {fields}}}')
        assert status == 400, (fields, status, text)
        assert name in json.loads(text)["error"]["message"], (fields, text)
    # a row that fails inside the engine: a 500 for it alone, and an "error" finish in a stream
    poison = {"prompt": POISON_PROMPT, "max_tokens": 4, "temperature": 0.8, "seed": 1}
    status, text = post_json(f"{server.url}/v1/completions", poison)
    assert status == 500, text
    assert "injected failure" in json.loads(text)["error"]["message"]
    _, reasons = _stream_text(server.url, {**poison, "stream": True})
    assert reasons[-1] == "error"
    assert server.engine.engine.num_running > 0  # they were still running meanwhile
    for t in threads:
        t.join(120)
    assert [r[0] for r in results] == alone
    assert all(r[1][-1] == "length" for r in results)
    status, _ = post_json(f"{server.url}/v1/completions", {"prompt": "after", "max_tokens": 2})
    assert status == 200
