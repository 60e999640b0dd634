"""The torch fast path (`torch_ops.add_lora`, the CPU default) against a per-token loop."""

from __future__ import annotations

import pytest
import torch

from loraserve.kernels import (
    NO_ADAPTER,
    LoRABatch,
    add_lora,
    backend_for,
    lora_dtype,
    segment_table,
    torch_ops,
)

N = NO_ADAPTER
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

SLOT_PATTERNS = {
    "padded_segments": [0, 2, N, 2, 3, 0, N, 2, 2, 1, 0],  # segment lengths 3, 1, 4, 1
    "one_adapter_all_tokens": [1] * 7,  # the single-matmul shortcut
    "one_adapter_some_tokens": [N, 1, 1, N],
    "single_token": [3],
    "equal_segments": [0, 1, 0, 1],
    "sorted_equal_segments": [N, N, 1, 1, 2, 2, 3, 3],  # the slicing shortcut (decode steps)
    "sorted_with_slot_gap": [0, 0, 2, 2],  # slot 1 unused inside the slot range
    "decode_one_token_per_slot": [N, 0, 1, 2, 3],  # the batched in-place expand
    # a prompt among decode tokens: its run is peeled off, the rest padded to 2 rows
    "prompt_among_decode": [0, 0, 1, N, *[2] * 40, 2, 3, 0],
    "prompt_only_then_decode": [*[1] * 40, 0, 2, 3],  # the run, then two diagonals
    "two_prompts": [N, *[3] * 30, *[1] * 30, 0, 2, 2],
    # Zipf decode: uneven counts per slot, cut into runs and diagonals (no padded view)
    "uneven_decode": [N, 0, 0, 0, 1, 1, 2, 3],
    "uneven_decode_with_gap": [*[0] * 6, 1, 3, *[2] * 6],  # a diagonal breaks where slots skip
    "runs_around_unused_slot": [0, 0, 0, 2, 2],  # cut into two runs, nothing padded
}
# B stacks: q/k/v with GQA (two stacks), q/k/v or gate/up without (one), o or down (one slice)
OUT_SIZES = {"gqa_qkv": (16, 8, 8), "equal_slices": (8, 8, 8), "one_slice": (12,)}


def test_sorted_equal_segments_take_the_slicing_shortcut(problem_factory):
    assert problem_factory(SLOT_PATTERNS["sorted_equal_segments"]).batch().padded_token_start == 2
    assert problem_factory(SLOT_PATTERNS["padded_segments"]).batch().padded_token_start is None


@pytest.mark.parametrize(
    ("slots", "peeled", "padded_shape"),
    [(SLOT_PATTERNS["prompt_among_decode"], ((2, 4, 45),), (4, 3)),
     (SLOT_PATTERNS["prompt_only_then_decode"], ((1, 0, 40),), (0, 0)),  # then diagonals
     # only both pay; what is left would need gathering: pieces
     (SLOT_PATTERNS["two_prompts"], ((3, 1, 31), (1, 31, 61), (2, 62, 64)), (0, 0)),
     ([0] * 32 + [1] * 32, (), (2, 32)),  # equal prompts: padding costs nothing, keep one view
     ([0, 0, 1, 1, 2, 2, 3], (), (4, 2)),  # a short run: a matmul of its own costs more
     # peeling saves 4 x 10 - 3 x 2 rows, costs 10 + 8; the rest is one slice
     ([*[0] * 10, 1, 1, 2, 2, 3, 3], ((0, 0, 10),), (3, 2))])
def test_long_runs_are_peeled_only_where_that_is_cheaper(slots, peeled, padded_shape):
    batch = LoRABatch.build(slots)
    assert batch.peeled == peeled
    assert tuple(batch.padded_tokens.shape) == padded_shape
    assert batch.max_seg_len == max(slots.count(s) for s in set(slots) - {N})  # the kernels' view
    assert_each_adapter_token_in_one_place(batch, slots)


def assert_each_adapter_token_in_one_place(batch: LoRABatch, slots: list[int]) -> None:
    """Peeled runs, diagonals and the padded view's real rows hold every adapter token once,
    each piece with its tokens' own slots."""
    padded = batch.padded_tokens.reshape(-1)
    if batch.padded_valid is not None:
        padded = padded[batch.padded_valid]
    covered = padded.tolist() + [t for _, start, stop in batch.peeled + batch.diagonals
                                 for t in range(start, stop)]
    assert sorted(covered) == [t for t, s in enumerate(slots) if s != N]
    for slot, start, stop in batch.peeled:
        assert slots[start:stop] == [slot] * (stop - start)
    for first, start, stop in batch.diagonals:
        assert slots[start:stop] == list(range(first, first + stop - start))


