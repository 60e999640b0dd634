"""Decoding request bodies, and the tests every value passes before it can reach C code
(torch, the tokenizer): finite numbers, integers within int64, valid Unicode (the request
models' field types in ``request_types`` apply them). Messages quote values through
``show``, which bounds them however large or deep they are."""

from __future__ import annotations

import json
import math
import reprlib
from typing import Any

from loraserve.errors import InvalidRequestError

INT64 = (-(2**63), 2**63 - 1)  # every integer field must fit (vLLM's bound for seed)

_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 3, 60, 60, 40
_SHOW.maxlist = _SHOW.maxdict = _SHOW.maxtuple = 6


def show(value: Any) -> str:
    """A request value as error messages quote it: bounded in length and depth, so a 29 MB
    prompt or a 900-deep list is never echoed whole (nor overflows the stack)."""
    try:
        return _SHOW.repr(value)
    except (ValueError, RecursionError):  # an int too long to print, say
        return f"<{type(value).__name__}>"


def parse_json_body(raw: bytes) -> Any:
    """Decode a request body. ``NaN``/``Infinity`` tokens decode to floats, which the field
    checks refuse by name; nesting deeper than the parser's recursion limit (about 900
    levels) and integers over 4300 digits are a 400."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidRequestError("The JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise InvalidRequestError(f"Malformed JSON body: {exc}") from None


def is_text(value: str) -> bool:
    """Valid Unicode: a lone surrogate (JSON's ``"\\ud800"``) cannot reach the tokenizer."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_finite(value: int | float) -> bool:
    """Finite as a float: an integer too large for a double counts as infinite."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
