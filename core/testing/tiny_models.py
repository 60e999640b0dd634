"""Tiny seeded models, tokenizers and PEFT adapters, saved as Hugging Face checkpoints.

Everything is built locally from a seed: no hub, no downloads. PEFT is imported only by
``make_adapter``, so importing this module needs nothing beyond loraserve's own deps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
# The model the benchmarks share: big enough that matmuls dominate, small enough for a CPU.
BENCHMARK_MODEL = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=512,
)
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "select name from users where id = 42 order by name",
    "a language model predicts the next token from the ones before it",
    "many adapters share one base model in the same batch",
    "hello world, how are you today? I am fine, thank you.",
    "0123456789 +-*/=()[]{} <>!?.,;:'\"",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}[/{{ m['role'] }}]\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def make_tokenizer(out_dir: str | Path, vocab_size: int = 384, chat_template: bool = True):
    """Train a byte-level BPE tokenizer on a fixed corpus and save it as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_config(arch: str = "llama", vocab_size: int = 384, **overrides: Any):
    """A random-weights config of the given family, small enough for CPU tests."""
    from transformers import AutoConfig

    base: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    if arch == "qwen3":
        base["head_dim"] = 32
    base.update(overrides)
    return AutoConfig.for_model(arch, **base)


def make_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **config_overrides: Any,
) -> Path:
    """Save a seeded random model of family ``arch`` plus a trained tokenizer to ``out_dir``."""
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(out)
    config = tiny_config(arch, vocab_size=len(tokenizer), **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # random init is near zero for some layers: widen it so outputs vary
        for name, param in model.named_parameters():
            if "norm" in name and param.dim() == 1:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif param.dim() == 1:
                param.normal_(0.0, 0.1)
            else:
                param.normal_(0.0, 0.08)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def make_adapter(
    model_dir: str | Path,
    out_dir: str | Path,
    rank: int = 8,
    alpha: int = 16,
    targets: tuple[str, ...] | str = ALL_TARGETS,
    seed: int = 1,
    use_rslora: bool = False,
    safe_serialization: bool = True,
    base_model_name: str | None = None,
    **lora_kwargs: Any,
) -> Path:
    """Save a PEFT LoRA adapter with random (non-zero) A and B so it changes the output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets if isinstance(targets, str) else list(targets),  # or "all-linear"
        use_rslora=use_rslora,
        init_lora_weights=False,
        **lora_kwargs,
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.15)
    peft_model.save_pretrained(str(out_dir), safe_serialization=safe_serialization)
    if base_model_name is not None:
        set_adapter_base_model(out_dir, base_model_name)
    return Path(out_dir)


def set_adapter_base_model(adapter_dir: str | Path, base_model_name: str) -> None:
    """Rewrite ``base_model_name_or_path`` in an adapter's config (resolvers check it)."""
    import json

    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model_name
    path.write_text(json.dumps(config, indent=2))
