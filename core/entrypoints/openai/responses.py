"""What the serving core answers, in no transport's types: a status, headers, and either
the whole body as bytes or an async iterator of SSE bytes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class ByteStream(Protocol):
    """A streamed body; ``aclose`` ends the engine requests behind it, iterated or not."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@dataclass
class ServingResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: ByteStream | None = None  # set for SSE: then ``body`` is unused


def json_response(payload: Any, status: int = 200) -> ServingResponse:
    return ServingResponse(status, {"Content-Type": JSON_TYPE}, json.dumps(payload).encode())


def text_response(text: str, status: int = 200) -> ServingResponse:
    return ServingResponse(status, {"Content-Type": TEXT_TYPE}, text.encode())
