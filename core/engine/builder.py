"""Everything an engine runs on, built once from an ``EngineConfig``.

``LLM`` and ``AsyncLLMEngine`` both start here, so device, dtype, weights, context length,
KV-cache sizing, LoRA wiring and the resolution service are decided in one place; the
engine itself only admits requests, steps and finishes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from loraserve.allocator import log_host_allocator
from loraserve.config import EngineConfig
from loraserve.engine.admission import ContextLimit
from loraserve.engine.block_manager import BlockManager
from loraserve.engine.generation_defaults import generation_config, sampling_defaults
from loraserve.engine.model_runner import ModelRunner
from loraserve.engine.scheduler import Scheduler
from loraserve.errors import InvalidRequestError
from loraserve.kernels import lora_dtype
from loraserve.lora.manager import LoRAEvents, LoRAManager
from loraserve.model.checkpoint import open_checkpoint
from loraserve.model.decoder import DecoderModel
from loraserve.model.loader import load_weights
from loraserve.model.spec import (
    ModelSpec,
    cpu_has_native_bf16,
    parse_dtype,
    resolve_dtype,
    spec_from_config,
)
from loraserve.plugins import get_plugin_manager
from loraserve.resolution.download import register_adapter_owner
from loraserve.resolution.service import LoadAdapter, LoRAResolutionService
from loraserve.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_CPU_KV_CACHE_BYTES = 2 << 30  # default cap on CPU; GPUs use most of their free memory


@dataclass
class EngineParts:
    """The model side of one engine: what ``LLMEngine`` steps with."""

    device: torch.device
    spec: ModelSpec
    dtype: torch.dtype
    tokenizer: Tokenizer
    context: ContextLimit
    model: DecoderModel
    eos_token_ids: frozenset[int]
    sampling_defaults: dict  # for sampling fields a request leaves out (generation config)
    max_logprobs: int  # most logprobs a request may ask for
    lora_manager: LoRAManager | None
    runner: ModelRunner
    scheduler: Scheduler


def build_parts(config: EngineConfig, lora_events: LoRAEvents | None = None) -> EngineParts:
    """Load the model and size everything around it; raises before anything is half-built."""
    device = _pick_device(config.device)
    checkpoint = open_checkpoint(config.model, config.tokenizer)
    spec = spec_from_config(checkpoint.config)
    dtype = resolve_dtype(config.dtype, spec, device)
    tokenizer = checkpoint.tokenizer()
    max_model_len = _max_model_len(config, spec)
    logger.info("loading %s (%s, %s) on %s", config.model, spec.architecture, dtype, device)
    if config.dtype == "auto" and device.type == "cpu":
        logger.info("dtype auto: %s (checkpoint %s; this CPU %s native bfloat16)",
                    str(dtype).removeprefix("torch."), str(spec.config_dtype).removeprefix("torch."),
                    "has" if cpu_has_native_bf16() else "lacks")
    if device.type == "cpu":
        log_host_allocator()
    weights = load_weights(checkpoint, spec, dtype, device)
    model = DecoderModel(spec, weights, max_model_len)
    generation = generation_config(config, checkpoint.generation_config)
    eos_token_ids = _eos_token_ids(generation, spec.eos_token_ids, tokenizer)
    defaults = sampling_defaults(config, generation)
    max_logprobs = spec.vocab_size if config.max_logprobs == -1 else config.max_logprobs
    requested = None if config.lora_dtype == "auto" else parse_dtype(config.lora_dtype)
    slot_dtype = lora_dtype(dtype, device, requested)
    if requested not in (None, slot_dtype):
        logger.warning("ignoring lora_dtype %r: on %s adapters run in the model's dtype (%s)",
                       config.lora_dtype, device.type, str(dtype).removeprefix("torch."))

    lora_manager: LoRAManager | None = None
    if config.enable_lora:
        lora_manager = LoRAManager(
            spec, config.max_loras, config.max_lora_rank, config.max_cpu_loras,
            slot_dtype, device, lora_events,
        )
        register_adapter_owner(lora_manager)  # the download cache may unload idle ones
        logger.info(
            "LoRA slots: %d of rank %d, %s (%.1f MiB)", config.max_loras, config.max_lora_rank,
            str(slot_dtype).removeprefix("torch."), lora_manager.slots.nbytes / 2**20,
        )

    num_blocks = _num_kv_blocks(config, spec, dtype, device, max_model_len)
    slots = None if lora_manager is None else lora_manager.slots
    runner = ModelRunner(model, num_blocks, config.block_size, slots, config.lora_merge)
    if decode_graphs_wanted(config, device):
        runner.enable_decode_graphs(config.max_num_seqs, max_model_len, capture=True)
    batched_tokens = config.max_num_batched_tokens or max(4096, max_model_len)
    if batched_tokens < max_model_len:
        logger.info("max_num_batched_tokens %d < max_model_len %d: a longer prompt is prefilled "
                    "whole, as its step's only prompt (no chunked prefill)", batched_tokens,
                    max_model_len)
    scheduler = Scheduler(
        BlockManager(num_blocks, config.block_size),
        config.max_num_seqs,
        batched_tokens,
        lora_manager,
    )
    return EngineParts(
        device, spec, dtype, tokenizer, ContextLimit(max_model_len), model, eos_token_ids,
        defaults, max_logprobs, lora_manager, runner, scheduler,
    )


def checked_plugins():  # noqa: ANN201 - the plugin manager, also the engine's LoRAEvents
    """The plugin manager, with ``VLLM_PLUGINS`` problems raised now, before the model loads."""
    plugins = get_plugin_manager()
    plugins.check()
    return plugins


def build_resolution(config: EngineConfig, load: LoadAdapter) -> LoRAResolutionService:
    """The resolution service for unknown adapter names; ``load`` is the engine's load."""
    return LoRAResolutionService(str(config.served_model_name), load)


