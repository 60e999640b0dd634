"""Output text grows by decoding a few ids per token and equals the tokenizer's own decode.

The reference is ``Tokenizer.decode`` of all the ids so far, for a byte-level BPE tokenizer
(the test one and SmolLM2's, read from its GGUF file), a sentencepiece-style one (Metaspace,
byte fallback) and a WordPiece one with transformers' clean-up of spaces.
"""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from loraserve import LLM, SamplingParams
from loraserve.engine.detokenizer import (
    CONTEXT_CHARS,
    INCOMPLETE,
    IncrementalDetokenizer,
    update_text,
)
from loraserve.engine.sequence import Sequence
from loraserve.testing import make_tokenizer
from loraserve.tokenizer import Tokenizer, from_tokenizer_json

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "Hello world, how are you today? I'm fine, thank you.",
    "select name from users where id = 42 order by name;",
    "don't, won't; it's 'quoted' . ! ? café naïve",
] * 4
# emoji (a ZWJ family too), CJK, accented and Greek letters: characters of 2 to 4 UTF-8 bytes,
# which byte-level and byte-fallback tokenizers split over several tokens
TEXTS = [
    "Hello café 日本語 🙂 naïve ξψζ 👩‍👩‍👧 end",
    "crème brûlée 🍮 et 日本語のお茶; Zürich, São Paulo, Ångström",
    " leading  spaces, ' quotes ' and don't . ? !\n\nnew line\ttab 🎉",
]
BYTE_LEVEL = {"test", "smollm2"}


