"""Load test: concurrent users on one in-process app, over real HTTP with gradio_client.

    .venv/bin/python bench/load.py [--users 8] [--requests 5] [--bars 4] [--checkpoints checkpoints]
                                   [--stand-ins tiny|default]

Every user has its own client (its own session), seed, checkpoint and primer (a POP909
song for even users, none for odd ones) and sends ``--requests`` requests one after
another, a mix of /compose and /compare; all users run at the same time. Prints errors
(must be 0), p50 / p95 latency per endpoint, peak RSS of this process (server and
clients), and files left in the app's temp folders, and checks that every user got
their own results: the seed echoed back is theirs, each of their /compose results is
byte-identical (same request, same seed), their /compare column for their checkpoint
equals their /compose result, and different users' seeds give different pieces.
Exit status 1 if any check fails.

Uses the real checkpoints from ``--checkpoints`` where present; missing ones are replaced
by untrained stand-ins in a temp folder: ``tiny`` (2 layers, d 32: fast, tests the
plumbing) or ``default`` (the shipped size: realistic cost per word). The startup lines
say which. A background training run competes for the CPU: say so next to any figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cwcompose.checkpoints import SHIPPED_STEPS, TINY_MODEL, fill_with_stand_ins

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app.py is a script at the root, not part of the package
import app  # noqa: E402
POP909 = Path(os.environ.get("CWCOMPOSE_DATA", ROOT.parent / "shared" / "data")) / "pop909"
PRIMER_SONGS = ("001", "002", "003", "004")
RESULT_KEYS = ("audio", "plot", "midi", "metrics")


# ---------------------------------------------------------------- setup


def launch(checkpoint_dir: Path):
    """app.py's demo on ``checkpoint_dir``, started in this process -> (demo, studio)."""
    studio = app.make_studio({app.CHECKPOINTS_ENV: str(checkpoint_dir)})
    studio.preload()
    return app.launch(studio, prevent_thread_lock=True, quiet=True), studio


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------- users


@dataclass
class User:
    """One simulated person: fixed settings, and what came back."""

    index: int
    seed: int
    checkpoint: int
    primer: Path | None
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    compose_midis: list[bytes] = field(default_factory=list)
    compare_midis: list[bytes] = field(default_factory=list)  # the column of this user's checkpoint
    errors: list[str] = field(default_factory=list)

    def endpoint(self, i: int) -> str:
        """Request ``i`` goes to /compare on the 2nd and 5th request, else /compose."""
        return "/compare" if i % 3 == 1 else "/compose"


def run_user(user: User, url: str, requests: int, bars: int, start: threading.Barrier, downloads: Path) -> None:
    """Send ``requests`` requests one after another, recording latency, results and errors."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=str(downloads / str(user.index)))
    primer = handle_file(str(user.primer)) if user.primer else None
    shared = (primer, 2, bars, user.seed, False)  # primer, primer bars, bars, seed, random seed
    start.wait()
    for i in range(requests):
        endpoint = user.endpoint(i)
        args = (user.checkpoint, *shared) if endpoint == "/compose" else shared
        began = time.perf_counter()
        try:
            outputs = client.predict(*args, api_name=endpoint)
        except Exception as err:  # counted and printed: the load test must see every failure
            user.errors.append(f"user {user.index} request {i} {endpoint}: {type(err).__name__}: {err}")
            continue
        user.latencies[endpoint].append(time.perf_counter() - began)
        try:
            check_outputs(user, endpoint, outputs)
        except Exception as err:  # a reply of the wrong shape is an error too
            user.errors.append(f"user {user.index} request {i} {endpoint}: unexpected reply ({err!r})")


def check_outputs(user: User, endpoint: str, outputs) -> None:
    """The seed echoed back and the checkpoints named are this user's; keep the MIDI bytes.

    /compose returns (audio, plot, midi, metrics, seed); /compare returns (audio, plot, midi)
    per checkpoint, then a table with a column of numbers per checkpoint, then the seed."""
    if outputs[-1] != user.seed:
        user.errors.append(f"user {user.index} {endpoint}: seed {outputs[-1]} came back, sent {user.seed}")
    if endpoint == "/compose":
        audio, plot, midi, metrics = outputs[:4]
        if metrics["seed"] != user.seed or metrics["checkpoint"] != user.checkpoint:
            user.errors.append(f"user {user.index}: got seed {metrics['seed']} checkpoint {metrics['checkpoint']}")
        user.compose_midis.append(Path(midi).read_bytes())
        return
    *columns, table, _ = outputs
    per_column = len(columns) // len(SHIPPED_STEPS)
    for i, step in enumerate(SHIPPED_STEPS):
        midi = columns[per_column * i + per_column - 1]
        numbers = table_column(table, step)
        if midi is None:
            continue  # a missing checkpoint
        if numbers.get("seed") != str(user.seed):
            user.errors.append(f"user {user.index} /compare column {step}: seed {numbers.get('seed')}")
        if step == user.checkpoint:
            user.compare_midis.append(Path(midi).read_bytes())


def table_column(table: dict, step: int) -> dict:
    """One checkpoint's column of the compare table, keyed by the row name."""
    column = table["headers"].index(str(step))
    return {row[0]: str(row[column]) for row in table["data"]}


