"""Triton shrink/expand against the float64 per-token reference, in the Triton interpreter.

The interpreter runs the kernels on CPU tensors; it must be switched on before the kernels
are decorated, so before `loraserve.kernels.triton_ops` is imported. On a GPU machine,
`TRITON_INTERPRET=0 pytest tests/lora_kernels` runs the same tests on the compiled kernels.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="Triton is not installed: pip install 'loraserve[triton]'")

from loraserve.kernels import (  # noqa: E402
    NO_ADAPTER,
    LoRABatch,
    add_lora,
    backend_for,
    dispatch,
    segment_table,
    torch_ops,
)
from loraserve.kernels.triton_ops import ExpandParams, ShrinkParams, expand, shrink  # noqa: E402

DEVICE = "cpu" if os.environ["TRITON_INTERPRET"] == "1" else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip(
        "TRITON_INTERPRET=0 runs compiled kernels, which need a GPU", allow_module_level=True
    )

N = NO_ADAPTER
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GQA_QKV = (32, 8, 8)  # q, k, v of different widths
SLOTS = [0, 2, N, 2, 3, 0, N, 2, 2, 1, 0]  # segments of 3, 1, 4, 1 tokens


@pytest.fixture
def problem_factory(problem_factory):
    """Problems on the device the kernels run on: CPU in the interpreter, else CUDA."""
    return functools.partial(problem_factory, device=DEVICE)


def run_triton(problem, shrink_params=None, expand_params=None) -> torch.Tensor:
    """Shrink then expand with the given (or dispatch-chosen) launch parameters."""
    batch = problem.batch()
    rank = problem.lora_b[0].shape[2]
    seg = (batch.max_seg_len, batch.num_segments)
    shrink_params = shrink_params or dispatch.shrink_params(*seg, *problem.lora_a.shape[1:])
    expand_params = expand_params or dispatch.expand_params(*seg, rank)
    out = problem.out.clone()
    y = shrink(problem.x, problem.lora_a, batch, shrink_params)
    expand(out, y, problem.lora_b, batch, expand_params)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rank", [8, 16, 32, 64])
def test_ranks_and_dtypes(problem_factory, matches_reference, rank, dtype):
    problem = problem_factory(SLOTS, in_features=48, rank=rank, out_sizes=GQA_QKV, dtype=dtype)
    matches_reference(run_triton(problem), problem)


@pytest.mark.parametrize("in_features", [1, 13, 100])
@pytest.mark.parametrize("out_sizes", [(17,), (33, 5)], ids=["one_slice", "two_slices"])
def test_masked_tails(problem_factory, matches_reference, in_features, out_sizes):
    problem = problem_factory(SLOTS, in_features=in_features, out_sizes=out_sizes)
    matches_reference(run_triton(problem), problem)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_small_tiles_split_k(problem_factory, matches_reference, dtype):
    """Several m, n and k tiles per segment, and split-K's atomic adds."""
    slots = [1] * 37 + [N] * 3 + [0] * 5
    problem = problem_factory(slots, in_features=90, rank=16, out_sizes=(40, 24), dtype=dtype)
    out = run_triton(
        problem,
        ShrinkParams(block_m=16, block_n=16, block_k=16, split_k=4),
        ExpandParams(block_m=16, block_n=16, block_r=16),
    )
    matches_reference(out, problem)


def test_single_token(problem_factory, matches_reference):
    problem = problem_factory([3], out_sizes=GQA_QKV)
    matches_reference(run_triton(problem), problem)


def test_thousands_of_tokens(problem_factory, matches_reference):
    slots = [i % 5 - 1 for i in range(2048)]  # 4 adapters and base-model tokens interleaved
    problem = problem_factory(slots, in_features=24, rank=8, out_sizes=(16,))
    matches_reference(run_triton(problem), problem)


@pytest.mark.parametrize("slots", [[], [N, N, N]], ids=["empty_batch", "all_no_adapter"])
def test_nothing_to_add(problem_factory, slots):
    problem = problem_factory(slots, out_sizes=GQA_QKV)
    y = shrink(problem.x, problem.lora_a, problem.batch(), ShrinkParams())
    assert y.shape == (0, 3 * 8)
    assert torch.equal(run_triton(problem), problem.out)