def _max_model_len(config: EngineConfig, spec: ModelSpec) -> int:
    limit = spec.max_position_embeddings  # sliding layers need no cap: they mask by window
    wanted = config.max_model_len or limit
    if wanted > limit:
        raise InvalidRequestError(f"max_model_len {wanted} exceeds what the model supports ({limit})")
    return wanted


def _num_kv_blocks(
    config: EngineConfig, spec: ModelSpec, dtype: torch.dtype, device: torch.device,
    max_model_len: int,
) -> int:
    bs = config.block_size
    per_block = 2 * spec.num_layers * bs * spec.kv_size * dtype.itemsize
    blocks_per_seq = -(-max_model_len // bs)
    wanted = config.max_num_seqs * blocks_per_seq
    budget = config.kv_cache_memory_bytes
    if budget is None:
        budget = (
            int(torch.cuda.mem_get_info(device)[0] * 0.8)
            if device.type == "cuda"
            else _CPU_KV_CACHE_BYTES
        )
    blocks = min(wanted, budget // per_block)
    if blocks < blocks_per_seq:
        raise InvalidRequestError(
            f"the KV cache budget ({budget} bytes) cannot hold one sequence of "
            f"max_model_len {max_model_len}; lower max_model_len or raise the budget"
        )
    logger.info("KV cache: %d blocks of %d tokens (%.1f MiB)", blocks, bs, blocks * per_block / 2**20)
    return blocks


def decode_graphs_wanted(config: EngineConfig, device: torch.device) -> bool:
    """CUDA graphs for decode steps: on CUDA, unless ``enforce_eager`` (vLLM's rule)."""
    return device.type == "cuda" and not config.enforce_eager


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _eos_token_ids(generation: dict, config_eos: tuple[int, ...], tokenizer) -> frozenset[int]:  # noqa: ANN001
    """EOS ids from config.json, generation_config.json and the tokenizer, as HF generate uses."""
    ids = set(config_eos)
    eos = generation.get("eos_token_id")
    ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
