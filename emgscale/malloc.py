"""Keep freed memory in the process (glibc's malloc), so a training step's large activations reuse pages.

With glibc's defaults every block over the mmap threshold (at most 32 MiB) is a fresh ``mmap`` that goes
back with ``munmap`` when freed, so the 50-150 MB activations of a TDS step at batch 32 are page-faulted in
(and zeroed by the kernel) again on every step: 1.66 M minor page faults per step, about a quarter of the
step's CPU time on a 2-core AVX2 host (``benchmarks/README.md``). :func:`keep_freed_memory` serves every
block from the heap and never trims it, so after the first step the pages are reused. The cost: the
process keeps its peak memory until it exits. A process-wide setting: call it once, at the start of a
training process, never from library code that others import.
"""

from __future__ import annotations

import ctypes
import platform
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve every block from the heap (``M_MMAP_MAX = 0``) and never trim it
    (``M_TRIM_THRESHOLD = -1``).

    Returns:
        True when both were set (Linux with glibc); False elsewhere, where nothing changes.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
