"""Token log-probabilities in OpenAI's two response shapes (legacy completions and chat).

-inf would not survive JSON, so it is sent as -9999.0, as OpenAI and vLLM do.
"""

from __future__ import annotations

from typing import Any

from loraserve.logprobs import Logprob, SampleLogprobs

_FLOOR = -9999.0


def _value(entry: Logprob) -> float:
    return max(entry.logprob, _FLOOR)


def _text(entry: Logprob) -> str:
    return entry.decoded_token or ""


def completion_logprobs(
    token_ids: list[int], steps: SampleLogprobs, text_offset: int = 0
) -> dict[str, Any]:
    """``choices[].logprobs`` of /v1/completions: per token its text, logprob and the top-N
    (with the sampled token); offsets count characters from ``text_offset``."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for token_id, entries in zip(token_ids, steps):
        sampled = entries[token_id]
        offsets.append(text_offset)
        text_offset += len(_text(sampled))
        tokens.append(_text(sampled))
        token_logprobs.append(_value(sampled))
        top_logprobs.append({_text(e): _value(e) for e in entries.values()})
    return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens,
            "top_logprobs": top_logprobs}


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
