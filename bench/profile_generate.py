"""Where the decode loop spends its time: torch ops per word and their self CPU time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_generate.py [--batch 1] [--words 200] [--compile]

Runs the bench's loop (bench/generate.py ``run_words``) under torch.profiler after a
warm-up and prints the ops table sorted by self CPU time, with calls per word.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import load, run_words  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="28500")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _, what = load(args.checkpoint)
    run_words(model, args.batch, 50, compile=args.compile)
    started = time.perf_counter()
    run_words(model, args.batch, args.words, compile=args.compile)
    plain = (time.perf_counter() - started) / args.words * 1000
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_words(model, args.batch, args.words, compile=args.compile)
    events = prof.key_averages()
    ops = [e for e in events if e.key.startswith("aten::")]
    calls = sum(e.count for e in ops)
    print(f"{what}, batch {args.batch}, {args.words} words, load average {os.getloadavg()[0]:.2f}: "
          f"{plain:.3f} ms/word unprofiled; {calls / args.words:.0f} aten calls per word (nested included)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
