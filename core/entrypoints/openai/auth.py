"""The API key rule, for every front end: each ``/v1`` route needs ``Authorization: Bearer
<key>``; the others (/health, /metrics, /tokenize, /invocations, ...) do not, as in vLLM."""

from __future__ import annotations

import hmac
from http import HTTPStatus

from loraserve.entrypoints.openai.errors import HTTPError


def needs_key(path: str, method: str) -> bool:
    """``path`` as the core's routes spell it (without a proxy's prefix)."""
    return path.startswith("/v1") and method != "OPTIONS"


def check_key(authorization: bytes, api_key: str) -> None:
    """Raise the 401 unless the header's bytes are exactly ``Bearer <key>``; compared as
    bytes, so a header that is not UTF-8 is a 401 rather than an encoding error."""
    if not hmac.compare_digest(authorization, f"Bearer {api_key}".encode()):
        raise HTTPError(
            HTTPStatus.UNAUTHORIZED,
            "Unauthorized: send the server's API key as 'Authorization: Bearer <key>'",
        )
