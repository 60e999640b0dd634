"""Our model code against transformers' greedy decoding, for every supported family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loraserve import LLM, SamplingParams
from loraserve.errors import UnsupportedModelError
from loraserve.model.spec import load_spec
from loraserve.testing import ARCHITECTURES, make_tiny_model, tiny_config

PROMPTS = ["hello world", "the quick brown fox jumps over the lazy dog", "select", "a b c d e f"]
MAX_TOKENS = 16
_ARCHITECTURE_NAMES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_matches_transformers(arch, model_dirs, hf_greedy):
    llm = LLM(str(model_dirs[arch]))
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True))
    for prompt, output in zip(PROMPTS, outputs):
        assert output.prompt == prompt
        assert output.outputs[0].token_ids == hf_greedy(model_dirs[arch], prompt, MAX_TOKENS)
        assert output.outputs[0].finish_reason == "length"


def test_prompt_token_ids_input(llama_dir):
    llm = LLM(str(llama_dir))
    ids = llm.get_tokenizer().encode("hello world")
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    by_text = llm.generate("hello world", params)[0]
    by_ids = llm.generate({"prompt_token_ids": ids}, params)[0]
    assert by_ids.outputs[0].token_ids == by_text.outputs[0].token_ids


def test_unsupported_architecture_is_refused_with_supported_list(llama_dir, tmp_path):
    for item in llama_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM"):
        LLM(str(tmp_path))


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(UnsupportedModelError, match="config.json is missing"):
        LLM(str(tmp_path))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs(llama_dir, dtype):
    llm = LLM(str(llama_dir), dtype=dtype)
    out = llm.generate("hello", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4


# ---- sliding-window attention ----------------------------------------------------------
WINDOW = 6
# Prompts shorter and longer than the window; with 16 new tokens every row slides past it.
# No digits: transformers 5's Qwen2 tokenizer splits them where tokenizer.json does not.
WINDOW_PROMPTS = [
    "hello world",
    "many adapters share one base model in the same batch",
    "a b c d e f",
    "the quick brown fox jumps over the lazy dog",
]


def _copy_with_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of a model directory whose config.json has ``changes`` applied (None deletes)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def mistral_window_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mistral_window")
    return make_tiny_model(root / "model", arch="mistral", seed=5, sliding_window=WINDOW)


@pytest.fixture(scope="module")
def qwen2_window_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qwen2_window")
    return make_tiny_model(
        root / "model", arch="qwen2", seed=5, num_hidden_layers=2,
        use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
    )


def _generate_per_row(llm: LLM, lengths: list[int]) -> list[list[int]]:
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths]
    return [out.outputs[0].token_ids for out in llm.generate(WINDOW_PROMPTS, params)]


def test_mistral_sliding_window_matches_transformers(mistral_window_dir, tmp_path, hf_greedy):
    full_dir = _copy_with_config(mistral_window_dir, tmp_path / "full", sliding_window=None)
    lengths = [len(LLM(str(mistral_window_dir)).get_tokenizer().encode(p)) for p in WINDOW_PROMPTS]
    assert min(lengths) < WINDOW < max(lengths)  # some prefills fit the window, some slide
    expected = [hf_greedy(mistral_window_dir, p, MAX_TOKENS) for p in WINDOW_PROMPTS]
    full = [hf_greedy(full_dir, p, MAX_TOKENS) for p in WINDOW_PROMPTS]
    assert sum(e != f for e, f in zip(expected, full)) >= 2, "the window should change outputs"

    # Different lengths and 2 sequences at a time: later prompts prefill beside decodes.
    new_tokens = [MAX_TOKENS, 5, MAX_TOKENS, 9]
    llm = LLM(str(mistral_window_dir), max_num_seqs=2)
    outputs = _generate_per_row(llm, new_tokens)
    for row, (got, want, n) in enumerate(zip(outputs, expected, new_tokens)):
        assert got == want[:n], f"row {row}"


def test_qwen2_mixed_sliding_and_full_layers_match_transformers(qwen2_window_dir, tmp_path, hf_greedy):
    full_dir = _copy_with_config(  # transformers' cache needs layer_types to agree
        qwen2_window_dir, tmp_path / "full", use_sliding_window=False,
        layer_types=["full_attention"] * 2,
    )
    expected = [hf_greedy(qwen2_window_dir, p, MAX_TOKENS) for p in WINDOW_PROMPTS]
    full = [hf_greedy(full_dir, p, MAX_TOKENS) for p in WINDOW_PROMPTS]
    assert sum(e != f for e, f in zip(expected, full)) >= 2, "the window should change outputs"

    llm = LLM(str(qwen2_window_dir))
    assert llm.engine.spec.layer_windows == (None, WINDOW)  # layer 0 full, layer 1 slides
    outputs = _generate_per_row(llm, [MAX_TOKENS] * len(WINDOW_PROMPTS))
    for row, (got, want) in enumerate(zip(outputs, expected)):
        assert got == want, f"row {row}"


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("mistral", dict(sliding_window=WINDOW)),
        ("mistral", dict(sliding_window=None)),
        ("llama", dict(sliding_window=WINDOW)),
        ("qwen2", dict(use_sliding_window=False, sliding_window=WINDOW)),
        ("qwen2", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2)),
        ("qwen3", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
        ("qwen3", dict(use_sliding_window=True, sliding_window=WINDOW, layer_types=None)),
        ("qwen2", dict(use_sliding_window=True, sliding_window=WINDOW,
                       layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    ],
)
def test_layer_windows_follow_transformers_config(arch, overrides, tmp_path):
    """Which layers slide, checked against the layer types transformers reads from config.json."""
    from transformers import AutoConfig

    layers = len(overrides.get("layer_types") or ()) or 3
    config = tiny_config(arch, num_hidden_layers=layers, max_window_layers=1).to_dict()
    config.update(overrides)
    config["architectures"] = [_ARCHITECTURE_NAMES[arch]]
    if "layer_types" in overrides and overrides["layer_types"] is None:
        del config["layer_types"]  # older configs: max_window_layers decides
    (tmp_path / "config.json").write_text(json.dumps(config))

    hf = AutoConfig.from_pretrained(str(tmp_path))
    window = None if arch == "llama" else hf.sliding_window  # Llama's attention has no window
    types = getattr(hf, "layer_types", None) or ["sliding_attention" if window else "full_attention"] * layers
    want = tuple(window if t == "sliding_attention" and window else None for t in types)
    assert load_spec(tmp_path).layer_windows == want


def test_max_model_len_is_not_capped_by_the_window(mistral_window_dir):
    llm = LLM(str(mistral_window_dir))
    assert llm.engine.spec.sliding_window == WINDOW
    assert llm.engine.max_model_len == load_spec(mistral_window_dir).max_position_embeddings > WINDOW
    assert LLM(str(mistral_window_dir), max_model_len=4 * WINDOW).engine.max_model_len == 4 * WINDOW