@pytest.mark.parametrize(
    ("slots", "peeled", "diagonals"),
    [(SLOT_PATTERNS["uneven_decode"], ((0, 1, 4), (1, 4, 6)), ((2, 6, 8),)),
     (SLOT_PATTERNS["uneven_decode_with_gap"], ((0, 0, 6), (2, 8, 14)), ((1, 6, 7), (3, 7, 8))),
     ([0, 0, 0, 1, 2, 3], ((0, 0, 3),), ((1, 3, 6),)),
     ([*[0] * 30, 1, N, 2, 2], ((0, 0, 30), (2, 32, 34)), ((1, 30, 31),)),
     ([0, 0, 0, 2, 2], ((0, 0, 3), (2, 3, 5)), ()),  # runs alone, around an unused slot
     ([0, 1, 2, 3], (), ()),  # one token per slot: the padded view is one slice already
     ([0, 0, 1, 1, 2, 2, 3], (), ()),  # gathered: four pieces cost more than the padding
     ([*[0] * 4, 1, 3, *[2] * 4], (), ())])  # likewise
def test_uneven_decode_is_cut_into_runs_and_diagonals(slots, peeled, diagonals):
    """Where the padded view would need gathering, the step is cut into pieces when cheaper:
    every adapter token is then in exactly one run or diagonal."""
    batch = LoRABatch.build(slots)
    assert (batch.peeled, batch.diagonals) == (peeled, diagonals)
    if diagonals:  # a cut step has no padded view at all
        assert batch.padded_tokens.numel() == 0
    assert_each_adapter_token_in_one_place(batch, slots)


@pytest.mark.parametrize(
    ("pattern", "sole_slot"),
    [("one_adapter_all_tokens", 1), ("single_token", 3), ("one_adapter_some_tokens", None),
     ("equal_segments", None)],
)
def test_sole_slot_only_when_one_adapter_owns_every_token(pattern, sole_slot):
    assert LoRABatch.build(SLOT_PATTERNS[pattern]).sole_slot == sole_slot


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_sizes", list(OUT_SIZES))
@pytest.mark.parametrize("pattern", list(SLOT_PATTERNS))
def test_add_lora_matches_loop(problem_factory, matches_reference, pattern, out_sizes, dtype):
    problem = problem_factory(SLOT_PATTERNS[pattern], out_sizes=OUT_SIZES[out_sizes], dtype=dtype)
    out = problem.out.clone()
    torch_ops.add_lora(out, problem.x, problem.lora_a, problem.lora_b, problem.batch())
    matches_reference(out, problem)


@pytest.mark.parametrize("rank", [8, 16, 32, 64])
def test_ranks(problem_factory, matches_reference, rank):
    problem = problem_factory([0, 1, N, 1, 3], rank=rank, in_features=33, out_sizes=(20, 12))
    out = problem.out.clone()
    torch_ops.add_lora(out, problem.x, problem.lora_a, problem.lora_b, problem.batch())
    matches_reference(out, problem)


def test_no_adapter_rows_untouched(problem_factory):
    problem = problem_factory([N, 0, N, 2, N], out_sizes=(16, 8))
    out = problem.out.clone()
    torch_ops.add_lora(out, problem.x, problem.lora_a, problem.lora_b, problem.batch())
    base_rows = [0, 2, 4]
    assert torch.equal(out[base_rows], problem.out[base_rows])


@pytest.mark.parametrize("slots", [[], [N, N, N]], ids=["empty_batch", "all_no_adapter"])
def test_nothing_to_add(problem_factory, slots):
    problem = problem_factory(slots, out_sizes=(8,))
    batch = problem.batch()
    assert batch.is_empty
    out = problem.out.clone()
    torch_ops.add_lora(out, problem.x, problem.lora_a, problem.lora_b, batch)
    add_lora(out, problem.x, problem.lora_a, problem.lora_b, batch)
    assert torch.equal(out, problem.out)


def test_reference_shrink_expand_match_loop(problem_factory, matches_reference):
    problem = problem_factory([2, N, 0, 2], out_sizes=(12, 4, 4))
    batch = problem.batch()
    y = torch_ops.shrink(problem.x, problem.lora_a, batch)
    assert torch.equal(y[1], torch.zeros_like(y[1]))  # base-model token
    out = problem.out.clone()
    torch_ops.expand(out, y, problem.lora_b, batch)
    matches_reference(out, problem)