def sentencepiece_style() -> Tokenizer:
    """Llama-2/Mistral's kind: Metaspace, byte-fallback tokens <0x00>..<0xFF> for what the
    vocabulary lacks (here CJK and emoji), a decoder that drops the first leading space."""
    trained = Backend(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    spec = json.loads(trained.to_str())["model"]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))])}
    for token in sorted(spec["vocab"], key=spec["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Backend(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return from_tokenizer_json(tok.to_str(), config)


def wordpiece_with_clean_up() -> Tokenizer:
    """A decoder that joins "##" pieces, and clean-up rules over two and three tokens (" ." and
    " ' ") that rewrite text already decoded."""
    tok = Backend(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[UNK]", "[CLS]", "[SEP]"], show_progress=False))
    config = {"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]",
              "clean_up_tokenization_spaces": True}
    return from_tokenizer_json(tok.to_str(), config)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    from loraserve.demo import smollm2
    from loraserve.model.gguf import GGUFCheckpoint

    gguf = smollm2.find_gguf()
    if gguf is None:  # CI installs it; a test that needs it must not pass without
        pytest.fail(f"{smollm2.MODEL_NAME} is not installed: {smollm2.INSTALL}")
    test_dir = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(test_dir)
    return {
        "test": Tokenizer.from_pretrained(test_dir),
        "smollm2": from_tokenizer_json(*GGUFCheckpoint(gguf).tokenizer_files()),
        "sentencepiece": sentencepiece_style(),
        "wordpiece": wordpiece_with_clean_up(),
    }


def whole_characters(tokenizer: Tokenizer, ids: list[int]) -> str:
    """``decode(ids)`` less an incomplete trailing character: less its trailing U+FFFDs, or, where
    a byte-fallback decoder shows a whole run of byte tokens as U+FFFD until the run ends on a
    character, the decode of the ids before the run's unfinished end."""
    cut = len(ids)
    while cut and tokenizer.decode(ids[:cut]).endswith(INCOMPLETE):
        cut -= 1
    return max(tokenizer.decode(ids).rstrip(INCOMPLETE), tokenizer.decode(ids[:cut]), key=len)


def with_special_tokens(tokenizer: Tokenizer, ids: list[int]) -> list[int]:
    """``ids`` with special tokens (skipped by the decode) at the start, end and middle, where
    they run longer than the context an update decodes again."""
    special = [i for i in tokenizer.all_special_ids if i is not None]
    middle = len(ids) // 2
    return [special[0], *ids[:middle], *special * 2 * CONTEXT_CHARS, *ids[middle:], special[-1]]


@pytest.mark.parametrize("kind", ["test", "smollm2", "sentencepiece", "wordpiece"])
def test_text_after_each_token_is_the_decode_so_far_less_an_incomplete_character(tokenizers, kind):
    tokenizer = tokenizers[kind]
    for text in TEXTS:
        ids = with_special_tokens(tokenizer, tokenizer.encode(text, add_special_tokens=False))
        full = tokenizer.decode(ids, skip_special_tokens=True)
        detokenizer = IncrementalDetokenizer(skip_special_tokens=True)
        for end in range(1, len(ids) + 1):
            so_far = detokenizer.update(tokenizer, ids, end)
            assert so_far == whole_characters(tokenizer, ids[:end]), (kind, text, end)
            if kind != "wordpiece":  # its clean-up rewrites decoded text: " ' " becomes "'"
                assert full.startswith(so_far)  # never taken back
        assert detokenizer.update(tokenizer, ids, len(ids), final=True) == full


def test_the_split_characters_really_are_split(tokenizers):
    """The texts above test what they mean to: a character spans several tokens."""
    for kind in ("test", "smollm2", "sentencepiece"):
        tokenizer = tokenizers[kind]
        ids = tokenizer.encode(TEXTS[0], add_special_tokens=False)
        assert any(tokenizer.decode(ids[:end]).endswith(INCOMPLETE) for end in range(len(ids)))


@pytest.mark.parametrize("kind", ["test", "smollm2", "sentencepiece", "wordpiece"])
def test_random_ids_end_as_the_whole_decode(tokenizers, kind):
    """Any ids (invalid UTF-8, special tokens anywhere): the last update gives the decode
    exactly; byte-level text is the decode less its trailing U+FFFDs at every step."""
    tokenizer, rng = tokenizers[kind], random.Random(0)
    special = [i for i in tokenizer.all_special_ids if i is not None]
    for _ in range(10):
        ids = [rng.choice(special) if rng.random() < 0.1 else rng.randrange(len(tokenizer))
               for _ in range(120)]
        detokenizer = IncrementalDetokenizer()
        for end in range(1, len(ids) + 1):
            so_far = detokenizer.update(tokenizer, ids, end)
            if kind in BYTE_LEVEL:
                assert so_far == tokenizer.decode(ids[:end]).rstrip(INCOMPLETE)
        assert detokenizer.update(tokenizer, ids, len(ids), final=True) == tokenizer.decode(ids)


def count_decoded_ids(tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap ``tokenizer.decode``, the one entry point the engine decodes through."""
    counted = [0]
    decode = tokenizer.decode

    def counting(ids, skip_special_tokens: bool = True) -> str:
        counted[0] += 1 if isinstance(ids, int) else len(ids)
        return decode(ids, skip_special_tokens=skip_special_tokens)

    monkeypatch.setattr(tokenizer, "decode", counting)
    return counted


@pytest.mark.parametrize("kind", ["test", "smollm2"])
def test_a_400_token_output_decodes_a_number_of_ids_linear_in_its_length(
    tokenizers, kind, monkeypatch
):
    """The engine updates the text at every step (a stop string, or streaming): 400 tokens
    decoded in full at each step would be 400 * 401 / 2 = 80,200 ids."""
    tokenizer = tokenizers[kind]
    ids = tokenizer.encode(" ".join(TEXTS) * 20, add_special_tokens=False)[:400]
    seq = Sequence(0, "r", 0, [1, 2, 3], SamplingParams(stop=["\x00never"]), None, None)
    counted = count_decoded_ids(tokenizer, monkeypatch)
    for token in ids:
        seq.output_token_ids.append(token)
        assert update_text(seq, tokenizer, final=len(seq.output_token_ids) == 400) is None
    assert counted[0] < 12 * 400
    monkeypatch.undo()
    assert seq.text == tokenizer.decode(ids)


def test_the_last_update_shows_an_incomplete_character_and_drops_the_eos(tokenizers):
    tokenizer = tokenizers["test"]
    ids = tokenizer.encode("ab 日", add_special_tokens=False)
    assert tokenizer.decode(ids[:-1]).endswith(INCOMPLETE)
    seq = Sequence(0, "r", 0, [1], SamplingParams(), None, None)
    for token in ids[:-1]:
        seq.output_token_ids.append(token)
        update_text(seq, tokenizer)
    assert seq.text == "ab "  # the first bytes of 日 wait for the rest
    seq.output_token_ids.append(tokenizer.eos_token_id)
    update_text(seq, tokenizer, drop_last=True)  # the output ended: they are shown
    assert seq.text == tokenizer.decode(ids[:-1]) == f"ab {INCOMPLETE}"


def test_a_stop_string_counts_only_where_it_ends_in_new_text(tokenizers):
    """As in vLLM: a stop string that ended within the first ``min_tokens`` tokens never counts,
    also when it ends right where the text stood (a search from len(stop) back would find it)."""
    tokenizer = tokenizers["test"]
    first, rest = tokenizer.encode("say", add_special_tokens=False), tokenizer.encode(" say now", add_special_tokens=False)
    params = SamplingParams(stop=["ay"], min_tokens=len(first))
    seq = Sequence(0, "r", 0, [1], params, None, None)
    for count, token in enumerate(first + rest, 1):
        seq.output_token_ids.append(token)
        if update_text(seq, tokenizer, find_stop=count > params.min_tokens) is not None:
            break
    assert seq.text == "say s"  # cut at the second "ay", not the first


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), seed=7)


def test_streamed_engine_text_follows_the_decode_and_decodes_linearly(llm, monkeypatch):
    """A streaming engine (``detokenize_every_step``, as AsyncLLMEngine sets) over the tiny
    model: after every step the text is the decode of the token ids so far less an incomplete
    character, at the end exactly the decode, and the ids decoded grow linearly."""
    engine, tokenizer = llm.engine, llm.get_tokenizer()
    monkeypatch.setattr(engine, "detokenize_every_step", True)
    prompt, max_tokens = tokenizer.encode("hello world"), 120
    counted = count_decoded_ids(tokenizer, monkeypatch)
    engine.add_request("stream", prompt, SamplingParams(
        temperature=1.0, seed=3, max_tokens=max_tokens, ignore_eos=True))
    steps = []
    while engine.has_unfinished_requests():
        steps += [out.outputs[0] for out in engine.step()]
    decoded = counted[0]
    monkeypatch.undo()
    final = steps[-1]
    assert final.finish_reason == "length" and len(final.token_ids) == max_tokens
    assert final.text == tokenizer.decode(final.token_ids, skip_special_tokens=True)
    for step in steps[:-1]:
        assert step.text == whole_characters(tokenizer, step.token_ids)
    assert any(tokenizer.decode(s.token_ids).endswith(INCOMPLETE) for s in steps)  # split ones
    assert decoded < 12 * max_tokens  # each step in full: max_tokens * (max_tokens + 1) / 2
