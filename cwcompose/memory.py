"""Giving memory that Python and torch have freed back to the operating system.

glibc's malloc keeps what a thread frees in that thread's arena, for that thread to reuse.
The app composes on Gradio's dozens of worker threads, each now and then, so under steady
traffic the server's resident memory crept up (``bench/soak.py``: +12% in 26 minutes) while
no Python object or tensor accumulated: the growth was free pages held in arenas.
``malloc_trim(0)`` hands them back; called once a minute it keeps the soak flat.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time


@functools.cache
def _trim():
    """glibc's ``malloc_trim``, or None where the C library is not glibc (macOS, musl)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the heap pages that are free in every malloc arena to the operating system;
    False where that is not possible here (then nothing happens)."""
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True


def keep_releasing_free_memory(every_seconds: float = 60.0) -> threading.Thread:
    """Call :func:`release_free_memory` every ``every_seconds`` (seconds) in a daemon thread."""
    def release_forever() -> None:
        while True:
            time.sleep(every_seconds)
            release_free_memory()

    thread = threading.Thread(target=release_forever, name="release-free-memory", daemon=True)
    thread.start()
    return thread
