"""``loraserve.tokenizer`` against transformers' AutoTokenizer on the same local directories.

Each tokenizer is built here from a fixed corpus (no hub): the test tokenizer, a Llama-3-style
one (byte-level BPE, a post-processor that adds BOS, a chat template with ``raise_exception``),
a WordPiece one with ``clean_up_tokenization_spaces``, and a directory AutoTokenizer must load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend
from transformers import AutoTokenizer

from loraserve.testing import make_tiny_model, make_tokenizer
from loraserve.tokenizer import Tokenizer, TransformersTokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "select name from users where id = 42 order by name;",
    "Hello world, how are you today? I'm fine, thank you.",
    "Ünïcödé text: café, naïve, 日本語, emoji 🙂 and tabs\tand\nnewlines",
    "0123456789 +-*/=()[]{} <>!?.,;:'\"",
] * 4
TEXTS = [
    "hello world",
    " leading space and trailing ",
    "Hello world, how are you today? I'm fine .",
    "café 日本語 🙂 unseen: ξψζ",
    "line one\n\nline two\ttab",
    "",
]
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|reserved_special_token_0|>",
]
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {{- "You may call these functions:\\n" }}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\\n\\n" }}{%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'ignored' %}{% continue %}{% endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {%- if message['role'] == 'assistant' %}
        {%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}
    {%- else %}
        {{- message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
CHATS = [
    [{"role": "user", "content": "Hello <b>&</b> \"there\""}],
    [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": None},
        {"role": "user", "content": "café 日本語?"},
    ],
]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"a": "<int>"}}}]


def train_bpe(split_regex: str | None = None) -> Backend:
    tok = Backend(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_regex is None)
    if split_regex is None:
        tok.pre_tokenizer = byte_level
    else:
        split = pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def write_config(directory: Path, config: dict, name: str = "tokenizer_config.json") -> None:
    (directory / name).write_text(json.dumps(config, indent=2))


def make_llama3_tokenizer(directory: Path) -> Path:
    """Saved the way Meta's Llama-3 repos are: tokenizer.json with a BOS-adding
    TemplateProcessing, the class PreTrainedTokenizerFast, clean-up on (ignored for BPE)."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(LLAMA3_SPLIT)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos)],
        ),
    ])
    tok.save(str(directory / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                   "rstrip": False, "single_word": False, "special": True}
        for t in LLAMA3_SPECIAL
    }
    write_config(directory, {
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": LLAMA3_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    return directory


def make_wordpiece_tokenizer(directory: Path) -> Path:
    """A non-BPE model, where transformers does apply clean_up_tokenization_spaces; its
    special tokens are only in the legacy special_tokens_map.json, "[MASK]" not in the vocab."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = Backend(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[CLS]", "[SEP]"],
                                        show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    tok.save(str(directory / "tokenizer.json"))
    write_config(directory, {"clean_up_tokenization_spaces": True,
                             "tokenizer_class": "PreTrainedTokenizerFast"})
    write_config(directory, {"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]",
                             "mask_token": {"content": "[MASK]", "lstrip": True}},
                 "special_tokens_map.json")
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    test_dir = root / "test"
    make_tokenizer(test_dir)
    bos_dir = root / "add_bos"
    make_tokenizer(bos_dir)
    config = json.loads((bos_dir / "tokenizer_config.json").read_text())
    write_config(bos_dir, {**config, "add_bos_token": True, "add_eos_token": False})
    return {
        "test": test_dir,
        "llama3": make_llama3_tokenizer(root / "llama3"),
        "add_bos": bos_dir,
        "wordpiece": make_wordpiece_tokenizer(root / "wordpiece"),
    }


KINDS = ["test", "llama3", "add_bos", "wordpiece"]


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_and_special_tokens_equal_autotokenizer(dirs, kind):
    ours, hf = Tokenizer.from_pretrained(dirs[kind]), AutoTokenizer.from_pretrained(str(dirs[kind]))
    assert type(ours) is Tokenizer
    texts = [*TEXTS, *(f"{t} in the middle" for t in hf.all_special_tokens)]
    for text in texts:
        ids = ours.encode(text)
        assert ids == hf.encode(text), text
        assert ours.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert len(ours) == len(hf)
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name
    assert ours.all_special_ids == hf.all_special_ids
    assert ours.decode(ours.all_special_ids) == hf.decode(hf.all_special_ids, skip_special_tokens=True)


def test_llama3_encode_starts_with_bos_and_add_bos_token_follows_tokenizer_json(dirs):
    """transformers 5 takes the post-processor from tokenizer.json and ignores add_bos_token."""
    llama3 = Tokenizer.from_pretrained(dirs["llama3"])
    assert llama3.encode("hi")[0] == llama3.bos_token_id
    assert llama3.encode("hi", add_special_tokens=False)[0] != llama3.bos_token_id
    add_bos = Tokenizer.from_pretrained(dirs["add_bos"])
    assert add_bos.encode("hi") == AutoTokenizer.from_pretrained(str(dirs["add_bos"])).encode("hi")


def test_clean_up_spaces_applies_to_wordpiece_only(dirs):
    wordpiece = Tokenizer.from_pretrained(dirs["wordpiece"])
    assert wordpiece.decode(wordpiece.encode("fine , thank you .")) == "fine, thank you."
    llama3 = Tokenizer.from_pretrained(dirs["llama3"])
    assert llama3.decode(llama3.encode("fine , thank you .")) == "fine , thank you ."


@pytest.mark.parametrize("kind", ["test", "llama3"])
@pytest.mark.parametrize("chat", CHATS, ids=["one", "four"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_autotokenizer(dirs, kind, chat, add_generation_prompt):
    ours, hf = Tokenizer.from_pretrained(dirs[kind]), AutoTokenizer.from_pretrained(str(dirs[kind]))
    assert ours.chat_template == hf.chat_template
    kwargs = dict(add_generation_prompt=add_generation_prompt)
    text = ours.apply_chat_template(chat, tokenize=False, **kwargs)
    assert text == hf.apply_chat_template(chat, tokenize=False, **kwargs)
    ids = ours.apply_chat_template(chat, tokenize=True, **kwargs)
    assert ids == hf.apply_chat_template(chat, tokenize=True, return_dict=False, **kwargs)


def test_chat_template_tools_variables_and_continuation_equal_autotokenizer(dirs):
    ours, hf = Tokenizer.from_pretrained(dirs["llama3"]), AutoTokenizer.from_pretrained(str(dirs["llama3"]))
    chat = CHATS[1]
    for kwargs in (
        dict(tools=TOOLS, add_generation_prompt=True),
        dict(date_string="1 Jan 2030", bos_token="", add_generation_prompt=True),
        dict(continue_final_message=True, add_generation_prompt=False),
    ):
        messages = chat[:3] if kwargs.get("continue_final_message") else chat
        assert ours.apply_chat_template(messages, tokenize=False, **kwargs) == hf.apply_chat_template(
            messages, tokenize=False, **kwargs
        ), kwargs
    assert "<|begin_of_text|>" not in ours.apply_chat_template(chat, bos_token="")


def test_chat_template_raise_exception_and_sandbox(dirs):
    llama3 = Tokenizer.from_pretrained(dirs["llama3"])
    backwards = [{"role": "assistant", "content": "hi"}]
    with pytest.raises(Exception, match="roles must alternate") as ours:
        llama3.apply_chat_template(backwards)
    hf = AutoTokenizer.from_pretrained(str(dirs["llama3"]))
    with pytest.raises(type(ours.value), match="roles must alternate"):
        hf.apply_chat_template(backwards, tokenize=False)
    escape = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(Exception, match="unsafe|access"):
        llama3.apply_chat_template(CHATS[0], chat_template=escape)


def test_chat_template_jinja_file_wins_over_tokenizer_config(tmp_path):
    make_tokenizer(tmp_path)  # transformers 5 writes the template to chat_template.jinja
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    write_config(tmp_path, {**config, "chat_template": "ignored {{ messages }}"})
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    ours, hf = Tokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.chat_template == hf.chat_template == "{{ bos_token }}{{ messages[0]['content'] }}"
    assert ours.apply_chat_template(CHATS[0]) == hf.apply_chat_template(CHATS[0], tokenize=False)


def test_no_chat_template_is_none_and_an_actionable_error(tmp_path):
    make_tokenizer(tmp_path, chat_template=False)
    tokenizer = Tokenizer.from_pretrained(tmp_path)
    assert tokenizer.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        tokenizer.apply_chat_template(CHATS[0])


def test_directory_without_tokenizer_json_falls_back_to_transformers(dirs, tmp_path):
    """vocab.json + merges.txt (no sentencepiece needed) is a directory only AutoTokenizer reads."""
    backend = Backend.from_file(str(dirs["test"] / "tokenizer.json"))
    backend.model.save(str(tmp_path))
    write_config(tmp_path, {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<s>",
                            "eos_token": "</s>", "pad_token": "<pad>",
                            "chat_template": "{{ eos_token }}{{ messages[0]['content'] }}"})
    ours, hf = Tokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(ours, TransformersTokenizer)
    for text in TEXTS:
        assert ours.encode(text) == hf.encode(text)
        assert ours.decode(hf.encode(text)) == hf.decode(hf.encode(text), skip_special_tokens=True)
    assert (ours.eos_token_id, ours.bos_token_id, ours.pad_token_id, len(ours)) == (
        hf.eos_token_id, hf.bos_token_id, hf.pad_token_id, len(hf)
    )
    assert ours.all_special_ids == hf.all_special_ids
    assert ours.apply_chat_template(CHATS[0]) == hf.apply_chat_template(CHATS[0], tokenize=False)


BUILD_ENGINE = """
import json, sys
import loraserve
from loraserve.config import EngineConfig
from loraserve.engine.llm_engine import LLMEngine

engine = LLMEngine(EngineConfig(model=sys.argv[1], device="cpu"))
assert engine.tokenizer.encode("hello") and engine.tokenizer.eos_token_id is not None
heavy = ("huggingface_hub", "transformers", "s3fs", "aiohttp.client")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def test_building_the_engine_imports_neither_transformers_nor_huggingface_hub(tmp_path):
    model_dir = make_tiny_model(tmp_path / "model")
    done = subprocess.run(
        [sys.executable, "-c", BUILD_ENGINE, str(model_dir)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("kind", KINDS)
def test_no_token_stands_for_more_text_than_max_token_chars(dirs, kind):
    """The bound the server uses to refuse huge prompts before tokenizing them."""
    for tokenizer in (Tokenizer.from_pretrained(dirs[kind]), TransformersTokenizer.load(dirs[kind])):
        bound = tokenizer.max_token_chars
        longest = max(len(tokenizer.decode([i], skip_special_tokens=False)) for i in range(len(tokenizer)))
        assert 1 < longest <= bound
        for text in TEXTS:  # and the texts' token counts respect it
            assert len(text) <= bound * len(tokenizer.encode(text, add_special_tokens=False))
