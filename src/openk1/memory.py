"""The C allocator's settings for training on a CPU: freed memory is kept for reuse.

PyTorch on a CPU allocates every activation with malloc. With glibc's defaults a freed block of
some MiB goes back to the operating system (the top of the heap is trimmed past 128 KiB, blocks
past a dynamic threshold are mmapped and unmapped), so the next forward pass takes the same
memory back one page fault at a time: at an RL update's micro-batches (tens of MiB per
activation) over a hundred thousand minor faults per micro-batch, each a page zeroed by the
kernel, and their cost varies with how busy the host is. `keep_freed_memory` sets glibc to keep what it
frees (mmap only from 32 MiB, its largest allowed threshold; no trimming below 1 GiB): the peak
stays where it was, the memory between peaks stays resident. The same reason PyTorch's CPU
performance guides point to jemalloc or tcmalloc; this needs no preload. `openk1` calls it at
start; OPENK1_MALLOC=default leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1     # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Apply the settings above; False (nothing changed) off glibc or with OPENK1_MALLOC=default."""
    if os.environ.get("OPENK1_MALLOC", "keep") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # musl and others: no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
