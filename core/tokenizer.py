"""Text to token ids and back for a local model directory, equal to transformers' AutoTokenizer.

A directory with a ``tokenizer.json`` is read with the ``tokenizers`` library alone, so building
the engine imports neither transformers nor huggingface_hub. Any other directory (a sentencepiece
``tokenizer.model``, ``vocab.json`` + ``merges.txt``) is loaded by ``transformers.AutoTokenizer``,
imported only then, behind the same interface.

The rules below follow transformers 5 (``TokenizersBackend``): ``tokenizer.json`` is the whole
pipeline, post-processor included, and tokenizer_config's ``add_bos_token``/``add_eos_token`` are
ignored next to it; the special tokens and chat template come from ``tokenizer_config.json``.
Model-specific tokenizer classes (``LlamaTokenizer``, ``Qwen2Tokenizer``) rebuild the normalizer
and pre-tokenizer in code instead; for the files those models ship the two agree.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from loraserve.chat_template import render_chat
from loraserve.errors import InvalidRequestError

# transformers' named special tokens, in its order (all_special_ids keeps it)
NAMED_SPECIAL_TOKENS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"


class Tokenizer:
    """What the engine and the OpenAI server need from a tokenizer, and nothing more.

    ``special_tokens`` maps names (``bos_token``, model-specific ones like ``image_token``) to
    token text; chat templates see them by those names, as in transformers.
    """

    def __init__(
        self,
        backend: Any,
        special_tokens: dict[str, str],
        extra_special_tokens: list[str],
        chat_templates: dict[str, str],
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        self._backend = backend  # tokenizers.Tokenizer
        self.special_tokens = special_tokens
        self.extra_special_tokens = extra_special_tokens
        self.chat_templates = chat_templates
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> Tokenizer:
        model_dir = Path(model_dir)
        if (model_dir / "tokenizer.json").is_file():
            return _from_tokenizer_json(model_dir)
        return TransformersTokenizer.load(model_dir)

    # --- text and ids -------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL while it works (encode does not), so a huge prompt
        # tokenizing on the server's tokenizer thread leaves the event loop free
        return self._backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: int | list[int], skip_special_tokens: bool = True) -> str:
        ids = [ids] if isinstance(ids, int) else list(ids)
        text = self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        # transformers skips this clean-up for BPE models: it would delete real spaces
        if self.clean_up_tokenization_spaces and type(self._backend.model).__name__ != "BPE":
            text = clean_up_tokenization(text)
        return text

    def convert_tokens_to_ids(self, token: str) -> int | None:
        index = self._backend.token_to_id(token)
        if index is None and token != self.unk_token and self.unk_token is not None:
            return self.unk_token_id
        return index

    def tokenizer_json(self) -> str:
        """The whole tokenizer as ``tokenizer.json`` text: what the grammar engine reads."""
        return self._backend.to_str()

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The longest vocabulary entry in characters. Vocabularies spell every byte or
        character they cover at least once, so no token stands for more text than this."""
        return max(map(len, self._backend.get_vocab()), default=1)

    def __len__(self) -> int:
        """The vocabulary with the added tokens (ids run from 0 to len - 1)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    # --- special tokens -----------------------------------------------------------------------

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @property
    def unk_token(self) -> str | None:
        return self.special_tokens.get("unk_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id_of("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id_of("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id_of("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._id_of("unk_token")

    def _id_of(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens.values(), *self.extra_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    # --- chat -----------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The template used when none is named (``None``: the model has no chat template)."""
        return self.chat_templates.get("default")

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        *,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        continue_final_message: bool | str = False,
        **template_kwargs: Any,
    ) -> str | list[int]:
        """Render ``messages`` as transformers does; with ``tokenize`` the ids, special tokens
        being the template's own. ``template_kwargs`` override the special tokens by name."""
        template = self._pick_template(chat_template, tools)
        text = render_chat(
            template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
            documents=documents, continue_final_message=continue_final_message,
            **{**self.special_tokens, **template_kwargs},
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _pick_template(self, name_or_text: str | None, tools: list[dict] | None) -> str:
        if name_or_text is not None:
            return self.chat_templates.get(name_or_text, name_or_text)
        if tools is not None and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        if "default" in self.chat_templates:
            return self.chat_templates["default"]
        if self.chat_templates:
            raise ValueError(
                "This model has several chat templates and none is the default; "
                f"pass chat_template= one of {sorted(self.chat_templates)}"
            )
        raise ValueError(
            "This model has no chat template (no 'chat_template' in tokenizer_config.json and no "
            "chat_template.jinja); add one to the model directory or pass chat_template="
        )


class TransformersTokenizer(Tokenizer):
    """The same interface over ``transformers.AutoTokenizer``, for directories without a
    ``tokenizer.json``; only this path imports transformers (and with it huggingface_hub)."""

    @classmethod
    def load(cls, model_dir: Path) -> TransformersTokenizer:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(model_dir))
        templates = hf.chat_template if isinstance(hf.chat_template, dict) else {}
        if isinstance(hf.chat_template, str):
            templates = {"default": hf.chat_template}
        named = dict(hf.special_tokens_map)
        extra = [t for t in hf.all_special_tokens if t not in named.values()]
        return cls(hf, special_tokens=named, extra_special_tokens=extra, chat_templates=templates)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: int | list[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._backend.convert_tokens_to_ids(token)

    def __len__(self) -> int:
        return len(self._backend)

    def tokenizer_json(self) -> str:
        fast = getattr(self._backend, "backend_tokenizer", None)
        if fast is None:
            raise InvalidRequestError("structured outputs need a fast tokenizer (a model "
                                      "directory with tokenizer.json)")
        return fast.to_str()


def clean_up_tokenization(text: str) -> str:
    """transformers' clean-up of spaces before punctuation and contractions (WordPiece-era)."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
        (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


# --- loading from tokenizer.json ---------------------------------------------------------------


def _from_tokenizer_json(model_dir: Path) -> Tokenizer:
    config = _read_json(model_dir / "tokenizer_config.json")
    if "added_tokens_decoder" not in config:  # older saves keep special tokens in their own file
        config.update(_read_json(model_dir / "special_tokens_map.json"))
    tokenizer_json = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
    return from_tokenizer_json(tokenizer_json, config, _chat_templates(model_dir, config))


def from_tokenizer_json(
    tokenizer_json: str, config: dict[str, Any], chat_templates: dict[str, str] | None = None
) -> Tokenizer:
    """The tokenizer a ``tokenizer.json`` text and a ``tokenizer_config.json`` dict describe
    (a model directory's files, or what a GGUF file's metadata says)."""
    from tokenizers import Tokenizer as Backend

    backend = Backend.from_str(tokenizer_json)
    # encode() never truncates nor pads, whatever tokenizer.json was saved with
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = bool(config.get("split_special_tokens", False))

    named = _named_special_tokens(config)
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    extra = extra if isinstance(extra, list) else []
    _add_special_tokens(backend, config, [*named.values(), *extra])
    return Tokenizer(
        backend,
        special_tokens={name: _token_text(value) for name, value in named.items()},
        extra_special_tokens=[_token_text(t) for t in extra],
        chat_templates=chat_templates if chat_templates is not None else _config_templates(config),
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
    )


def _named_special_tokens(config: dict[str, Any]) -> dict[str, str | dict]:
    """bos/eos/unk/... then model-specific ``*_token`` entries (``image_token``), as transformers
    names them; values are token text or an AddedToken dict."""
    named = {k: config[k] for k in NAMED_SPECIAL_TOKENS if _token_text(config.get(k)) is not None}
    for key, value in config.items():
        if key.endswith("_token") and key not in named and key not in NAMED_SPECIAL_TOKENS:
            if _token_text(value) is not None:
                named[key] = value
    if isinstance(config.get("extra_special_tokens"), dict):
        named.update(config["extra_special_tokens"])
    return named


def _add_special_tokens(backend: Any, config: dict[str, Any], special: list[str | dict]) -> None:
    """Register what tokenizer_config lists on top of tokenizer.json, as transformers does: its
    added tokens, then every special token not yet an added token (now matched whole and skipped
    by ``decode(skip_special_tokens=True)``, even if it was already in the vocabulary)."""
    from tokenizers import AddedToken

    decoder = config.get("added_tokens_decoder") or {}
    tokens = [_added_token(decoder[i]) for i in sorted(decoder, key=int)]
    known = {t.content for t in backend.get_added_tokens_decoder().values()}
    known |= {t.content for t in tokens}
    for value in special:
        text = _token_text(value)
        if text not in known:
            known.add(text)
            if isinstance(value, str):
                tokens.append(AddedToken(text, special=True))
            else:
                tokens.append(_added_token(value, special=True))
    if tokens:
        backend.add_tokens(tokens)


def _added_token(fields: dict[str, Any], special: bool | None = None):
    from tokenizers import AddedToken

    fields = {k: v for k, v in fields.items() if k != "__type"}
    if special is not None:
        fields["special"] = special
    return AddedToken(**fields)


def _token_text(value: Any) -> str | None:
    """A special token in a config is its text or an AddedToken dict (``{"content": ...}``)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_templates(model_dir: Path, config: dict[str, Any]) -> dict[str, str]:
    """Template files win over tokenizer_config's ``chat_template`` (transformers 5 writes
    ``chat_template.jinja``; named extras live in ``additional_chat_templates/``)."""
    templates: dict[str, str] = {}
    if (model_dir / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (model_dir / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    extra_dir = model_dir / CHAT_TEMPLATE_DIR
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    return templates or _config_templates(config)


def _config_templates(config: dict[str, Any]) -> dict[str, str]:
    """tokenizer_config's ``chat_template``: one string, a list of named ones, or a dict."""
    in_config = config.get("chat_template")
    if isinstance(in_config, str):
        return {"default": in_config}
    if isinstance(in_config, list):  # [{"name": ..., "template": ...}]
        return {t["name"]: t["template"] for t in in_config}
    if isinstance(in_config, dict):
        return dict(in_config)
    return {}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
