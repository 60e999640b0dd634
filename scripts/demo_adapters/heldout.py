"""Held-out figures of the demo adapters, served by loraserve (greedy, as the demo serves).

    python scripts/demo_adapters/heldout.py [--count 200]

``sql``: exact match on a held-out split of the generator (column names never seen in
training, fresh values), after trimming whitespace and a trailing ``;``, for the base model
alone and with the adapter. ``json``: the share of replies that parse to the right object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import data  # noqa: E402

from loraserve import LLM, SamplingParams  # noqa: E402
from loraserve.demo.smollm2 import MODEL_NAME, write_model  # noqa: E402
from loraserve.lora.request import LoRARequest  # noqa: E402

ADAPTERS = Path(__file__).resolve().parents[2] / "core" / "demo" / "adapters"


def normalise(sql: str) -> str:
    return sql.strip().removesuffix(";").strip()


def sql_exact_match(llm: LLM, count: int, lora: LoRARequest | None) -> float:
    examples = data.sql_examples(count, "heldout", 1)
    params = SamplingParams(temperature=0, max_tokens=96, stop=[data.SQL_STOP])
    outputs = llm.generate([e.prompt for e in examples], params, lora_request=lora)
    hits = sum(normalise(o.outputs[0].text) == e.answer for o, e in zip(outputs, examples))
    return hits / count


def json_accuracy(llm: LLM, count: int, lora: LoRARequest | None) -> float:
    examples = data.json_examples(count, 1)
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": e.prompt}],
                                             tokenize=False, add_generation_prompt=True)
               for e in examples]
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=64), lora_request=lora)

    def parsed(text: str) -> object:
        try:
            return json.loads(text)
        except ValueError:
            return None

    return sum(parsed(o.outputs[0].text) == json.loads(e.answer) for o, e in zip(outputs, examples)) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(str(write_model(Path(tmp) / "model")), served_model_name=MODEL_NAME,
                  enable_lora=True, max_loras=2, max_lora_rank=16)
        for name, score in (("sql", sql_exact_match), ("json", json_accuracy)):
            if not (ADAPTERS / name).is_dir():
                continue
            lora = LoRARequest(name, 1 if name == "sql" else 2, str(ADAPTERS / name))
            base, tuned = score(llm, args.count, None), score(llm, args.count, lora)
            print(f"{name}: held-out {args.count}: base model {base:.1%}, with the adapter {tuned:.1%}")


if __name__ == "__main__":
    main()
