"""Time the Triton LoRA kernels against the base projection and the torch path.

Llama-2-7B shapes (hidden 4096, intermediate 11008), 16 adapters of rank 16, each token
given a random adapter. For every projection and batch size it prints
    lora/base   (shrink + expand) / the base projection's GEMM   target <= 0.15 at >= 256 tokens
    triton/torch  Triton kernels / the torch path (`add_lora`)     target <= 0.33
Then decode attention at the same model's shapes (32 heads of 128, blocks of 16): the
paged-decode kernel, which reads each sequence's blocks in place, against the torch path
(gather every block, then scaled_dot_product_attention), per batch size and context length.
Needs a CUDA GPU and Triton: `python benchmarks/lora_kernels.py [--tokens 1 16 256 4096]`.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import dataclass

import torch

HIDDEN = 4096
INTERMEDIATE = 11008


@dataclass(frozen=True)
class Projection:
    name: str
    in_features: int
    out_sizes: tuple[int, ...]  # one per fused slice


LLAMA2_7B = [
    Projection("qkv_proj", HIDDEN, (HIDDEN, HIDDEN, HIDDEN)),
    Projection("o_proj", HIDDEN, (HIDDEN,)),
    Projection("gate_up_proj", HIDDEN, (INTERMEDIATE, INTERMEDIATE)),
    Projection("down_proj", INTERMEDIATE, (HIDDEN,)),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 4096])
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    return parser.parse_args()


def bench_ms(fn) -> float:
    """Median time of fn in milliseconds (triton's do_bench: warm-up, L2 flushed per run)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench_projection(proj: Projection, tokens: int, args: argparse.Namespace) -> dict:
    from loraserve.kernels import LoRABatch, add_lora
    from loraserve.lora.layout import slice_stacks

    dtype = getattr(torch, args.dtype)
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    n_out = sum(proj.out_sizes)

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(dtype)

    x = rand(tokens, proj.in_features, scale=1.0)  # [T, in]
    weight = rand(n_out, proj.in_features, scale=proj.in_features**-0.5)  # [out, in]
    lora_a = rand(args.adapters, proj.in_features, len(proj.out_sizes) * args.rank, scale=0.01)
    lora_b = [  # B stacks [slots, k, R, w], as the engine's slots hold them
        rand(args.adapters, count, args.rank, width, scale=0.01)
        for count, width in slice_stacks(proj.out_sizes)
    ]
    slots = torch.randint(0, args.adapters, (tokens,), generator=gen, device=dev).tolist()
    batch = LoRABatch.build(slots, device=dev)
    out = torch.nn.functional.linear(x, weight)  # [T, out]

    check_triton, check_torch = out.clone(), out.clone()
    add_lora(check_triton, x, lora_a, lora_b, batch, backend="triton")
    add_lora(check_torch, x, lora_a, lora_b, batch, backend="torch")
    torch.testing.assert_close(check_triton, check_torch, atol=2e-2, rtol=2e-2)

    base = bench_ms(lambda: torch.nn.functional.linear(x, weight))
    triton_ms = bench_ms(lambda: add_lora(out, x, lora_a, lora_b, batch, backend="triton"))
    torch_ms = bench_ms(lambda: add_lora(out, x, lora_a, lora_b, batch, backend="torch"))
    return {"base": base, "triton": triton_ms, "torch": torch_ms}


def bench_decode_attention(batch: int, context: int, dtype: torch.dtype) -> dict:
    """Paged-decode kernel vs gather + SDPA on one layer's cache, blocks scattered at random."""
    from loraserve.kernels.paged_decode import paged_decode
    from loraserve.model.attention import paged_attention
    from loraserve.model.forward_batch import ForwardBatch, decode_group

    dev, heads, head_dim, block = torch.device("cuda"), 32, 128, 16
    per_seq = context // block
    num_blocks = batch * per_seq + 1
    k_cache = torch.randn(num_blocks, block, heads, head_dim, device=dev, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks - 1, device=dev)[: batch * per_seq].view(batch, per_seq)
    kv_lens = torch.full((batch,), context, device=dev)
    q, k, v = (torch.randn(batch, heads, head_dim, device=dev, dtype=dtype) for _ in range(3))
    slots = tables[:, -1] * block + block - 1
    torch_batch = ForwardBatch(
        input_ids=slots, positions=kv_lens - 1, slot_mapping=slots, block_tables=tables,
        attention=(decode_group(tables, kv_lens, block, None),), logits_indices=slots, lora=None,
    )
    want = paged_attention(q, k, v, k_cache, v_cache, torch_batch, None)
    got = paged_decode(q, k_cache, v_cache, tables, kv_lens)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    return {
        "kernel": bench_ms(lambda: paged_decode(q, k_cache, v_cache, tables, kv_lens)),
        "gather": bench_ms(lambda: paged_attention(q, k, v, k_cache, v_cache, torch_batch, None)),
    }


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/lora_kernels.py needs a CUDA GPU; none is available here, nothing to time.")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("benchmarks/lora_kernels.py needs Triton: pip install 'loraserve[triton]'")
        return 0
    print(f"# {torch.cuda.get_device_name()}, {datetime.date.today()}, torch {torch.__version__}")
    print(f"# {args.adapters} adapters of rank {args.rank}, {args.dtype}, random adapter per token")
    header = f"{'projection':<13}{'tokens':>7}{'base ms':>10}{'triton ms':>11}{'torch ms':>10}"
    print(header + f"{'lora/base':>11}{'triton/torch':>14}")
    for proj in LLAMA2_7B:
        for tokens in args.tokens:
            t = bench_projection(proj, tokens, args)
            print(
                f"{proj.name:<13}{tokens:>7}{t['base']:>10.4f}{t['triton']:>11.4f}"
                f"{t['torch']:>10.4f}{t['triton'] / t['base']:>11.3f}"
                f"{t['triton'] / t['torch']:>14.3f}"
            )
    print(f"\n# decode attention, one layer, 32 heads x 128, {args.dtype}: paged-decode kernel vs gather + SDPA")
    print(f"{'batch':>6}{'context':>9}{'kernel ms':>11}{'gather ms':>11}{'kernel/gather':>15}")
    for batch in (16, 64):
        for context in (512, 2048):
            t = bench_decode_attention(batch, context, getattr(torch, args.dtype))
            print(f"{batch:>6}{context:>9}{t['kernel']:>11.4f}{t['gather']:>11.4f}"
                  f"{t['kernel'] / t['gather']:>15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
