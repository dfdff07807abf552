"""The worker's memory as glibc's allocator holds it: large blocks mapped on their own, freed memory given back.

glibc raises its threshold for mapping a block on its own as blocks are freed (up to 32 MiB), so a
worker's large buffers (query results, fetched batches, an initial sync's 100,000 records) come
from the heap, and a heap with live objects above freed ones cannot shrink. A fixed threshold and
``malloc_trim`` after the bootstrap and every 30 s kept an initial sync's peak RSS lower without
costing drain throughput; limiting the arenas instead cost ~10 % of it (README, "The initial sync").
Elsewhere than glibc (musl, macOS) these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
MAPPED_FROM = 128 * 1024  # glibc's initial threshold, kept


@functools.cache  # find_library runs ldconfig: once, not every 30 s
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def map_large_blocks(size: int = MAPPED_FROM) -> None:
    """Blocks of ``size`` bytes or more mapped on their own, so that freeing one returns it (the threshold fixed)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, size)


def give_back() -> None:
    """Return the memory freed so far to the system (``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
