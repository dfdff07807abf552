"""The worker's memory as glibc's allocator holds it: fewer arenas, freed memory given back.

A worker's store and database calls run in threads; glibc gives threads arenas of their own (up
to 8 per core), and memory freed in one is kept for its thread. With two arenas, and the
bootstrap's freed memory returned after it, a worker's peak RSS in the initial sync stays lower
(README, "The initial sync"). Elsewhere than glibc (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_arenas(arenas: int = 2) -> None:
    """At most ``arenas`` malloc arenas from now on (call before threads start)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, arenas)


def give_back() -> None:
    """Return the memory freed so far to the system (``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
