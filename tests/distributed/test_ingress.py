"""The ingress's own decisions, with a fake replica handle (no cluster): the API key, the
``model`` field -> Serve's multiplexed id, the registry behind load/unload, streamed bodies."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray", reason="needs the loraserve[ray] extra")

from starlette.requests import Request  # noqa: E402

from loraserve.distributed.ingress import INGRESS, LoRAIngress  # noqa: E402
from loraserve.distributed.registry import AdapterRegistry  # noqa: E402
from loraserve.distributed.replica import REPLICA_HEADER  # noqa: E402


class FakeChunks:
    """What ``handle.options(stream=True).handle.remote(...)`` returns: a head, then bytes."""

    def __init__(self, items: list) -> None:
        self._items = iter(items)
        self.cancelled = False

    def __aiter__(self):  # noqa: ANN204
        return self

    async def __anext__(self):  # noqa: ANN204
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, object]] = []  # (adapter, method, path, body)
        self.answers: list[list] = []
        self._adapter = ""

    def options(self, stream: bool, multiplexed_model_id: str) -> FakeHandle:
        assert stream
        self._adapter = multiplexed_model_id
        return self

    @property
    def handle(self) -> FakeHandle:
        return self

    def remote(self, method: str, path: str, body: object) -> FakeChunks:
        self.sent.append((self._adapter, method, path, body))
        return FakeChunks(self.answers.pop(0) if self.answers else
                          [(200, {"Content-Type": "application/json", REPLICA_HEADER: "r1"}),
                           b"{}"])


def request(method: str, path: str, body: object = None, key: str | None = None) -> Request:
    raw = json.dumps(body).encode() if body is not None else b""
    headers = [(b"content-type", b"application/json")]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))

    async def receive() -> dict:
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request({"type": "http", "method": method, "path": path, "headers": headers,
                    "query_string": b""}, receive)


@pytest.fixture
def ingress(tmp_path):
    handle = FakeHandle()
    cls = LoRAIngress.func_or_class
    return cls(handle, ["base", "base-alias"], "secret", str(tmp_path)), handle


async def test_v1_routes_need_the_key_and_others_do_not(ingress):
    app, handle = ingress
    denied = await app(request("POST", "/v1/completions", {"model": "sql"}))
    assert denied.status_code == 401 and denied.headers[REPLICA_HEADER] == INGRESS
    assert handle.sent == []
    assert (await app(request("GET", "/health"))).status_code == 200
    allowed = await app(request("POST", "/v1/completions", {"model": "sql"}, key="secret"))
    assert allowed.status_code == 200 and allowed.headers[REPLICA_HEADER] == "r1"


async def test_adapters_become_the_multiplexed_id_and_base_names_none(ingress):
    app, handle = ingress
    for model in ("sql", "base", "base-alias", None):
        await app(request("POST", "/v1/chat/completions", {"model": model}, key="secret"))
    assert [adapter for adapter, *_ in handle.sent] == ["sql", "", "", ""]
    bad = await app(Request({"type": "http", "method": "POST", "path": "/v1/completions",
                             "headers": [(b"authorization", b"Bearer secret")],
                             "query_string": b""},
                            lambda: _body(b"{not json")))
    assert bad.status_code == 400 and len(handle.sent) == 4  # never reached a replica


async def _body(raw: bytes) -> dict:
    return {"type": "http.request", "body": raw, "more_body": False}


async def test_load_is_recorded_after_one_replica_accepts_it_and_unload_after(ingress, tmp_path):
    app, handle = ingress
    registry = AdapterRegistry(tmp_path)
    handle.answers.append([(400, {"Content-Type": "application/json"}), b"{}"])
    body = {"lora_name": "sql", "lora_path": str(tmp_path)}
    assert (await app(request("POST", "/v1/load_lora_adapter", body, key="secret"))).status_code == 400
    assert registry.entries() == {}  # refused by the replica: not recorded
    assert (await app(request("POST", "/v1/load_lora_adapter", body, key="secret"))).status_code == 200
    assert registry.entries()["sql"][0] == str(tmp_path)
    again = await app(request("POST", "/v1/load_lora_adapter", body, key="secret"))
    assert again.status_code == 400 and len(handle.sent) == 2  # refused at the ingress
    gone = await app(request("POST", "/v1/unload_lora_adapter", {"lora_name": "sql"}, key="secret"))
    assert gone.status_code == 200 and registry.entries()["sql"][0] is None
    missing = await app(request("POST", "/v1/unload_lora_adapter", {"lora_name": "sql"},
                                key="secret"))
    assert missing.status_code == 404
    by_id = await app(request("POST", "/v1/unload_lora_adapter", {"lora_int_id": 3}, key="secret"))
    assert by_id.status_code == 400 and "lora_name" in json.loads(by_id.body)["error"]["message"]


async def test_a_streamed_answer_passes_through_and_closing_cancels_the_replica(ingress):
    app, handle = ingress
    chunks = FakeChunks([(200, {"Content-Type": "text/event-stream", REPLICA_HEADER: "r2"}),
                         b"data: 1\n\n", b"data: [DONE]\n\n"])
    handle.remote = lambda *args: chunks
    response = await app(request("POST", "/v1/completions", {"stream": True}, key="secret"))
    assert response.headers[REPLICA_HEADER] == "r2"
    body = b"".join([chunk async for chunk in response.body_iterator])
    assert body == b"data: 1\n\ndata: [DONE]\n\n" and chunks.cancelled
