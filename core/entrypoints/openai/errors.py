"""The one place that turns exceptions into OpenAI-shaped HTTP errors.

Body: ``{"error": {"message", "type", "param", "code"}}`` where ``code`` is the HTTP status
and ``type`` is vLLM's name for it, so clients that branch on either keep working.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from loraserve.entrypoints.openai.responses import ServingResponse, json_response
from loraserve.errors import (
    AdapterDownloadError,
    InvalidRequestError,
    LoRAAdapterError,
    LoRANotFoundError,
    LoRAServeError,
)

logger = logging.getLogger(__name__)


class HTTPError(LoRAServeError):
    """An error that only exists at the HTTP layer (auth, unknown route, body too large)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotFoundError(LoRAServeError):
    """A named thing (route, adapter) does not exist: 404 with vLLM's wording."""


class GenerationError(LoRAServeError):
    """A sequence of this request failed inside the engine (finish_reason "error"): a 500 for
    this request alone; the engine has already logged the traceback."""


_STATUS_OF: list[tuple[type[BaseException], HTTPStatus]] = [
    (LoRANotFoundError, HTTPStatus.NOT_FOUND),
    (NotFoundError, HTTPStatus.NOT_FOUND),
    (LoRAAdapterError, HTTPStatus.BAD_REQUEST),
    (InvalidRequestError, HTTPStatus.BAD_REQUEST),
    (AdapterDownloadError, HTTPStatus.SERVICE_UNAVAILABLE),
    (GenerationError, HTTPStatus.INTERNAL_SERVER_ERROR),
]

_TYPE_OF = {
    HTTPStatus.BAD_REQUEST: "BadRequestError",
    HTTPStatus.UNAUTHORIZED: "AuthenticationError",
    HTTPStatus.NOT_FOUND: "NotFoundError",
    HTTPStatus.METHOD_NOT_ALLOWED: "MethodNotAllowed",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "BadRequestError",
    HTTPStatus.INTERNAL_SERVER_ERROR: "InternalServerError",
    HTTPStatus.SERVICE_UNAVAILABLE: "ServiceUnavailableError",
}


def error_body(status: HTTPStatus, message: str, param: str | None = None) -> dict:
    """The JSON error object, also sent as an SSE event when a stream fails midway."""
    err_type = _TYPE_OF.get(status, "BadRequestError" if status < 500 else "InternalServerError")
    return {"error": {"message": message, "type": err_type, "param": param, "code": int(status)}}


def status_of(exc: BaseException) -> HTTPStatus:
    """HTTP status for an exception; anything unexpected is a 500."""
    if isinstance(exc, HTTPError):
        return exc.status
    for cls, status in _STATUS_OF:
        if isinstance(exc, cls):
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def message_of(exc: BaseException) -> str:
    """The user-facing message; a 500 still says what broke, without a traceback."""
    text = str(exc)
    if isinstance(exc, GenerationError):
        return f"Internal server error: {text}"
    if status_of(exc) == HTTPStatus.INTERNAL_SERVER_ERROR:
        return f"Internal server error: {type(exc).__name__}: {text}"
    return text


def log_failure(what: str, exc: BaseException) -> None:
    """A 5xx in the log: with its traceback, unless the engine logged it already."""
    if isinstance(exc, GenerationError):
        logger.error("%s: %r", what, str(exc))
    else:
        logger.error(what, exc_info=exc)


def error_response(exc: BaseException) -> ServingResponse:
    """Map ``exc`` to a JSON response; 5xx are logged with their traceback."""
    status = status_of(exc)
    if status >= 500:
        log_failure("request failed", exc)
    param = getattr(exc, "param", None) if isinstance(exc, InvalidRequestError) else None
    return json_response(error_body(status, message_of(exc), param), status=int(status))
