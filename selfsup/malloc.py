"""Freed memory kept in the process (glibc), so that large tensors are reused instead of mapped afresh.

glibc serves large blocks (above a threshold it adapts at run time, at most 32 MB) with mmap, returns them
to the system when they are freed, and trims the free top of its heap. A training step on the CPU then
page-faults its activations and views in anew at every step: on the 2-core CPU, the copy of a 38 MB tensor
took 15 ms instead of 2.5. ``keep_freed_memory()`` raises both thresholds (``mallopt``), so freed blocks
are reused. Measured on the 2-core CPU (``benchmarks/malloc.py``; README, "Tests and benchmarks"): a SimCLR
step 1.29x faster on the convnet at 32 px, 1.06x on ResNet-18 at 32 px, 1.53x on ResNet-18 at 224 px, and
the streamed 224 px views 1.24x. The cost: the process holds on to its peak memory until it exits
(DataLoader workers inherit the setting). Linux with glibc only; elsewhere, or with ``SELFSUP_KEEP_MEMORY=0``,
nothing changes. What jemalloc or tcmalloc (``LD_PRELOAD``) do, without a library to install.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 30              # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 32) - 1        # the heap's free top is never given back while the process runs
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True when they are set."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux") and os.environ.get("SELFSUP_KEEP_MEMORY", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                    bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError):      # not glibc (musl has no mallopt)
                _done = False
    return _done
