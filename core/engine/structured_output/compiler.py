"""A structured-outputs spec to a validated llguidance grammar, cached by spec.

Building the grammar engine's view of the vocabulary takes about a second, so it is made
on the first constrained request, never at start-up; compiling runs wherever the caller is
(the server calls it off the step thread and off the event loop).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from loraserve.errors import InvalidRequestError
from loraserve.sampling_params import StructuredOutputsParams

if TYPE_CHECKING:
    import llguidance

CACHE_SIZE = 256  # compiled grammars kept, least recently used dropped first
_NO_WHITESPACE = {"whitespace_flexible": False}


class CompiledGrammar:
    """A grammar that compiled; ``new_matcher`` gives each sequence its own state."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._pristine = matcher  # never advanced: copied per sequence

    def new_matcher(self) -> llguidance.LLMatcher:
        return self._pristine.deep_copy()


class GrammarCompiler:
    """One per engine: the vocabulary as the grammar engine sees it, and the cache."""

    def __init__(self, tokenizer_json: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        self._tokenizer_json = tokenizer_json  # () -> str: the tokenizer.json text
        self._vocab_size = vocab_size
        self._eos_token_ids = list(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def compile(self, spec: StructuredOutputsParams) -> CompiledGrammar:
        """The spec's grammar, from the cache or compiled now; a 400 naming the problem if
        the spec is not valid or the engine cannot compile it."""
        import llguidance

        key = _cache_key(spec)
        with self._lock:
            if (hit := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                return hit
            tokenizer = self._llg_tokenizer()
        grammar = _grammar(spec)
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        matcher = None if error else llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher is None or matcher.is_error():
            reason = error or matcher.get_error()
            raise InvalidRequestError(f"The {spec.kind} constraint cannot be compiled: "
                                      f"{_first_line(reason)}")
        compiled = CompiledGrammar(matcher)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:
            import llguidance

            self._tokenizer = llguidance.LLTokenizer(
                self._tokenizer_json(), n_vocab=self._vocab_size,
                eos_token=self._eos_token_ids or None)
        return self._tokenizer


def _grammar(spec: StructuredOutputsParams) -> str:
    """The llguidance grammar text of a spec (JSON schema, regex, choice, Lark or GBNF)."""
    import llguidance
    from llguidance import grammar_from

    options = _NO_WHITESPACE if spec.disable_any_whitespace else None
    try:
        if spec.json is not None:
            schema = json.loads(spec.json) if isinstance(spec.json, str) else spec.json
            if not isinstance(schema, (dict, bool)):
                raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)
        if spec.json_object:
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"},
                                                                overrides=options)
        if spec.regex is not None:
            return grammar_from("regex", spec.regex)
        if spec.choice is not None:
            return grammar_from("choice", spec.choice)
        return grammar_from("grammar", spec.grammar)  # Lark, or GBNF as vLLM's xgrammar takes
    except Exception as exc:  # noqa: BLE001 - whatever the engine rejects is the request's fault
        raise InvalidRequestError(f"The {spec.kind} constraint is not valid: "
                                  f"{_first_line(str(exc))}") from None


def _cache_key(spec: StructuredOutputsParams) -> str:
    value = getattr(spec, spec.kind)
    if spec.kind == "json" and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass  # _grammar reports it
    return json.dumps([spec.kind, value, spec.disable_any_whitespace], sort_keys=True)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"
