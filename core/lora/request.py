"""The user-facing handle naming one LoRA adapter (same fields as vLLM's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoRARequest:
    """An adapter to apply: a unique name, an int id and a local PEFT directory.

    ``lora_int_id`` must be positive. The engine identifies adapters by name; an id is
    kept for vLLM compatibility and for ``unload_lora_adapter`` by id.
    """

    lora_name: str
    lora_int_id: int
    lora_path: str
    base_model_name: str | None = None

    def __post_init__(self) -> None:
        if not self.lora_name:
            raise ValueError("LoRARequest.lora_name must be a non-empty string")
        if self.lora_int_id < 1:
            raise ValueError(
                f"LoRARequest '{self.lora_name}': lora_int_id must be >= 1, got {self.lora_int_id}"
            )

    def __hash__(self) -> int:
        return hash(self.lora_name)

    # vLLM's generic adapter-request names, for code written against them
    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path