def own_results_problems(users: list[User]) -> list[str]:
    """Cross-talk checks: a user's results all agree with each other and differ from other users'."""
    problems = []
    for user in users:
        pieces = set(user.compose_midis) | set(user.compare_midis)
        if len(pieces) != 1:
            problems.append(f"user {user.index}: {len(pieces)} different pieces for one request and seed")
    firsts = [u.compose_midis[0] for u in users if u.compose_midis]
    if len(set(firsts)) != len(firsts):
        problems.append(f"only {len(set(firsts))} different pieces for {len(firsts)} users with different seeds")
    return problems


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5, help="requests per user")
    parser.add_argument("--bars", type=int, default=4, help="bars generated per request")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--stand-ins", choices=("tiny", "default"), default="tiny",
                        help="size of the untrained models that replace missing checkpoints")
    return parser.parse_args()


def make_users(count: int) -> list[User]:
    """``count`` users cycling through the checkpoints; even users bring a POP909 primer."""
    songs = [POP909 / s / f"{s}.mid" for s in PRIMER_SONGS if (POP909 / s / f"{s}.mid").is_file()]
    if not songs:
        print("POP909 not found: no user brings a primer")
    return [User(index=u, seed=1000 + 7 * u, checkpoint=SHIPPED_STEPS[u % len(SHIPPED_STEPS)],
                 primer=songs[(u // 2) % len(songs)] if songs and u % 2 == 0 else None)
            for u in range(count)]


def run_users(users: list[User], url: str, args: argparse.Namespace, downloads: Path) -> float:
    """All users at once, each in its own thread -> wall-clock seconds."""
    start = threading.Barrier(len(users))
    threads = [threading.Thread(target=run_user, args=(u, url, args.requests, args.bars, start, downloads))
               for u in users]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began


def report(users: list[User], studio, gradio_cache: Path, wall: float, rss_idle: float) -> bool:
    """Print errors, latencies, memory and files left behind -> whether every check passed."""
    errors = [e for u in users for e in u.errors]
    problems = own_results_problems(users)
    print(f"\nwall {wall:.1f} s for {sum(len(t) for u in users for t in u.latencies.values())} answered "
          f"requests; errors: {len(errors)}")
    for e in errors:
        print("  ", e)
    for endpoint in ("/compose", "/compare"):
        times = [t for u in users for t in u.latencies[endpoint]]
        if times:
            print(f"{endpoint:9s} n={len(times):3d}  p50 {statistics.median(times):6.2f} s  "
                  f"p95 {percentile(times, 0.95):6.2f} s  max {max(times):6.2f} s")
    print(f"peak RSS {peak_rss_mb():.0f} MB (after startup {rss_idle:.0f} MB; server and clients, one process)")
    print(f"files: studio work dir {count_files(studio._workdir)} (kept at most {studio.limits.kept_results} "
          f"results), Gradio cache {count_files(gradio_cache)} (uploads + served audio/MIDI, deleted after "
          f"{studio.limits.cache_seconds} s)")
    print("own results:", "OK" if not problems else "FAILED")
    for p in problems:
        print("  ", p)
    return not errors and not problems


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="cwcompose-load-"))
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")  # the app's upload/result cache, counted below
    model = TINY_MODEL if args.stand_ins == "tiny" else None
    for step, kind in fill_with_stand_ins(work / "ckpt", source=args.checkpoints, model=model).items():
        print(f"step {step}: " + ("real checkpoint" if kind == "real" else f"untrained {args.stand_ins} stand-in"))
    demo, studio = launch(work / "ckpt")
    try:
        rss_idle = peak_rss_mb()
        users = make_users(args.users)
        print(f"{args.users} users x {args.requests} requests, {args.bars} bars each, primers for even users; "
              f"queue concurrency {studio.limits.concurrency}, torch threads {torch.get_num_threads()}")
        wall = run_users(users, demo.local_url, args, work / "downloads")
        passed = report(users, studio, work / "gradio", wall, rss_idle)
        raise SystemExit(0 if passed else 1)
    finally:
        demo.close()
        studio.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
