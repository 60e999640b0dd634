"""Output text and stop strings: the text never includes a stop string or the EOS token."""

from __future__ import annotations

from loraserve.engine.sequence import Sequence


def update_text(seq: Sequence, tokenizer, drop_last: bool = False) -> bool:
    """Decode ``seq``'s output; True if a stop string appeared (the text is cut before it).

    ``drop_last`` leaves out the final token (an EOS token is never part of the text).
    """
    previous = len(seq.text)
    ids = seq.output_token_ids[:-1] if drop_last else seq.output_token_ids
    seq.text = tokenizer.decode(ids, skip_special_tokens=True)
    stops = seq.params.stop
    if not stops:
        return False
    window = max(len(s) for s in stops)
    start = max(0, previous - window)
    hits = [i for i in (seq.text.find(s, start) for s in stops) if i != -1]
    if not hits:
        return False
    seq.text = seq.text[: min(hits)]
    return True
