"""Freed memory goes back to the operating system (the soak's flat RSS depends on it)."""

import gc
import threading
from pathlib import Path

import pytest

from cwcompose.memory import release_free_memory


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_free_pages_held_by_a_worker_threads_arena_are_returned():
    kept = []

    def work():  # as a Gradio worker: many small blocks made and freed on its own arena
        blocks = [bytes(1000 + i % 7) for i in range(150_000)]
        kept.append(bytes(1000))  # allocated last, so the arena's top stays in use and glibc keeps the rest
        del blocks

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    gc.collect()
    before = resident_mb()
    if not release_free_memory():
        pytest.skip("the C library is not glibc")
    after = resident_mb()
    assert before - after > 100, f"resident memory {before:.0f} MB -> {after:.0f} MB after the release"

