"""Every Triton kernel compiles for an H100/H200 (sm_90) here, without a GPU: the checks of
compiled Triton that the interpreter tests skip. In a subprocess, since other kernel tests
switch the interpreter on for this one."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

# not imported here: Triton decides interpreter or compiler once, when first imported, and
# the interpreter tests beside this one need it imported after TRITON_INTERPRET=1
if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed: pip install 'loraserve[triton]'", allow_module_level=True)

PROGRAM = """
import triton.language as tl
from loraserve.kernels import paged_decode, triton_ops
from loraserve.testing.triton_compile import compile_for_gpu

ptr = {n: "*i64" for n in ("sorted_tokens_ptr", "seg_slots_ptr", "seg_starts_ptr", "seg_lens_ptr")}
# bf16 tensor cores for shrink (with split-K's atomics), fp32 "ieee" dots for expand
print(compile_for_gpu(triton_ops._shrink_kernel,
                      {"x_ptr": "*bf16", "a_ptr": "*bf16", "y_ptr": "*fp32", **ptr},
                      dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=256, SPLIT_K=4,
                           DOT=triton_ops.DOT_NATIVE))[-1])
print(compile_for_gpu(triton_ops._expand_kernel,
                      {"y_ptr": "*fp32", "meta_ptr": "*i64", "out_ptr": "*fp32", **ptr},
                      dict(BLOCK_M=16, BLOCK_N=64, BLOCK_R=16, B_DTYPE=tl.float32,
                           DOT=triton_ops.DOT_IEEE))[-1])
for dtype, group, head_dim in (("bf16", 1, 24), ("fp32", 4, 64)):
    tensors = {n: "*" + dtype for n in ("q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr")}
    print(compile_for_gpu(paged_decode._paged_decode_kernel,
                          {**tensors, "block_tables_ptr": "*i64", "kv_lens_ptr": "*i64", "scale": "fp32"},
                          dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=16,
                               BLOCK_D=max(16, 1 << (head_dim - 1).bit_length()), BLOCK_G=group))[-1])
"""


def test_triton_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                          text=True, timeout=600, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["cubin"] * 4
