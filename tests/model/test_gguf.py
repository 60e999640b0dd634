"""The GGUF reader against independent references: transformers' own GGUF loader (its own
dequantization and q/k un-permutation), the gguf library's reference dequantization, the
original Hugging Face model the file was written from, and transformers' GGUF tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf_files import write_gguf
from safetensors.torch import load_file

from loraserve.errors import UnsupportedModelError
from loraserve.model.gguf import SUPPORTED_TYPES, GGUFCheckpoint, hf_name, is_gguf
from loraserve.testing import make_tiny_model

SHAPE = dict(hidden_size=256, intermediate_size=512)  # K-quant rows are multiples of 256


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("hf"), "llama", seed=3, **SHAPE)


@pytest.fixture(scope="module")
def gguf_files(hf_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {q: write_gguf(hf_model, out / f"tiny-{q}.gguf", q) for q in SUPPORTED_TYPES}


def test_f32_file_reads_back_the_original_model(hf_model, gguf_files):
    original = load_file(str(hf_model / "model.safetensors"))
    ours = GGUFCheckpoint(gguf_files["F32"]).tensors(torch.float32)
    assert set(ours) == set(original)
    for name, tensor in original.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES)
def test_dequantization_equals_transformers_gguf_loader(gguf_files, qtype):
    from transformers import AutoModelForCausalLM

    path = gguf_files[qtype]
    reference = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).state_dict()
    ours = GGUFCheckpoint(path).tensors(torch.float32)
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES)
def test_dequantization_equals_the_gguf_reference(gguf_files, qtype):
    """Tensors the converter does not permute come out exactly as gguf.quants.dequantize says."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_files[qtype]))
    ours = GGUFCheckpoint(gguf_files[qtype]).tensors(torch.float32)
    checked = 0
    for t in reader.tensors:
        if t.name.endswith(("attn_q.weight", "attn_k.weight")):
            continue
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(ours[hf_name(t.name)].numpy(), expected, err_msg=t.name)
        checked += t.tensor_type.name == qtype
    assert checked >= 5  # the file really holds tensors of that type


def test_config_comes_from_the_metadata(hf_model, gguf_files):
    import json

    original = json.loads((hf_model / "config.json").read_text())
    config = GGUFCheckpoint(gguf_files["Q8_0"]).config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings"):
        assert config[key] == original[key], key
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_tokenizer_equals_transformers_gguf_tokenizer(gguf_files, tmp_path):
    from transformers import AutoTokenizer

    from loraserve.tokenizer import Tokenizer

    path = gguf_files["F32"]
    GGUFCheckpoint(path).save_pretrained(tmp_path / "hf")
    ours = Tokenizer.from_pretrained(tmp_path / "hf")
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in ("the quick brown fox", " select name from users where id = 42",
                 "many  adapters\nshare one base</s> model", "café 🤖"):
        assert ours.encode(text) == reference.encode(text), text
        ids = reference.encode(text)
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)


def test_an_unsupported_type_is_refused_naming_the_supported(hf_model, tmp_path):
    path = write_gguf(hf_model, tmp_path / "tiny-Q5_0.gguf", "Q5_0")
    with pytest.raises(UnsupportedModelError, match="Q5_0; supported GGUF types: F32, F16, BF16, Q8_0"):
        GGUFCheckpoint(path).tensors(torch.float32)


def test_an_unsupported_architecture_is_refused(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert is_gguf(tmp_path / "phi.gguf") and not is_gguf(tmp_path)
    with pytest.raises(UnsupportedModelError, match="'phi2' is not supported; supported: llama"):
        _ = GGUFCheckpoint(tmp_path / "phi.gguf").config


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_engine_serves_a_gguf_file_with_transformers_greedy_tokens(gguf_files, qtype):
    """LLM(model=file.gguf): weights, tokenizer and chat template all from the file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraserve import LLM, SamplingParams

    path = gguf_files[qtype]
    reference = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    prompts = ["the quick brown fox", "select name from users"]
    llm = LLM(str(path))
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    for prompt, output in zip(prompts, outputs):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            want = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                      do_sample=False, eos_token_id=None,  # as ignore_eos
                                      pad_token_id=0)[0, ids.shape[1]:]
        assert list(output.outputs[0].token_ids) == want.tolist(), prompt
