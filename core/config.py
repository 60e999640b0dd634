"""Engine configuration: one dataclass, filled by ``LLM(...)`` or the CLI in one place each."""

from __future__ import annotations

from dataclasses import dataclass

from loraserve.errors import InvalidRequestError


@dataclass
class EngineConfig:
    model: str  # a Hugging Face directory or a GGUF file
    served_model_name: str | None = None
    tokenizer: str | None = None  # a Hugging Face tokenizer directory instead of the model's
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    kv_cache_memory_bytes: int | None = None
    device: str = "auto"
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    lora_dtype: str = "auto"  # adapters run in the model's dtype; another value is warned about
    lora_merge: bool = True  # merge an adapter that owns every step into a weight copy (CPU, fp32)
    allow_runtime_lora_updating: bool = False
    max_logprobs: int = 20  # most logprobs a request may ask for (-1: the vocabulary), as vLLM
    # sampling defaults for what a request leaves out: "auto" (the model's
    # generation_config.json), "vllm" (none) or a directory holding one
    generation_config: str = "auto"
    override_generation_config: dict | None = None  # set over generation_config's defaults
    disable_log_stats: bool = False  # no periodic statistics log line
    enforce_eager: bool = False  # no CUDA graphs for decode steps (vLLM's flag)

    def __post_init__(self) -> None:
        if self.served_model_name is None:
            self.served_model_name = self.model
        if self.max_cpu_loras is None:
            self.max_cpu_loras = self.max_loras
        if self.max_loras < 1:
            raise InvalidRequestError(f"max_loras must be at least 1, got {self.max_loras}")
        if self.max_cpu_loras < self.max_loras:
            raise InvalidRequestError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
        if self.max_lora_rank < 1:
            raise InvalidRequestError(f"max_lora_rank must be positive, got {self.max_lora_rank}")
        if self.max_num_seqs < 1:
            raise InvalidRequestError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise InvalidRequestError(
                f"max_num_batched_tokens must be at least 1, got {self.max_num_batched_tokens}")
        if self.max_logprobs < -1:
            raise InvalidRequestError(
                f"max_logprobs must be -1 (the vocabulary) or at least 0, got {self.max_logprobs}")
