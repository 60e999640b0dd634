"""Every way an adapter is refused: the message names the adapter and the reason, and
nothing is left half-loaded (the engine keeps serving, the adapter is not registered)."""

from __future__ import annotations

import json
import shutil

import pytest

from loraserve import LLM, SamplingParams
from loraserve.errors import InvalidRequestError, LoRAAdapterError
from loraserve.lora.request import LoRARequest
from loraserve.testing import make_adapter, make_tiny_model

GREEDY = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=8)


@pytest.fixture
def copy_of(adapter_dirs, tmp_path):
    def copy(name: str):
        target = tmp_path / f"bad-{name}"
        shutil.copytree(adapter_dirs[name], target)
        return target

    return copy


def refused(llm, path, match):
    lora = LoRARequest("bad", 1, str(path))
    with pytest.raises(LoRAAdapterError, match=match) as info:
        llm.generate("hello", GREEDY, lora_request=lora)
    assert "'bad'" in str(info.value)
    assert llm.engine.lora_manager.get("bad") is None
    assert not llm.engine.has_unfinished_requests()
    assert llm.generate("hello", GREEDY)[0].outputs[0].finish_reason == "length"


def test_rank_above_max_lora_rank(llm, adapter_dirs):
    refused(llm, adapter_dirs["chat"], r"rank 16 exceeds --max-lora-rank 8; restart with --max-lora-rank 16")


def test_unsupported_target_module(llm, copy_of):
    path = copy_of("sql")
    config = json.loads((path / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "embed_tokens"]
    (path / "adapter_config.json").write_text(json.dumps(config))
    refused(llm, path, r"target modules \['embed_tokens'\] are not supported; supported: q_proj")


def test_unsupported_weight_key(llm, llama_dir, tmp_path):
    path = make_adapter(llama_dir, tmp_path / "head", rank=4, targets=("q_proj", "lm_head"))
    refused(llm, path, r"(lm_head.*not supported|not a LoRA weight of a supported module)")


def test_wrong_peft_type(llm, copy_of):
    path = copy_of("sql")
    config = json.loads((path / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (path / "adapter_config.json").write_text(json.dumps(config))
    refused(llm, path, r"peft_type is 'IA3'; only LORA adapters are supported")


def test_missing_directory(llm, tmp_path):
    refused(llm, tmp_path / "nowhere", r"does not exist or is not a directory")


def test_missing_config(llm, copy_of):
    path = copy_of("sql")
    (path / "adapter_config.json").unlink()
    refused(llm, path, r"adapter_config.json is missing")


def test_invalid_json_config(llm, copy_of):
    path = copy_of("sql")
    (path / "adapter_config.json").write_text("{not json")
    refused(llm, path, r"adapter_config.json is not valid JSON")


def test_missing_weights(llm, copy_of):
    path = copy_of("sql")
    (path / "adapter_model.safetensors").unlink()
    refused(llm, path, r"no adapter_model.safetensors or adapter_model.bin")


def test_corrupt_safetensors(llm, copy_of):
    path = copy_of("sql")
    data = (path / "adapter_model.safetensors").read_bytes()
    (path / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    refused(llm, path, r"adapter_model.safetensors is corrupt")


def test_corrupt_bin(llm, copy_of):
    path = copy_of("bin")
    (path / "adapter_model.bin").write_bytes(b"\x80\x04not a pickle")
    refused(llm, path, r"adapter_model.bin could not be read")


def test_shapes_of_another_base_model(llm, tmp_path):
    other = make_tiny_model(tmp_path / "wide", hidden_size=96, seed=5)
    path = make_adapter(other, tmp_path / "wide-adapter", rank=4, targets=("q_proj",))
    refused(llm, path, r"the base model needs \[r, 64\].*another base model")


def test_dora_is_refused(llm, copy_of):
    path = copy_of("sql")
    config = json.loads((path / "adapter_config.json").read_text())
    config["use_dora"] = True
    (path / "adapter_config.json").write_text(json.dumps(config))
    refused(llm, path, r"DoRA")


def test_another_path_under_a_loaded_name_is_refused(llm, adapter_dirs):
    first = LoRARequest("same", 1, str(adapter_dirs["sql"]))
    expected = llm.generate("hello", GREEDY, lora_request=first)[0].outputs[0].token_ids
    other = LoRARequest("same", 2, str(adapter_dirs["mlp"]))
    with pytest.raises(InvalidRequestError, match="'same' is already loaded from .*unload it first"):
        llm.generate("hello", GREEDY, lora_request=other)
    assert llm.generate("hello", GREEDY, lora_request=first)[0].outputs[0].token_ids == expected


def test_a_refused_prompt_leaves_none_of_its_call_queued(llm, adapter_dirs, copy_of):
    """vLLM aborts the call's earlier prompts too: nothing runs later, nothing stays pinned."""
    path = copy_of("sql")
    (path / "adapter_model.safetensors").write_bytes(b"garbage")
    good = LoRARequest("good", 3, str(adapter_dirs["sql"]))
    with pytest.raises(LoRAAdapterError, match="corrupt"):
        llm.generate(["hello", "world", "again"], GREEDY,
                     lora_request=[good, None, LoRARequest("bad", 4, str(path))])
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.lora_manager.num_pinned_host_adapters == 0


def _with_config(copy_of, **changes):
    path = copy_of("sql")
    config = json.loads((path / "adapter_config.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            config.pop(key, None)
        else:
            config[key] = value
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"target_modules": [1, 2]}, r"target_modules must be a list of module names"),
        ({"target_modules": {"q_proj": 1}}, r"target_modules must be a list of module names"),
        ({"lora_alpha": None}, r"lora_alpha=None .* must be a finite number"),
        ({"lora_alpha": "16"}, r"lora_alpha='16' .* must be a finite number"),
        ({"lora_alpha": float("nan")}, r"lora_alpha=nan .* must be a finite number"),
        ({"alpha_pattern": ["q_proj"]}, r"alpha_pattern must be an object"),
        ({"alpha_pattern": {"q_proj(": 4}}, r"alpha_pattern key 'q_proj\(' is not a valid regular"),
        ({"alpha_pattern": {"q_proj": "4"}}, r"alpha_pattern values must be finite numbers"),
        ({"rank_pattern": {"q_proj": 0}}, r"rank_pattern values must be positive integers"),
        ({"r": 0}, r"rank r=0 .* must be a positive integer"),
        ({"r": _DROP}, r"rank r=None .* must be a positive integer"),
        ({"peft_type": None}, r"peft_type is None"),
    ],
)
def test_malformed_configs_are_refused(llm, copy_of, changes, match):
    refused(llm, _with_config(copy_of, **changes), match)


def test_lowercase_peft_type_loads(llm, copy_of):
    path = _with_config(copy_of, peft_type="lora")
    out = llm.generate("hello", GREEDY, lora_request=LoRARequest("lower", 9, str(path)))
    assert out[0].outputs[0].finish_reason == "length"


def _rewrite_weights(path, change):
    from safetensors.torch import load_file, save_file

    file = path / "adapter_model.safetensors"
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))


