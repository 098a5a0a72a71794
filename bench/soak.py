"""Soak test: steady mixed traffic on app.py for a long while; the server's memory must level off.

    .venv/bin/python bench/soak.py                        # 30 minutes, 8 users, the shipped checkpoints
    .venv/bin/python bench/soak.py --minutes 4 --stand-ins tiny --warm-up 1 --every 30    # a quick look

The traffic is bench/load.py's: simulated users over HTTP, each pass of a user's script
(compose, rewind, continue, 4 variations, compare) on a fresh session (new visitors keep
arriving; old sessions are left behind), every result checked against that user's solo run.
Prints the server's RSS, its files on disk and the requests answered every ``--every`` seconds.
Passes when, after ``--warm-up`` minutes, RSS grows by at most ``--max-growth`` (5%): the
median of the last third of the samples against that of the first third, with no error and
no mixed result; exit status 1 otherwise.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402


def main() -> None:
    parser_args = sys.argv[1:]
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warm-up", type=float, default=5.0, help="minutes before the RSS baseline is taken")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between RSS lines")
    parser.add_argument("--max-growth", type=float, default=0.05, help="largest RSS growth after the warm-up")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5, help="requests per pass of a user's script")
    parser.add_argument("--bars", type=int, default=4)
    parser.add_argument("--stand-ins", choices=("tiny",), default=None)
    args = parser.parse_args(parser_args)
    warm_up = min(args.warm_up, args.minutes / 2) * 60

    work = Path(tempfile.mkdtemp(prefix="cwcompose-soak-"))
    load.prepare_checkpoints(work / "checkpoints", args.stand_ins)
    server = load.Server(work / "checkpoints", work / "server")
    samples: list[tuple[float, float]] = []
    try:
        users = load.make_users(args.users, args.requests, args.bars)
        load.solo_runs(users, server.url, work / "downloads")
        print(f"{args.users} users for {args.minutes:g} min; RSS after the solo runs {server.memory_mb()[0]:.0f} MB")
        print(f"{'minute':>7s} {'RSS MB':>7s} {'files':>6s} {'answered':>8s}  load average")

        def tick(elapsed: float) -> None:
            rss = server.memory_mb()[0]
            samples.append((elapsed, rss))
            answered = sum(len(v) for u in users for k, v in u.latencies.items() if ":" not in k)
            print(f"{elapsed / 60:7.1f} {rss:7.0f} {server.files():6d} {answered:8d}  "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

        wall = load.crowd(users, server.url, work / "downloads", args.minutes * 60, on_tick=tick,
                          tick_seconds=args.every)
        tick(wall)
        passed = load.report(users, server, wall)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    after = [rss for t, rss in samples if t >= warm_up]
    if len(after) < 3:
        print(f"too short to judge: fewer than three RSS samples after the {warm_up / 60:g}-minute warm-up")
        raise SystemExit(1)
    # the trend, not one sample: the median of the last third against the median of the first third
    third = max(1, len(after) // 3)
    start, end = statistics.median(after[:third]), statistics.median(after[-third:])
    growth = (end - start) / start
    verdict = "OK" if growth <= args.max_growth else "TOO MUCH"
    print(f"RSS after warm-up: first third {start:.0f} MB -> last third {end:.0f} MB (medians; highest "
          f"{max(after):.0f} MB): {100 * growth:+.1f}% (limit {100 * args.max_growth:g}%): {verdict}")
    raise SystemExit(0 if passed and growth <= args.max_growth else 1)


if __name__ == "__main__":
    main()
