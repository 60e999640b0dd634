"""Output text and stop strings: the text never includes a stop string or the EOS token."""

from __future__ import annotations

from loraserve.engine.sequence import Sequence


def update_text(
    seq: Sequence, tokenizer, drop_last: bool = False, find_stop: bool = True
) -> str | None:
    """Decode ``seq``'s output; the stop string that appeared in the new text, if one did.

    The text is cut before the stop string (or after it, with ``include_stop_str_in_output``).
    ``drop_last`` leaves out the final token (an EOS or stop token is never part of the text);
    without ``find_stop`` the text is only decoded (``min_tokens`` not reached yet).
    """
    previous = len(seq.text)
    ids = seq.output_token_ids[:-1] if drop_last else seq.output_token_ids
    seq.text = tokenizer.decode(ids, skip_special_tokens=True)
    stops = seq.params.stop
    if not stops or not find_stop:
        return None
    window = max(len(s) for s in stops)
    start = max(0, previous - window)
    hits = [(i, s) for s in stops if (i := seq.text.find(s, start)) != -1]
    if not hits:
        return None
    at, stop = min(hits)
    seq.text = seq.text[: at + len(stop) if seq.params.include_stop_str_in_output else at]
    return stop
