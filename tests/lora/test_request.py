"""LoRARequest: vLLM's fields, checks and generic adapter-request names."""

from __future__ import annotations

import pytest

from loraserve.lora.request import LoRARequest


def test_vllm_generic_names_read_the_fields():
    request = LoRARequest("sql", 7, "/adapters/sql", base_model_name="base")
    assert (request.adapter_id, request.name, request.path) == (7, "sql", "/adapters/sql")
    assert LoRARequest(lora_name="a", lora_int_id=1, lora_path="/p").base_model_name is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(lora_name="", lora_int_id=1, lora_path="/p"), "lora_name must be a non-empty string"),
    (dict(lora_name="a", lora_int_id=0, lora_path="/p"), "lora_int_id must be >= 1, got 0"),
])
def test_bad_requests_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRARequest(**kwargs)
