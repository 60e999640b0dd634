"""The paged-decode kernel against the torch attention path and a float64 loop, in the Triton
interpreter on small shapes (``TRITON_INTERPRET=0`` on a GPU runs the compiled kernel)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="Triton is not installed: pip install 'loraserve[triton]'")

from loraserve.kernels.paged_decode import paged_decode  # noqa: E402
from loraserve.model.attention import paged_attention  # noqa: E402
from loraserve.model.forward_batch import ForwardBatch, decode_group  # noqa: E402

DEVICE = "cpu" if os.environ["TRITON_INTERPRET"] == "1" else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET=0 runs compiled kernels, which need a GPU", allow_module_level=True)

BLOCK_SIZE = 4
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def make_case(kv_lens, heads, kv_heads, head_dim, dtype, num_blocks=24, seed=0):
    """A KV cache with each sequence's blocks scattered at random, and the decode token's
    q/k/v (its K/V not in the cache yet: attention writes them at slot_mapping)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, head_dim, generator=gen, device="cpu")
    v_cache = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, head_dim, generator=gen, device="cpu")
    order = torch.randperm(num_blocks, generator=gen, device="cpu").tolist()
    max_blocks = max(-(-n // BLOCK_SIZE) for n in kv_lens)
    tables, slots = [], []
    for n in kv_lens:
        blocks = [order.pop() for _ in range(-(-n // BLOCK_SIZE))]
        tables.append(blocks + [0] * (max_blocks - len(blocks)))
        slots.append(blocks[(n - 1) // BLOCK_SIZE] * BLOCK_SIZE + (n - 1) % BLOCK_SIZE)
    q, k, v = (torch.randn(len(kv_lens), h, head_dim, generator=gen, device="cpu")
               for h in (heads, kv_heads, kv_heads))
    to = dict(device=DEVICE, dtype=dtype)
    return dict(
        q=q.to(**to), k=k.to(**to), v=v.to(**to), k_cache=k_cache.to(**to), v_cache=v_cache.to(**to),
        block_tables=torch.tensor(tables, device=DEVICE),
        kv_lens=torch.tensor(kv_lens, device=DEVICE),
        slot_mapping=torch.tensor(slots, device=DEVICE),
    )


def torch_path(case, window):
    """The engine's gather + SDPA attention on the same cache (it writes the step's K/V)."""
    batch = ForwardBatch(
        input_ids=case["slot_mapping"], positions=case["kv_lens"] - 1,
        slot_mapping=case["slot_mapping"], block_tables=case["block_tables"],
        attention=(decode_group(case["block_tables"], case["kv_lens"], BLOCK_SIZE, window),),
        logits_indices=case["slot_mapping"], lora=None,
    )
    k_cache, v_cache = case["k_cache"].clone(), case["v_cache"].clone()
    return paged_attention(case["q"], case["k"], case["v"], k_cache, v_cache, batch, window)


def loop_reference(case, window):
    """float64, one sequence and head at a time, keys read position by position."""
    k_cache, v_cache = case["k_cache"].double().clone(), case["v_cache"].double().clone()
    flat_k, flat_v = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    flat_k[case["slot_mapping"]] = case["k"].double()
    flat_v[case["slot_mapping"]] = case["v"].double()
    num_seqs, heads, head_dim = case["q"].shape
    group = heads // k_cache.shape[2]
    out = torch.zeros(num_seqs, heads, head_dim, dtype=torch.float64, device=DEVICE)
    for s, n in enumerate(case["kv_lens"].tolist()):
        first = max(n - window, 0) if window else 0
        rows = [case["block_tables"][s, p // BLOCK_SIZE].item() * BLOCK_SIZE + p % BLOCK_SIZE
                for p in range(first, n)]
        for h in range(heads):
            keys, values = flat_k[rows, h // group], flat_v[rows, h // group]
            weights = (keys @ case["q"][s, h].double() * head_dim**-0.5).softmax(0)
            out[s, h] = weights @ values
    return out.view(num_seqs, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "window"), [
    (4, 4, 16, None),  # no GQA
    (6, 2, 24, None),  # GQA group of 3, head_dim not a power of two
    (4, 1, 16, 5),  # multi-query, sliding window inside a block and across blocks
])
def test_paged_decode_matches_the_torch_path(dtype, heads, kv_heads, head_dim, window):
    case = make_case([1, 3, 4, 9, 17], heads, kv_heads, head_dim, dtype)
    k_cache, v_cache = case["k_cache"].clone(), case["v_cache"].clone()
    flat = case["slot_mapping"]  # the kernel reads the step's K/V from the cache, as the engine writes it
    k_cache.view(-1, kv_heads, head_dim)[flat] = case["k"]
    v_cache.view(-1, kv_heads, head_dim)[flat] = case["v"]
    got = paged_decode(case["q"], k_cache, v_cache, case["block_tables"], case["kv_lens"], window)
    tol = TOLERANCE[dtype]
    want = loop_reference(case, window)
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    torch.testing.assert_close(got.double(), torch_path(case, window).double(), atol=2 * tol, rtol=2 * tol)


def test_attention_takes_the_kernel_for_a_paged_decode_batch():
    """ForwardBatch.paged_decode routes attention to the kernel, which writes K/V first."""
    case = make_case([2, 7], 4, 2, 16, torch.float32)
    context = case["block_tables"].shape[1] * BLOCK_SIZE
    batch = ForwardBatch(
        input_ids=case["slot_mapping"], positions=case["kv_lens"] - 1,
        slot_mapping=case["slot_mapping"], block_tables=case["block_tables"], attention=(),
        logits_indices=case["slot_mapping"], lora=None, kv_lens=case["kv_lens"], paged_decode=True,
    )
    got = paged_attention(case["q"], case["k"], case["v"], case["k_cache"].clone(),
                          case["v_cache"].clone(), batch, None)
    assert context == 8
    torch.testing.assert_close(got.double(), loop_reference(case, None), atol=1e-5, rtol=1e-5)
