"""The request parser under fuzzing: any JSON body on either generation route is answered with
a 2xx or a 4xx, never a 500 (a stream never carries a 5xx error event), and the server keeps
serving. Bodies are valid ones with up to three fields replaced by junk (wrong types, NaN/inf,
huge integers, deep nesting, lone surrogates, empty or huge strings) or removed;
``max_tokens`` is always 1-2 or invalid, so the engine does little work."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_harness import BASE, RunningServer
from openai_harness import http as plain_http


class Raw(str):
    """JSON text written into the body as is: what ``json.dumps`` cannot or will not write."""


def encode(value: object) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(encode(v) for v in value) + "]"
    return json.dumps(value)  # floats: NaN and Infinity come out as JSON's non-standard tokens


def _deep(levels: int) -> Raw:
    return Raw("[" * levels + "]" * levels)


# JSON values of every kind, the awkward ones often: lone surrogates (hypothesis leaves them
# out by default), int64's edges, non-finite and overflowing numbers, deep nesting, big strings
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=24)
EDGE_INTS = st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
                             2**64, 10**30, -(10**30)])
SPECIALS = st.sampled_from([
    Raw("1e400"), Raw("-1e400"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e-400"),
    Raw("9" * 400), Raw("-" + "9" * 400), Raw("9" * 5000), Raw("1e308"), Raw("-0.0"),
    _deep(40), _deep(900), _deep(100_000), "", "x" * 200_000, "\u00e9" * 60_000, "\ud800",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), EDGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True), ANY_TEXT, SPECIALS,
)
JUNK = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=8,
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Valid values, most of the time accepted together; each body then gets 0-3 fields replaced
# by junk. max_tokens stays 1-2 or becomes invalid: a valid large one (or none, which in chat
# means the whole context) would make the engine do real work for each example.
TEXT = st.text(max_size=24)
TOKEN_IDS = st.lists(st.integers(0, 300), min_size=1, max_size=6)
NUMBER = st.one_of(st.floats(-2, 2), st.integers(-2, 2))
SAMPLING = {
    "model": st.sampled_from([BASE, "a1", "a2", "r1", "no-such-adapter", "../etc"]),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, 50),
    "seed": st.one_of(st.integers(-10, 10), st.integers(-(2**63), 2**63 - 1)),
    "n": st.integers(1, 3),
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=3)),
    "stop_token_ids": st.lists(st.integers(0, 300), max_size=3),
    "ignore_eos": st.booleans(),
    "include_stop_str_in_output": st.booleans(),
    "presence_penalty": NUMBER,
    "frequency_penalty": NUMBER,
    "repetition_penalty": st.floats(0.5, 2),
    "min_tokens": st.integers(0, 1),
    "logit_bias": st.dictionaries(st.integers(0, 300).map(str), st.floats(-100, 100), max_size=3),
    "user": TEXT,
}
COMPLETION = {
    **SAMPLING,
    "prompt": st.one_of(TEXT.filter(bool), st.lists(TEXT, min_size=1, max_size=3), TOKEN_IDS,
                        st.lists(TOKEN_IDS, min_size=1, max_size=3)),
    "logprobs": st.integers(0, 3),
    "echo": st.booleans(),
    "prompt_logprobs": st.integers(0, 2),
}
MESSAGE = st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "system"]),
    "content": st.one_of(TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                               "text": TEXT}), max_size=2)),
})
CHAT = {
    **SAMPLING,
    "messages": st.lists(MESSAGE, min_size=1, max_size=3),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 3),
    "add_generation_prompt": st.booleans(),
    "chat_template_kwargs": st.dictionaries(st.sampled_from(["enable_thinking", "x"]), JUNK,
                                            max_size=2),
}
JUNK_FOR = {
    "max_tokens": JUNK.filter(lambda v: v is not None and not (_is_int(v) and v > 2)),
    "max_completion_tokens": JUNK.filter(lambda v: not (_is_int(v) and v > 2)),
    "n": JUNK.filter(lambda v: not (_is_int(v) and 3 < v <= 128)),
}


@st.composite
def bodies(draw: st.DrawFn, required: str, fields: dict[str, st.SearchStrategy]) -> object:
    """A valid body, then 0-3 of its fields (or new ones) replaced with junk or removed; or
    junk alone."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)
    optional = {name: value for name, value in fields.items() if name != required}
    body = draw(st.fixed_dictionaries({"max_tokens": st.integers(1, 2), required: fields[required]},
                                      optional=optional))
    if draw(st.booleans()):
        body["stream"] = True
        body.pop("prompt_logprobs", None)  # vLLM refuses it with a stream
        if draw(st.booleans()):
            body["stream_options"] = {"include_usage": draw(st.booleans())}
    if "top_logprobs" in body:
        body["logprobs"] = True
    names = sorted({*fields, "stream", "stream_options", "max_tokens", "max_completion_tokens",
                    "best_of", "suffix", "extra"})
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(names))
        if draw(st.integers(0, 5)) == 0:
            body.pop(name, None)
        else:
            body[name] = draw(JUNK_FOR.get(name, JUNK))
    return body


def post(server: RunningServer, path: str, text: str) -> tuple[int, list[dict]]:
    """The status and, for a stream, every event's JSON (a whole answer is one "event")."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", path, body=text.encode("utf-8", "surrogatepass"),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read().decode("utf-8", "replace")
    finally:
        conn.close()
    if response.getheader("Content-Type", "").startswith("text/event-stream"):
        events = [line.removeprefix("data: ") for line in payload.splitlines() if line]
        return response.status, [json.loads(e) for e in events if e != "[DONE]"]
    return response.status, [json.loads(payload)] if payload else []


def check(server: RunningServer, path: str, body: object) -> None:
    text = encode(body)
    status, events = post(server, path, text)
    assert status < 500, (status, events, text[:2000])
    errors = [e["error"] for e in events if isinstance(e, dict) and "error" in e]
    assert all(e["code"] < 500 for e in errors), (errors, text[:2000])


FUZZ = settings(max_examples=150, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("path, required, fields", [
    ("/v1/completions", "prompt", COMPLETION),
    ("/v1/chat/completions", "messages", CHAT),
])
def test_any_body_is_answered_without_a_server_error(server: RunningServer, path, required,
                                                     fields):
    @FUZZ
    @given(bodies(required, fields))
    def run(body: object) -> None:
        check(server, path, body)

    run()
    assert plain_http("GET", f"{server.url}/health")[0] == 200
