"""Greedy tokens from a real engine, one list per adapter, for "a resolved adapter serves
exactly like the same adapter loaded from a local folder" checks."""

from __future__ import annotations

from pathlib import Path

PROMPTS = ("the quick brown fox", "select name from users")


def engine_greedy_tokens(
    model_dir: str | Path, served_model_name: str, loras: list, max_tokens: int = 8
) -> list[list]:
    """Greedy token ids per adapter (a name to resolve, a LoRARequest, or None for the base
    model) and per prompt, from one engine built after the caller set the plugin variables."""
    from loraserve.entrypoints.llm import LLM
    from loraserve.plugins import reset_plugin_manager
    from loraserve.sampling_params import SamplingParams

    reset_plugin_manager()  # pick up the resolver variables the caller just set
    try:
        llm = LLM(
            model=str(model_dir),
            enable_lora=True,
            served_model_name=served_model_name,
            max_loras=2,
            max_lora_rank=16,
        )
        params = SamplingParams(temperature=0, max_tokens=max_tokens)
        outputs = (llm.generate(list(PROMPTS), params, lora_request=lora) for lora in loras)
        return [[out.outputs[0].token_ids for out in per_adapter] for per_adapter in outputs]
    finally:
        reset_plugin_manager()
