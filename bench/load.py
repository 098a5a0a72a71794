"""Load test: simulated users on the real HTTP API (gradio_client), against app.py served by a
subprocess on 127.0.0.1.

    .venv/bin/python bench/load.py                          # 32 users x 5 requests, the shipped checkpoints
    .venv/bin/python bench/load.py --users 8 --requests 2 --stand-ins tiny --bars 2    # a quick one

Every user is its own session and works like a person: compose (streamed), then, rotated by
user so that the mix covers every kind, rewind, continue, 4 variations and compare, each with
its own seed. Before the crowd, every user's script runs alone (one user at a time, a fresh
session each): the solo MIDI files. Then all users run at once on fresh sessions, and every
result must be byte-identical to that user's solo result for the same step (same seed and
settings -> same piece): anything else is a mixed result. Prints p50 / p95 per kind (and the
time to the first streamed update of a compose), errors, mixed results, the server's peak RSS
and the load average. Exit status 1 on any error or mixed result.

``--duration S`` keeps the crowd going for S seconds (scripts repeat on fresh sessions, each
checked against its solo run); bench/soak.py builds on this module.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("compose", "rewind", "continue", "variations", "compare")


# ---------------------------------------------------------------- the server (a subprocess)


def serve(checkpoints: Path, port: int) -> None:
    """Run app.py's demo on ``checkpoints`` at 127.0.0.1:``port`` until killed (the subprocess side)."""
    sys.path.insert(0, str(ROOT))
    import app
    studio = app.make_studio({app.CHECKPOINTS_ENV: str(checkpoints)})
    studio.preload()
    studio.renderer.warm_up()
    app.launch(studio, server_port=port, quiet=True)  # blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """app.py in a subprocess, so its memory is measured apart from the clients'."""

    def __init__(self, checkpoints: Path, work: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "GRADIO_TEMP_DIR": str(work / "gradio"), "TMPDIR": str(work / "tmp"),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "GRADIO_ANALYTICS_ENABLED": "False"}
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        self.work = work
        self.log = open(work / "server.log", "w")
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", str(checkpoints), "--port",
                                         str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the app did not start; see {work / 'server.log'}:\n"
                                 + (work / "server.log").read_text()[-3000:])
            time.sleep(0.5)

    def ready(self) -> bool:
        import httpx
        try:
            return httpx.get(self.url + "gradio_api/info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def memory_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) of the server process, in MB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]

    def files(self) -> int:
        return sum(1 for p in self.work.rglob("*") if p.is_file())

    def disk(self) -> str:
        """Files and MB under the server's folders: Gradio's cache of served files, the studio's results."""
        parts = []
        for name, folder in (("Gradio cache", self.work / "gradio"), ("results", self.work / "tmp")):
            files = [p for p in folder.rglob("*") if p.is_file()]
            parts.append(f"{name} {len(files)} files {sum(p.stat().st_size for p in files) / 2**20:.0f} MB")
        return ", ".join(parts)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# ---------------------------------------------------------------- users


@dataclass
class User:
    """One simulated person: a checkpoint, seeds and a script of requests."""

    index: int
    checkpoint: int
    seed: int
    script: list[str]
    bars: int
    solo: list = field(default_factory=list)  # per step: the MIDI bytes a solo run got
    latencies: dict = field(default_factory=lambda: defaultdict(list))
    errors: list = field(default_factory=list)
    mixed: list = field(default_factory=list)
    runs: int = 0


def make_users(count: int, requests: int, bars: int) -> list[User]:
    from cwcompose.checkpoints import SHIPPED_STEPS
    users = []
    for u in range(count):
        others = list(KINDS[1:])
        others = others[u % 4:] + others[:u % 4]
        script = (["compose"] + others * requests)[:requests]
        users.append(User(u, SHIPPED_STEPS[u % len(SHIPPED_STEPS)], 1000 + 10 * u, script, bars))
    return users


def step(client, user: User, kind: str, i: int, latencies: dict) -> list[bytes]:
    """Send one request -> the MIDI bytes it produced (several for compare)."""
    seed = user.seed + i
    began = time.perf_counter()
    if kind in ("compose", "variations"):
        job = client.submit(checkpoint=user.checkpoint, bars=user.bars, seed=seed, random_seed=False,
                            variations=4 if kind == "variations" else 1, api_name="/compose")
        first = None
        for update in job:  # "waiting for your turn", then the roll after every bar, then the result
            if first is None and "composing, bar" in str(update):
                first = time.perf_counter() - began
        audio, midi, roll, table, got = job.result()
        if kind == "compose" and first is not None:
            latencies["compose: first bar"].append(first)
        midis = [midi]
    elif kind == "rewind":
        audio, midi, roll, table, got = client.predict(bar=1, seed=seed, random_seed=False, api_name="/rewind")
        midis = [midi]
    elif kind == "continue":
        audio, midi, roll, table, got = client.predict(bars=user.bars, seed=seed, random_seed=False,
                                                       api_name="/continue")
        midis = [midi]
    else:
        view, table, got, *files = client.predict(bars=user.bars, seed=seed, random_seed=False,
                                                  api_name="/compare")
        midis = files[1::2]
    latencies[kind].append(time.perf_counter() - began)
    if got != seed:
        raise AssertionError(f"seed {got} came back for seed {seed}")
    return [Path(m).read_bytes() if m else b"" for m in midis]


def run_script(user: User, url: str, downloads: Path, record_solo: bool, latencies: dict) -> None:
    """One pass of ``user``'s script on a fresh session; checks every result against the solo run."""
    from gradio_client import Client
    client = Client(url, verbose=False, download_files=str(downloads / f"u{user.index}-{user.runs}"))
    user.runs += 1
    try:
        for i, kind in enumerate(user.script):
            try:
                midis = step(client, user, kind, i, latencies)
            except Exception as err:  # every failure is counted and shown
                user.errors.append(f"user {user.index} step {i} ({kind}): {type(err).__name__}: {err}"[:400])
                return  # the rest of the script depends on this step
            if record_solo:
                user.solo.append(midis)
            elif midis != user.solo[i]:
                user.mixed.append(f"user {user.index} step {i} ({kind}): not the solo run's MIDI")
    finally:
        client.close() if hasattr(client, "close") else None
        shutil.rmtree(downloads / f"u{user.index}-{user.runs - 1}", ignore_errors=True)


def solo_runs(users: list[User], url: str, downloads: Path) -> None:
    for user in users:
        run_script(user, url, downloads, record_solo=True, latencies=defaultdict(list))
        if user.errors:
            raise SystemExit(f"the solo run failed: {user.errors}")


def crowd(users: list[User], url: str, downloads: Path, duration: float | None,
          on_tick=None, tick_seconds: float = 60.0) -> float:
    """Every user at once (a thread each), once or until ``duration`` -> wall seconds.
    ``on_tick(elapsed)`` is called every ``tick_seconds`` while they run."""
    start = threading.Barrier(len(users) + 1)
    began = [0.0]
    end = [None]

    def run(user: User) -> None:
        start.wait()
        while True:
            run_script(user, url, downloads, record_solo=False, latencies=user.latencies)
            if end[0] is None or time.monotonic() > end[0] or user.errors:
                return

    threads = [threading.Thread(target=run, args=(u,), daemon=True) for u in users]
    for t in threads:
        t.start()
    began[0] = time.monotonic()
    end[0] = began[0] + duration if duration else None
    start.wait()
    next_tick = began[0] + tick_seconds
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)
        if on_tick is not None and time.monotonic() >= next_tick:
            on_tick(time.monotonic() - began[0])
            next_tick += tick_seconds
    return time.monotonic() - began[0]


