"""Training speed of the default model (TrainConfig()) on a prepared dataset.

Prints seconds per step, words per second, the projected time of a full run
(``max_steps``, 80,000 by default) on each device present, and a torch.profiler
table of the operators that take the time. Exits 1 when a projected run misses its
target: 4 h on the CPU, 15 min on a GPU (issue "long memory").

    nice -n 10 .venv/bin/python bench/train.py --data data/pop909 --steps 50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from cwcompose.training import TrainConfig, Trainer

TARGET_HOURS = {"cpu": 4.0, "cuda": 0.25}  # a full run of the default config


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/pop909"), help="folder written by `cwcompose prepare`")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, kernels)")
    p.add_argument("--profile-steps", type=int, default=5, help="steps under the profiler (0: none)")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="'all': CPU, and CUDA if present")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p.parse_args()


def make_trainer(data: Path, out: Path, device: torch.device) -> Trainer:
    """A Trainer of the default config, moved to ``device`` (parameters move in place, so
    the optimizer, which has no state yet, keeps pointing at them)."""
    trainer = Trainer(data, out, TrainConfig(), progress=False)
    trainer.model.to(device)
    trainer.device = device
    return trainer


def run_steps(trainer: Trainer, steps: int) -> None:
    for _ in range(steps):
        trainer.train_step()
        trainer.step += 1


def seconds_per_step(trainer: Trainer, steps: int, warmup: int) -> float:
    run_steps(trainer, warmup)
    synchronize(trainer.device)
    started = time.perf_counter()
    run_steps(trainer, steps)
    synchronize(trainer.device)
    return (time.perf_counter() - started) / steps


def profile_table(trainer: Trainer, steps: int) -> str:
    """The top operators by their own time over ``steps`` steps."""
    on_cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        run_steps(trainer, steps)
        synchronize(trainer.device)
    sort_by = "self_cuda_time_total" if on_cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=15, max_name_column_width=45)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_device(args: argparse.Namespace, device: torch.device) -> bool:
    """Time the default config on ``device``; True when the projected full run meets its target."""
    cfg = TrainConfig()
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(args.data, Path(out), device)
        words = cfg.batch_size * cfg.seq_len
        s = seconds_per_step(trainer, args.steps, args.warmup)
        hours = s * cfg.max_steps / 3600
        m = trainer.model.config
        print(f"\nmodel: d_model {m.d_model}, {m.n_layers} layers, {m.n_heads} heads, d_ff {m.d_ff}, "
              f"{trainer.model.num_parameters() / 1e6:.2f} M parameters")
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"== {name}: {args.steps} steps after {args.warmup} warm-up")
        target = TARGET_HOURS[device.type]
        met = hours <= target
        print(f"{s * 1000:.1f} ms/step  {1 / s:.2f} steps/s  {words / s:,.0f} words/s  "
              f"-> {cfg.max_steps:,} steps = {hours:.2f} h (target <= {target:g} h: {'met' if met else 'MISSED'})")
        if args.profile_steps:
            print(profile_table(trainer, args.profile_steps))
        return met


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig()
    print(f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
          "(other work on the machine slows the CPU figures)")
    print(f"TrainConfig(): seq_len {cfg.seq_len}, batch {cfg.batch_size}, max_steps {cfg.max_steps:,}")
    devices = {"cpu": [torch.device("cpu")], "cuda": [torch.device("cuda")],
               "all": [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])}
    results = [bench_device(args, device) for device in devices[args.device]]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
