"""The host memory allocator a CPU engine runs on: tcmalloc when the system has it.

A CPU decode step makes and frees thousands of tensors. Under glibc's malloc the large ones
go back to the kernel and are page-faulted in again on the next step (15,000-25,000 faults,
28-53 ms of system time per 512-token run of ``benchmarks/multilora.py``'s workload with 16
adapters), and small ones are slower to get. tcmalloc keeps both in user space: 7-16 % more
tokens/s on that workload (``benchmarks/allocator.py``). vLLM's CPU backend asks for the same
preload.

An allocator is chosen when a process starts (``LD_PRELOAD``), so the ``loraserve`` command
runs itself again once with tcmalloc preloaded (``relaunch_with_tcmalloc``). A process that
is already running, such as a script using the offline ``LLM``, keeps glibc's malloc, tuned
to keep freed memory instead of returning it to the kernel (``configure_host_allocator``: no
more page faults, -2 to +6 % in speed). ``LORASERVE_ALLOCATOR=system`` leaves the allocator alone in both cases.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import sys

logger = logging.getLogger(__name__)

ALLOCATOR_ENV = "LORASERVE_ALLOCATOR"  # "system": never preload tcmalloc nor tune malloc
_FAST_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
# glibc's mallopt parameters (malloc.h) and the values a serving process wants: allocations
# up to 32 MiB (the largest threshold glibc takes) come from the heap, and the heap is
# trimmed only once 256 MiB sit free at its top, grown 64 MiB at a time
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_GLIBC_SETTINGS = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 256 << 20, _M_TOP_PAD: 64 << 20}


def preloaded_allocator(environ: dict[str, str] | None = None) -> str | None:
    """The fast allocator named in ``LD_PRELOAD`` (tcmalloc, jemalloc, mimalloc), if any."""
    preload = (os.environ if environ is None else environ).get("LD_PRELOAD", "")
    return next((name for name in _FAST_ALLOCATORS if name in preload), None)


def find_tcmalloc() -> str | None:
    """tcmalloc's shared library as the dynamic linker finds it (Debian: libtcmalloc-minimal4)."""
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def relaunch_with_tcmalloc() -> None:
    """Run this process's command line again with tcmalloc preloaded; return if there is
    nothing to do (not Linux, opted out, a fast allocator already in place, no tcmalloc)."""
    if (sys.platform != "linux" or not sys.executable or preloaded_allocator()
            or os.environ.get(ALLOCATOR_ENV) == "system"):
        return
    library = find_tcmalloc()
    if library is None:
        return
    preload = ":".join(filter(None, (library, os.environ.get("LD_PRELOAD"))))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
              {**os.environ, "LD_PRELOAD": preload})


@functools.cache
def configure_host_allocator() -> str:
    """Set up this process's allocator for serving, once, and log which it is."""
    name = preloaded_allocator()
    if name is not None:
        choice = f"{name} (preloaded)"
    elif os.environ.get(ALLOCATOR_ENV) == "system" or not _is_glibc():
        choice = "the system's malloc"
    else:
        libc = ctypes.CDLL(None)
        for param, value in _GLIBC_SETTINGS.items():
            libc.mallopt(param, value)
        choice = (f"glibc malloc, tuned to keep freed memory (LD_PRELOAD="
                  f"{find_tcmalloc() or 'libtcmalloc_minimal.so.4'} is faster)")
    logger.info("host allocator: %s", choice)
    return choice


def _is_glibc() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