# ---------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(users: list[User], server: Server, wall: float) -> bool:
    errors = [e for u in users for e in u.errors]
    mixed = [m for u in users for m in u.mixed]
    answered = sum(len(v) for u in users for k, v in u.latencies.items() if ":" not in k)
    print(f"\n{len(users)} users, wall {wall:.1f} s, {answered} requests answered; errors {len(errors)}, "
          f"mixed results {len(mixed)}")
    for line in (errors + mixed)[:20]:
        print("   ", line)
    kinds = [*KINDS, "compose: first bar"]
    for kind in kinds:
        times = [t for u in users for t in u.latencies.get(kind, [])]
        if times:
            print(f"  {kind:22s} n={len(times):4d}  p50 {statistics.median(times):7.2f} s  "
                  f"p95 {percentile(times, 0.95):7.2f} s  max {max(times):7.2f} s")
    rss, peak = server.memory_mb()
    print(f"server RSS {rss:.0f} MB, peak {peak:.0f} MB; on disk: {server.disk()}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    return not errors and not mixed


def prepare_checkpoints(folder: Path, stand_ins: str | None) -> None:
    from cwcompose.checkpoints import TINY_MODEL, fill_with_stand_ins
    if stand_ins == "tiny":
        kinds = fill_with_stand_ins(folder, source=None, model=TINY_MODEL)
    else:
        kinds = fill_with_stand_ins(folder)  # the shipped ones (checkpoints/ then checkpoints/v1/)
    for step, kind in kinds.items():
        print(f"checkpoint {step}: {'shipped' if kind == 'real' else 'untrained tiny stand-in'}")


def parse_args(argv=None, description=__doc__) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--requests", type=int, default=5, help="requests per user per pass (compose first)")
    parser.add_argument("--bars", type=int, default=4, help="bars per compose / continue / compare")
    parser.add_argument("--duration", type=float, default=None, help="seconds to keep the crowd going")
    parser.add_argument("--stand-ins", choices=("tiny",), default=None,
                        help="tiny untrained checkpoints instead of the shipped ones (fast; plumbing only)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    work = Path(tempfile.mkdtemp(prefix="cwcompose-load-"))
    prepare_checkpoints(work / "checkpoints", args.stand_ins)
    server = Server(work / "checkpoints", work / "server")
    try:
        users = make_users(args.users, args.requests, args.bars)
        print(f"{args.users} users x {args.requests} requests ({args.bars} bars); solo runs first ...")
        began = time.monotonic()
        solo_runs(users, server.url, work / "downloads")
        print(f"solo runs: {time.monotonic() - began:.1f} s; server RSS {server.memory_mb()[0]:.0f} MB. "
              "Now all at once ...")
        wall = crowd(users, server.url, work / "downloads", args.duration)
        passed = report(users, server, wall)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()
