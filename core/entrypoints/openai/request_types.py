"""The field types every request model is built from, and the one conversion of a pydantic
``ValidationError`` into the 400 users see.

Each type checks its value before pydantic's own (strict) check runs, with the checks in
``request_values`` (finite, int64, valid Unicode) and messages that name the field and quote
the value through ``show``: ``'temperature' must be a finite number, got inf``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from loraserve.entrypoints.openai.request_values import INT64, is_finite, is_text, show
from loraserve.errors import InvalidRequestError

_CHECK = "loraserve"  # the error type of every check below; its context holds the detail


def refuse(detail: str) -> PydanticCustomError:
    """An error for the field being validated: its message is ``'<field>' <detail>``."""
    return PydanticCustomError(_CHECK, "{detail}", {"detail": detail})


def _kind(name: str, test: Any) -> Any:
    def check(value: Any) -> Any:
        if not test(value):
            raise refuse(f"must be {name}, got {show(value)}")
        return value
    return check


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refuse(f"must be a number, got {show(value)}")
    if not is_finite(value):
        raise refuse(f"must be a finite number, got {show(value)}")
    return float(value)


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise refuse(f"must be an integer, got {show(value)}")
    if not INT64[0] <= value <= INT64[1]:
        raise refuse(f"must be an integer in [{INT64[0]}, {INT64[1]}], got {show(value)}")
    return value


def _text(value: Any) -> Any:
    if not isinstance(value, str):
        raise refuse(f"must be a string, got {show(value)}")
    if not is_text(value):
        raise refuse("must be valid Unicode text (it has a lone surrogate)")
    return value


def is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def token_ids(name: str) -> Any:
    """A list of int64 token ids; ``name`` is what the 400 says was expected."""
    def check(value: Any) -> Any:
        if not is_token_ids(value):
            raise refuse(f"must be {name}, got {show(value)}")
        if any(not INT64[0] <= t <= INT64[1] for t in value):
            raise refuse("has token ids outside the int64 range")
        return value
    return Annotated[list[int], BeforeValidator(check)]


def _texts(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise refuse(f"must be a string or an array of strings, got {show(value)}")
    if not all(is_text(s) for s in value):
        raise refuse("must be valid Unicode text (it has a lone surrogate)")
    return value


Number = Annotated[float, BeforeValidator(_number)]
Integer = Annotated[int, BeforeValidator(_integer)]
Text = Annotated[str, BeforeValidator(_text)]
Boolean = Annotated[bool, BeforeValidator(_kind("a boolean", lambda v: isinstance(v, bool)))]
Object = Annotated[dict[str, Any],
                   BeforeValidator(_kind("an object", lambda v: isinstance(v, dict)))]
TokenIds = token_ids("an array of integers")
# a string or an array of strings, always read as the array
Texts = Annotated[list[str], BeforeValidator(_texts),
                  WithJsonSchema({"anyOf": [{"type": "string"},
                                            {"type": "array", "items": {"type": "string"}}]})]


class RequestModel(BaseModel):
    """A request body: unknown fields are ignored as OpenAI and vLLM do (every field either
    side documents is declared: implemented, or refused by ``refusals``)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    @classmethod
    def parse(cls, body: Any) -> Any:
        """The body as this model, or the 400 naming the first field at fault."""
        if not isinstance(body, dict):
            raise InvalidRequestError("The request body must be a JSON object")
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise request_error(exc) from None


def field_path(loc: tuple[Any, ...]) -> str:
    """``("messages", 0, "content")`` as users write it: ``messages[0].content``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def request_error(exc: ValidationError) -> InvalidRequestError:
    """The first error of ``exc`` as a 400 whose message and ``param`` name the field."""
    error = exc.errors(include_url=False, include_input=False)[0]
    name = field_path(error["loc"])
    if error["type"] == _CHECK:
        message = f"'{name}' {error['ctx']['detail']}"
    elif error["type"] == "missing":
        message = f"'{name}' is required"
    else:  # pydantic's own words, for a check not written above (its input left out)
        message = f"'{name}': {error['msg']}"
    return InvalidRequestError(message, param=name or None)