def test_no_adapter_rows_untouched(problem_factory):
    problem = problem_factory(SLOTS, out_sizes=GQA_QKV, dtype=torch.float16)
    out = run_triton(problem)
    base_rows = [t for t, slot in enumerate(SLOTS) if slot == N]
    assert torch.equal(out[base_rows], problem.out[base_rows])


def test_shrink_rows_follow_sorted_tokens(problem_factory):
    problem = problem_factory(SLOTS, out_sizes=GQA_QKV)
    batch = problem.batch()
    y = shrink(problem.x, problem.lora_a, batch, ShrinkParams())
    want = torch_ops.shrink(problem.x, problem.lora_a, batch)[batch.sorted_tokens]
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_strided_views(problem_factory, matches_reference):
    """Per-layer views of [layers, slots, ...] buffers, a transposed x, a column slice of out."""
    problem = problem_factory(SLOTS, in_features=24, out_sizes=(16, 8))
    layers_a = torch.zeros(3, *problem.lora_a.shape, device=DEVICE)
    layers_a[2] = problem.lora_a
    layers_b = [
        torch.zeros(2, *b.shape, device=DEVICE).transpose(-1, -2).contiguous().transpose(-1, -2)
        for b in problem.lora_b
    ]
    for buffer, b in zip(layers_b, problem.lora_b, strict=True):
        buffer[1] = b
    x = problem.x.t().contiguous().t()  # column-major
    wide = torch.zeros(problem.out.shape[0], problem.out.shape[1] + 3, device=DEVICE)
    wide[:, 3:] = problem.out
    add_lora(
        wide[:, 3:], x, layers_a[2], [b[1] for b in layers_b], problem.batch(), backend="triton"
    )
    matches_reference(wide[:, 3:], problem)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_dispatch_triton_equals_torch_path(problem_factory, dtype):
    """Both backends through the one entry point, in the model dtype."""
    problem = problem_factory(SLOTS, in_features=64, rank=16, out_sizes=(32, 32), dtype=dtype)
    batch = problem.batch()
    got, want = problem.out.clone(), problem.out.clone()
    add_lora(got, problem.x, problem.lora_a, problem.lora_b, batch, backend="triton")
    add_lora(want, problem.x, problem.lora_a, problem.lora_b, batch, backend="torch")
    tol = {torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]  # twice the loop's: both round
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_cuda_selects_triton():
    assert backend_for(torch.device("cuda")) == "triton"


def test_mismatched_dtypes_are_an_error(problem_factory):
    problem = problem_factory([0], out_sizes=(8,))
    with pytest.raises(ValueError, match="load adapters in the model dtype"):
        shrink(problem.x.half(), problem.lora_a, problem.batch(), ShrinkParams())


def test_dispatch_params_split_k_for_decode(problem_factory, matches_reference):
    """Few tokens and a long `in`: dispatch splits K, and the result is still exact."""
    params = dispatch.shrink_params(1, 4, 1024, 3 * 16)
    assert params.split_k > 1
    problem = problem_factory([0, 3, N, 1, 2], in_features=1024, rank=16, out_sizes=(64, 32, 32))
    matches_reference(run_triton(problem), problem)


@pytest.mark.parametrize("rank", [8, 16, 32, 64, 128])
def test_dispatch_params_cover_rank(rank):
    params = dispatch.expand_params(300, 16, rank)
    assert params.block_r >= rank
    assert params.block_r & (params.block_r - 1) == 0  # tl.dot tiles are powers of two


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fixed_shape_batch_of_a_captured_decode_step(problem_factory, matches_reference, dtype):
    """A graph's batch: base rows first (the runner's order), padding rows last, a table
    wider than the batch and more segment rows than segments (length 0, skipped)."""
    slots = [N, N, 0, 2, 2, 3, N, N]
    problem = problem_factory(slots, in_features=48, rank=16, out_sizes=GQA_QKV, dtype=dtype)
    table = torch.tensor(segment_table(slots, 12), device=DEVICE)
    batch = LoRABatch.fixed(table, len(slots), num_segments=4)
    assert batch.seg_lens.tolist() == [1, 2, 1, 0]
    out = problem.out.clone()
    add_lora(out, problem.x, problem.lora_a, problem.lora_b, batch, backend="triton")
    matches_reference(out, problem)
