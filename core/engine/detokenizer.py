"""Output text and stop strings: the text never includes a stop string or the EOS token.

The text grows by decoding a few ids per new token, so a whole generation decodes a number of
ids linear in its length (decoding the whole output at every step is quadratic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraserve.engine.sequence import Sequence
    from loraserve.tokenizer import Tokenizer

# text decoded again before the new ids: a decoder's rules (transformers' clean-up of " n't" and
# " ' ", WordPiece's "##" joins) rewrite at most 3 characters before the text a new id adds
CONTEXT_CHARS = 3
INCOMPLETE = "\ufffd"  # what a decode shows for the first bytes of a character split over tokens


class IncrementalDetokenizer:
    """``decode(ids[:end])`` kept up to date while ``ids`` grows, decoding only its last ids.

    ``text`` is the decode of the ids seen so far less a trailing incomplete character, shown
    once a later id completes it or at the ``final`` update (a byte-fallback decoder shows every
    byte of an incomplete run as U+FFFD: those wait too). Each update decodes the window, the ids
    from ``_start``: ``_shown`` is how its start decodes, already in ``text``, and the rest is
    new. The window starts where the text ended on a whole character, ``CONTEXT_CHARS`` or more
    before its end, so it decodes as it does inside the whole output.
    """

    def __init__(self, skip_special_tokens: bool = True) -> None:
        self.skip_special_tokens = skip_special_tokens
        self.text = ""
        self._start = 0  # first id of the window
        self._shown = ""  # the window's text already in ``text``
        self._whole: list[tuple[int, int]] = []  # (end, len(text)) where the text was whole
        self._context_ids = 1  # ids from _start to the end when the window last moved

    def update(self, tokenizer: Tokenizer, ids: list[int], end: int, final: bool = False) -> str:
        """Bring ``text`` up to ``ids[:end]``; ``final`` shows a trailing incomplete character
        too (the output ends there). Returns ``text``."""
        window = self._decode(tokenizer, ids[self._start : end])
        ready = window if final else window.rstrip(INCOMPLETE)
        if not ready.startswith(self._shown):
            if not final and window.endswith(INCOMPLETE):
                return self.text  # part of a byte run: shown when the run is whole
            # a decoder rewrote text it had shown (a clean-up rule): decode everything again
            self.text, self._start, self._shown, self._whole = "", 0, "", []
            window = self._decode(tokenizer, ids[:end])
            ready = window if final else window.rstrip(INCOMPLETE)
        self.text += ready[len(self._shown) :]
        self._shown = ready
        if ready == window:
            self._whole.append((end, len(self.text)))
            if end - self._start > 2 * self._context_ids:  # grown to twice its context
                self._move_window(tokenizer, ids, end)
        return self.text

    def _move_window(self, tokenizer: Tokenizer, ids: list[int], end: int) -> None:
        """Start the window at the last whole-character end ``CONTEXT_CHARS`` before the end."""
        starts = [e for e, chars in self._whole if chars <= len(self.text) - CONTEXT_CHARS]
        if starts and starts[-1] > self._start:
            self._start, self._context_ids = starts[-1], end - starts[-1]
            self._shown = self._decode(tokenizer, ids[self._start : end])
            self._whole = [(e, chars) for e, chars in self._whole if e > self._start]

    def _decode(self, tokenizer: Tokenizer, ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens) if ids else ""


def update_text(
    seq: Sequence, tokenizer: Tokenizer, drop_last: bool = False, find_stop: bool = True,
    final: bool = False,
) -> str | None:
    """Bring ``seq.text`` up to its output; the stop string that appeared in the new text, if one
    did.

    The text is cut before the stop string (or after it, with ``include_stop_str_in_output``).
    ``drop_last`` leaves out the final token (an EOS or stop token is never part of the text);
    either it or ``final`` marks the last update, which shows a trailing incomplete character.
    Without ``find_stop`` the text is only decoded (``min_tokens`` not reached yet).
    """
    previous = len(seq.text)
    end = len(seq.output_token_ids) - 1 if drop_last else len(seq.output_token_ids)
    seq.text = seq.detokenizer.update(tokenizer, seq.output_token_ids, end, drop_last or final)
    stops = seq.params.stop
    if not stops or not find_stop:
        return None
    # a stop string counts only if it ends in the new text (one inside min_tokens never does)
    start = max(0, previous - max(len(s) for s in stops) + 1)
    hits = [(i, s) for s in stops if (i := seq.text.find(s, start)) != -1]
    if not hits:
        return None
    at, stop = min(hits)
    seq.text = seq.text[: at + len(stop) if seq.params.include_stop_str_in_output else at]
    return stop
