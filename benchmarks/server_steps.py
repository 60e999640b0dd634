"""The shapes of a server's steps under Zipf load, on CPU: the two paths they used to take
against the two they take now, one thread, best of N.

1. A decode step's LoRA with uneven tokens per slot (3 of one adapter, 2 of another, 1 each
   of the rest): the gathered padded path against the step cut into runs and diagonals
   (``LoRABatch.diagonals``), one layer of the benchmark model (hidden 512, intermediate
   1376, rank 16 on all seven projections, 8 slots).
2. A mixed step's attention (decoding sequences beside one 32-token prompt): every query
   padded to the prompt's length in one group, against a decode group and a prompt group
   (``forward_batch.AttentionGroup``), one layer (8 heads of 64, blocks of 16).

    python benchmarks/server_steps.py [--quick]

Figures and the server sweeps they explain: docs/benchmarks.md, "2026-12-08, 00:00".
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch

from loraserve.allocator import preloaded_allocator, relaunch_with_tcmalloc
from loraserve.kernels import LoRABatch, batch, torch_ops
from loraserve.model.attention import paged_attention
from loraserve.model.forward_batch import ForwardBatch, attention_group

HIDDEN, INTERMEDIATE, RANK, SLOTS = 512, 1376, 16, 8
HEADS, HEAD_DIM, BLOCK = 8, 64, 16
# (in, slice widths) of each LoRA group: q/k/v, o, gate/up, down
GROUPS = [(HIDDEN, (HIDDEN,) * 3), (HIDDEN, (HIDDEN,)), (HIDDEN, (INTERMEDIATE,) * 2),
          (INTERMEDIATE, (HIDDEN,))]
COUNTS = ["2,1,1,1,1,1,1,1", "3,2,1,1,1,1,1,1", "4,2,2,1,1,1,1,1", "6,3,2,2,1,1,1,1"]


def best_us(fn, number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


def lora_groups() -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Each group's A [slots, in, n] (a transposed view of row-major storage, as the slots
    keep it) and one B stack [slots, k, R, w]."""
    groups = []
    for in_features, widths in GROUPS:
        a = torch.randn(SLOTS, len(widths) * RANK, in_features).mT
        groups.append((a, [torch.randn(SLOTS, len(widths), RANK, widths[0])]))
    return groups


def lora_layer_us(counts: list[int], groups, gathered: bool, number: int, repeat: int) -> float:
    token_slots = [slot for slot, count in enumerate(counts) for _ in range(count)]
    if gathered:  # a piece costing more than any padding: the path before the cut
        with mock.patch.object(batch, "PIECE_COST_ROWS", 10**9):
            lora_batch = LoRABatch.build(token_slots)
        assert lora_batch.padded_token_start is None and not lora_batch.diagonals
    else:
        lora_batch = LoRABatch.build(token_slots)
        assert lora_batch.diagonals
    xs = [torch.randn(len(token_slots), a.shape[1]) for a, _ in groups]
    outs = [torch.zeros(len(token_slots), sum(b.shape[1] * b.shape[3] for b in bs))
            for _, bs in groups]

    def layer() -> None:
        for (a, bs), x, out in zip(groups, xs, outs):
            torch_ops.add_lora(out, x, a, bs, lora_batch)

    return best_us(layer, number, repeat)


def attention_us(decoding: int, two_groups: bool, number: int, repeat: int) -> float:
    """One layer's attention: ``decoding`` sequences with 48 tokens of context, one 32-token
    prompt prefilled beside them."""
    q_lens = [1] * decoding + [32]
    kv_lens = [48] * decoding + [32]
    per_seq = 3  # blocks of context each sequence may use
    tables = [list(range(seq * per_seq, (seq + 1) * per_seq)) for seq in range(len(q_lens))]
    cache = torch.randn(2, len(q_lens) * per_seq, BLOCK, HEADS, HEAD_DIM)
    tokens = sum(q_lens)
    q, k, v = (torch.randn(tokens, HEADS, HEAD_DIM) for _ in range(3))
    if two_groups:
        parts = [(slice(0, decoding), list(range(decoding))),
                 (slice(decoding, None), list(range(decoding, tokens)))]
        groups = tuple(attention_group(tables[seqs], kv_lens[seqs], q_lens[seqs], BLOCK, None,
                                       "cpu", tokens=rows) for seqs, rows in parts)
    else:
        groups = (attention_group(tables, kv_lens, q_lens, BLOCK, None, "cpu"),)
    forward = ForwardBatch(input_ids=torch.zeros(tokens, dtype=torch.long), positions=None,
                           slot_mapping=torch.arange(tokens), block_tables=groups[0].block_tables,
                           attention=groups, logits_indices=None, lora=None)
    return best_us(lambda: paged_attention(q, k, v, cache[0], cache[1], forward, None),
                   number, repeat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke test")
    args = parser.parse_args()
    relaunch_with_tcmalloc()  # the allocator `loraserve serve` runs on (LORASERVE_ALLOCATOR=system: not)
    print(f"torch {torch.__version__}, one thread, malloc {preloaded_allocator() or 'glibc/system'}")
    number, repeat = (5, 1) if args.quick else (200, 7)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    groups = lora_groups()
    print("1. decode LoRA, one layer, tokens per slot:  gathered us  cut us  gathered / cut")
    for pattern in COUNTS:
        counts = [int(c) for c in pattern.split(",")]
        before = lora_layer_us(counts, groups, True, number, repeat)
        after = lora_layer_us(counts, groups, False, number, repeat)
        print(f"   {pattern:<28} {before:10.0f} {after:7.0f} {before / after:8.2f}")
    print("2. mixed-step attention, one layer, decoding sequences + one 32-token prompt:")
    print("   decoding   one group us  two groups us  one / two")
    for decoding in (16, 32):
        one = attention_us(decoding, False, number, repeat)
        two = attention_us(decoding, True, number, repeat)
        print(f"   {decoding:8d} {one:14.0f} {two:14.0f} {one / two:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
