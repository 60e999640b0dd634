"""The host memory allocator a CPU engine runs on: tcmalloc when the system has it.

A CPU decode step makes and frees thousands of tensors. Under glibc's malloc the large ones
go back to the kernel and are page-faulted in again on the next step (15,000-25,000 faults,
28-53 ms of system time per 512-token run of ``benchmarks/multilora.py``'s workload with 16
adapters), and small ones are slower to get. tcmalloc keeps both in user space: 7-16 % more
tokens/s on that workload (``benchmarks/allocator.py``). vLLM's CPU backend asks for the same
preload.

An allocator is chosen when a process starts (``LD_PRELOAD``), so the ``loraserve`` command
runs itself again once with tcmalloc preloaded (``relaunch_with_tcmalloc``);
``LORASERVE_ALLOCATOR=system`` opts out. A process that is already running, such as a script
using the offline ``LLM``, keeps its allocator: the engine logs which it is and how to preload
tcmalloc (``log_host_allocator``). Tuning glibc there instead (mallopt: no trimming, no mmap
below 32 MiB) removed the faults but moved the speed only -2 to +6 %, and it changes malloc
for everything else in the process (a Ray worker's own threads, for one), so loraserve
does not do it.
"""

from __future__ import annotations

import ctypes.util
import functools
import logging
import os
import sys

logger = logging.getLogger(__name__)

ALLOCATOR_ENV = "LORASERVE_ALLOCATOR"  # "system": the command does not preload tcmalloc
_FAST_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


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
def log_host_allocator() -> str:
    """Say once which allocator this process runs on, and how to get tcmalloc if it could."""
    name = preloaded_allocator()
    choice = f"{name} (preloaded)" if name else (
        f"the system's malloc; LD_PRELOAD={find_tcmalloc() or 'libtcmalloc_minimal.so.4'} "
        "is faster on CPU (docs/server.md, CPU tuning)")
    logger.info("host allocator: %s", choice)
    return choice
