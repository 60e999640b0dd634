"""Constrained decoding: a request's structured-outputs spec compiled once (off the step
thread, cached by spec), one matcher per sequence, and the per-row token masks the sampler
applies. The grammar engine is llguidance (docs/server.md says why)."""

from loraserve.engine.structured_output.compiler import CompiledGrammar, GrammarCompiler
from loraserve.engine.structured_output.masks import apply_grammar_masks

__all__ = ["CompiledGrammar", "GrammarCompiler", "apply_grammar_masks"]
