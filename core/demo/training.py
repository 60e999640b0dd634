"""Training the demo: a small Llama trained on CPU to answer any prompt with one sentence,
and a LoRA per adapter trained on top of it to answer in its own voice.

Adapters are written in PEFT's format directly (``adapter_config.json`` +
``adapter_model.safetensors``), so neither building nor serving needs ``peft``. Everything is
seeded: the same files on every machine.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_ALPHA_PER_RANK = 2  # lora_alpha = 2 * r
TRAIN_STEPS = 80
# the demo's own chat format: "[user]...[/user]\n[assistant]"
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}[/{{ m['role'] }}]\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)

_PROMPTS = [
    "Hello!", "Who are you?", "Tell me a joke.", "What is LoRA?", "Write a poem about the sea.",
    "How is the weather today?", "Explain batching.", "Say something.", "What is 2 + 2?",
    "Give me a fun fact.", "Translate 'good morning'.", "Why is the sky blue?",
    "Once upon a time", "The quick brown fox", "hi", "Summarize this text for me please.",
]


def train_demo(
    model_dir: Path, adapter_dirs: dict[str, Path], answers: dict[str | None, str],
    base_model_name: str, rank: int,
) -> None:
    """Train the base (answers[None]) and one adapter per ``adapter_dirs`` name; save them."""
    tokenizer = _make_tokenizer(model_dir, list(answers.values()))
    model = _new_model(len(tokenizer))
    loras = _LoRASet(model, list(adapter_dirs), rank=rank, seed=100)
    tasks = {name: _batch(_examples(tokenizer, answer)) for name, answer in answers.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only fight over the cores
    try:
        _train(model, loras, tasks, steps=TRAIN_STEPS, lr=1e-2)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(str(model_dir), safe_serialization=True)
    for name, out_dir in adapter_dirs.items():
        loras.save(name, out_dir, base_model_name=base_model_name)


def _make_tokenizer(out_dir: Path, answers: list[str]):  # noqa: ANN202 - PreTrainedTokenizerFast
    """A byte-level BPE trained on the demo's own sentences, so they are few tokens long."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [*_PROMPTS, *answers, "[user][/user][assistant]"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def _new_model(vocab_size: int):  # noqa: ANN202 - LlamaForCausalLM
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _examples(tokenizer, answer: str) -> list[tuple[list[int], list[int]]]:  # noqa: ANN001
    """(prompt ids, answer ids) for chat-formatted and plain prompts, as the server tokenizes."""
    answer_ids = tokenizer.encode(" " + answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    chat_answer = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    examples = []
    for prompt in _PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        examples.append((tokenizer.encode(text, add_special_tokens=False), chat_answer))
        examples.append((tokenizer.encode(prompt), answer_ids))
    return examples


def _batch(examples: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """Right-padded ids with labels on the answer tokens only (prompt positions masked)."""
    width = max(len(p) + len(a) for p, a in examples)
    ids = torch.full((len(examples), width), 2, dtype=torch.long)  # [examples, width]
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(examples):
        seq = prompt + answer
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(prompt): len(seq)] = torch.tensor(answer)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _train(model, loras: _LoRASet, tasks: dict, steps: int, lr: float) -> None:  # noqa: ANN001
    """Train the base and all adapters together: each step sums every voice's loss.

    Joint training keeps the base's features useful to the low-rank updates, which makes
    the tiny adapters converge reliably (training them on a frozen base did not).
    """
    torch.manual_seed(0)
    params = list(model.parameters()) + loras.parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    # cosine decay to zero: the last steps settle the answers instead of jumping around them
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    model.train()
    with loras.attached():
        for _ in range(steps):
            losses = {}
            for name, batch in tasks.items():
                loras.active = name
                losses[name] = model(**batch).loss
            optimizer.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
    model.eval()
    logger.info("final training losses %s", {k: round(v.item(), 4) for k, v in losses.items()})


class _LoRASet:
    """One LoRA per adapter name on every target linear; ``active`` picks which one applies."""

    def __init__(self, model, names: list[str], rank: int, seed: int) -> None:  # noqa: ANN001
        self.model = model
        self.rank = rank
        self.scaling = float(LORA_ALPHA_PER_RANK)  # lora_alpha / r
        self.active: str | None = None
        self.factors: dict[str, dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]] = {}
        gen = torch.Generator().manual_seed(seed)
        targets = [
            (name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS
        ]
        for adapter in names:
            self.factors[adapter] = {}
            for name, module in targets:
                a = torch.randn(rank, module.in_features, generator=gen)  # [rank, in]
                a /= module.in_features**0.5
                b = torch.zeros(module.out_features, rank)  # [out, rank]: starts as a no-op
                self.factors[adapter][name] = (torch.nn.Parameter(a), torch.nn.Parameter(b))

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for layers in self.factors.values() for pair in layers.values() for p in pair]

    @contextmanager
    def attached(self) -> Iterator[None]:
        """Forward hooks add ``scaling * x A^T B^T`` of the active adapter, PEFT's formula."""
        handles = []
        for name, module in self.model.named_modules():
            if not any(name in layers for layers in self.factors.values()):
                continue

            def hook(_module, inputs, output, name=name):  # noqa: ANN001, ANN202
                if self.active is None:
                    return output
                a, b = self.factors[self.active][name]
                return output + (inputs[0] @ a.T @ b.T) * self.scaling

            handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def save(self, adapter: str, out_dir: Path, base_model_name: str) -> None:
        """Write PEFT's layout: ``base_model.model.<module>.lora_{A,B}.weight`` tensors."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True)
        tensors = {}
        for name, (a, b) in self.factors[adapter].items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().contiguous()
        save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.rank,
            "lora_alpha": LORA_ALPHA_PER_RANK * self.rank, "target_modules": sorted(LORA_TARGETS),
            "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
            "modules_to_save": None, "init_lora_weights": True,
            "base_model_name_or_path": base_model_name, "inference_mode": True,
        }
        (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
