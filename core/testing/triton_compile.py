"""Compile a Triton kernel for a GPU this machine does not have (no driver needed).

The interpreter runs kernels on CPU but skips compiled Triton's type checks (a variable
given different types in two branches, a pointer cast, a ``tl.dot`` tile too small), so a
kernel that passes every interpreter test can still fail on its first GPU. Compiling it
to a cubin here finds those; run it in a process without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

from typing import Any


def compile_for_gpu(kernel: Any, types: dict[str, str], constexprs: dict[str, Any],
                    arch: int = 90) -> list[str]:
    """Compile ``kernel`` (a ``triton.jit`` function) for CUDA ``sm_<arch>``; returns the stages
    produced (``ptx``, ``cubin``, ...). ``types`` names each non-constexpr argument's type
    (``"*bf16"``, ``"i64"``, ``"fp32"``); arguments it leaves out are ``i32``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    unknown = (set(types) | set(constexprs)) - set(names)
    if unknown:
        raise ValueError(f"{kernel.__name__} has no argument(s) {sorted(unknown)}")
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(n),): v for n, v in constexprs.items()})
    return list(triton.compile(source, target=GPUTarget("cuda", arch, 32)).asm)