def test_strided_views(problem_factory, matches_reference):
    """Slot tensors are per-layer views of [layers, slots, ...] buffers; out is a column slice."""
    problem = problem_factory([1, 0, N, 1, 1], in_features=24, out_sizes=(8, 8))
    layers_a = torch.zeros(3, *problem.lora_a.shape)
    layers_a[1] = problem.lora_a
    layers_b = [torch.zeros(3, *b.shape) for b in problem.lora_b]
    for buffer, b in zip(layers_b, problem.lora_b, strict=True):
        buffer[1] = b
    wide = torch.zeros(problem.out.shape[0], problem.out.shape[1] + 5)
    wide[:, 5:] = problem.out
    add_lora(wide[:, 5:], problem.x, layers_a[1], [b[1] for b in layers_b], problem.batch())
    matches_reference(wide[:, 5:], problem)


@pytest.mark.parametrize("out_sizes", list(OUT_SIZES))
@pytest.mark.parametrize("pattern", list(SLOT_PATTERNS))
def test_row_major_a_as_the_slots_store_it(problem_factory, matches_reference, pattern, out_sizes):
    """The engine passes A as a transposed view of row-major [slots, n, in] storage, which
    sends few-token rows (decoding) through the A-major shrink; results must not change."""
    problem = problem_factory(SLOT_PATTERNS[pattern], in_features=24, out_sizes=OUT_SIZES[out_sizes])
    a_rows = problem.lora_a.transpose(-1, -2).contiguous()
    out = problem.out.clone()
    torch_ops.add_lora(out, problem.x, a_rows.transpose(-1, -2), problem.lora_b, problem.batch())
    matches_reference(out, problem)


@pytest.mark.parametrize("out_sizes", list(OUT_SIZES))
@pytest.mark.parametrize("pattern", list(SLOT_PATTERNS))
def test_float32_slots_for_a_bfloat16_model(problem_factory, reference, pattern, out_sizes):
    """The CPU engine keeps a bfloat16 model's slots in float32: the delta is summed in
    float32 and rounded into out once, so it is within one bfloat16 rounding of the loop's."""
    problem = problem_factory(SLOT_PATTERNS[pattern], out_sizes=OUT_SIZES[out_sizes],
                              dtype=torch.bfloat16)
    out = problem.out.clone()
    torch_ops.add_lora(out, problem.x, problem.lora_a.float(), [b.float() for b in problem.lora_b],
                       problem.batch())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), reference(problem), atol=8e-3, rtol=8e-3)


def test_slot_dtype_is_float32_for_half_models_on_cpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert lora_dtype(torch.bfloat16, cpu) == lora_dtype(torch.float16, cpu) == torch.float32
    assert lora_dtype(torch.float32, cpu) == torch.float32
    assert lora_dtype(torch.bfloat16, cpu, requested=torch.bfloat16) == torch.bfloat16
    assert lora_dtype(torch.bfloat16, cuda, requested=torch.float32) == torch.bfloat16


def test_cpu_uses_torch_backend():
    assert backend_for(torch.device("cpu")) == "torch"


def test_unknown_backend_is_an_error(problem_factory):
    problem = problem_factory([0], out_sizes=(8,))
    with pytest.raises(ValueError, match="unknown LoRA backend"):
        add_lora(
            problem.out, problem.x, problem.lora_a, problem.lora_b, problem.batch(), backend="cuda"
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_sizes", OUT_SIZES.values(), ids=OUT_SIZES.keys())
def test_fixed_shape_batch_takes_the_per_token_path(problem_factory, matches_reference, dtype,
                                                    out_sizes):
    """A captured decode step's batch (padding rows last, spare segment rows) on the torch
    path: each token's own A and B, whatever the segments."""
    slots = [N, 0, 2, 2, 3, N, N]
    problem = problem_factory(slots, rank=8, out_sizes=out_sizes, dtype=dtype)
    batch = LoRABatch.fixed(torch.tensor(segment_table(slots, 9), device="cpu"), len(slots), 4)
    out = problem.out.clone()
    add_lora(out, problem.x, problem.lora_a, problem.lora_b, batch)
    matches_reference(out, problem)


def test_segment_table_pads_tokens_and_segments():
    table = segment_table([N, 1, 1, 3], 6)
    assert table == [N, 1, 1, 3, N, N,  # token slots
                     1, 2, 3, 0, 0, 0,  # sorted tokens
                     1, 3, 0, 0, 0, 0,  # segment slots
                     0, 2, 0, 0, 0, 0,  # segment starts
                     2, 1, 0, 0, 0, 0]  # segment lengths
