"""Token log-probabilities in OpenAI's two response shapes (legacy completions and chat).

-inf would not survive JSON, so it is sent as -9999.0, as OpenAI and vLLM do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loraserve.logprobs import Logprob, PromptLogprobs, SampleLogprobs

_FLOOR = -9999.0


def _value(entry: Logprob) -> float:
    return max(entry.logprob, _FLOOR)


def _text(entry: Logprob) -> str:
    return entry.decoded_token or ""


def completion_logprobs(
    token_ids: list[int],
    steps: PromptLogprobs,
    text_offset: int = 0,
    decode: Callable[[list[int]], str] | None = None,
) -> dict[str, Any]:
    """``choices[].logprobs`` of /v1/completions: per token its text, logprob and the top-N
    (with the token itself); offsets count characters from ``text_offset``. A None step (an
    echoed prompt's first token) has no logprob; ``decode`` gives its text."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for token_id, entries in zip(token_ids, steps):
        if entries is None:
            text, value, top = decode([token_id]) if decode else "", None, None
        else:
            text, value = _text(entries[token_id]), _value(entries[token_id])
            top = {_text(e): _value(e) for e in entries.values()}
        offsets.append(text_offset)
        text_offset += len(text)
        tokens.append(text)
        token_logprobs.append(value)
        top_logprobs.append(top)
    return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens,
            "top_logprobs": top_logprobs}


def vllm_prompt_logprobs(steps: PromptLogprobs) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's ``prompt_logprobs``: per prompt token None or ``{token id: {logprob, rank,
    decoded_token}}``."""
    return [
        None if entries is None else {
            str(token_id): {"logprob": _value(e), "rank": e.rank, "decoded_token": e.decoded_token}
            for token_id, e in entries.items()
        }
        for entries in steps
    ]


def chat_logprobs(token_ids: list[int], steps: SampleLogprobs, top: int) -> dict[str, Any]:
    """``choices[].logprobs`` of /v1/chat/completions: ``content``, one entry per token, each
    with its ``top`` most likely alternatives, most likely first."""
    content = []
    for token_id, entries in zip(token_ids, steps):
        ranked = sorted(entries.values(), key=lambda e: e.rank)[:top]
        content.append({**_chat_entry(entries[token_id]),
                        "top_logprobs": [_chat_entry(e) for e in ranked]})
    return {"content": content}


def _chat_entry(entry: Logprob) -> dict[str, Any]:
    text = _text(entry)
    return {"token": text, "logprob": _value(entry), "bytes": list(text.encode("utf-8"))}