def _first(tensors, which):
    return next(k for k in tensors if f"lora_{which}" in k)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.__setitem__(_first(t, "A"), t[_first(t, "A")][:0]), r"rank 0|needs \[r, 64\]"),
        (lambda t: t.__setitem__(_first(t, "A"), t[_first(t, "A")][0, 0].clone()),
         r"needs \[r, 64\]"),
        (lambda t: t[_first(t, "B")].view(-1).__setitem__(0, float("nan")), r"NaN or infinity"),
        (lambda t: t[_first(t, "A")].view(-1).__setitem__(3, float("inf")), r"NaN or infinity"),
    ],
    ids=["rank-0", "scalar", "nan", "inf"],
)
def test_malformed_weights_are_refused(llm, copy_of, change, match):
    path = copy_of("sql")
    _rewrite_weights(path, change)
    refused(llm, path, match)


def _sparse_safetensors(file, a_shape, b_shape):
    """A valid header naming one huge F32 q_proj pair, the data left as a hole (sparse)."""
    import struct

    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    a_bytes, b_bytes = a_shape[0] * a_shape[1] * 4, b_shape[0] * b_shape[1] * 4
    header = json.dumps({
        f"{prefix}.lora_A.weight": {"dtype": "F32", "shape": list(a_shape),
                                    "data_offsets": [0, a_bytes]},
        f"{prefix}.lora_B.weight": {"dtype": "F32", "shape": list(b_shape),
                                    "data_offsets": [a_bytes, a_bytes + b_bytes]},
    })
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(8 + len(header) + a_bytes + b_bytes)


def test_a_huge_weights_file_is_refused_before_its_data_is_read(llm, copy_of, monkeypatch):
    from loraserve.lora import adapter

    def never(*args):
        raise AssertionError("the data was read before the header was checked")

    monkeypatch.setattr(adapter, "read_safetensors", never)
    path = copy_of("sql")
    weights = path / "adapter_model.safetensors"
    _sparse_safetensors(weights, (1 << 20, 512), (64, 1 << 20))  # 2.3 GiB, another base model
    refused(llm, path, r"needs \[r, 64\]")
    _sparse_safetensors(weights, (1 << 22, 64), (64, 1 << 22))  # 2 GiB, shapes fit, rank too big
    refused(llm, path, r"rank 4194304 exceeds --max-lora-rank 8")


def test_a_huge_bin_file_is_refused_before_it_is_unpickled(llm, copy_of, monkeypatch):
    import torch

    def never(*args, **kwargs):
        raise AssertionError("torch.load ran on a file larger than any adapter")

    path = copy_of("bin")
    with open(path / "adapter_model.bin", "r+b") as f:
        f.truncate(2 << 30)
    monkeypatch.setattr(torch, "load", never)
    refused(llm, path, r"adapter_model.bin is \d+ bytes, more than any adapter")
