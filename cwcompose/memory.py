"""Keeping the server's memory flat: fewer malloc arenas, and free pages given back.

glibc's malloc gives each new thread its own arena (up to 8 per core) and keeps what a thread
frees there, for that thread to reuse. The app composes on Gradio's dozens of worker threads,
each now and then, so under steady traffic the server's resident memory crept up
(``bench/soak.py``: +12% in 26 minutes) while Python's own allocations stayed flat: the growth
was free pages held in many arenas. With two arenas and the free pages handed back once a
minute the soak stays within its 5%.
"""

from __future__ import annotations

import ctypes
import functools


M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


@functools.cache
def _glibc():
    """The C library when it is glibc (it has ``malloc_trim``), else None (macOS, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_malloc_arenas(count: int = 2) -> bool:
    """Let malloc make at most ``count`` arenas from now on (call it before the server starts
    its threads); False where that is not possible here."""
    libc = _glibc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, count) == 1


def release_free_memory() -> bool:
    """Return the heap pages that are free in every malloc arena to the operating system;
    False where that is not possible here (then nothing happens)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True

