"""App latency on this machine, over HTTP as a browser's click sees it: first sound, full result,
compare, variations; and render speed.

    .venv/bin/python bench/app.py [--runs 3] [--bars 16] [--checkpoints checkpoints] [--primer PATH]

Starts the app in this process and calls it with gradio_client (queue, model, rendering, roll,
file transfer), printing the median of ``--runs`` calls after one warm-up:

- click -> first audio chunk: /compose streams the roll after every bar, carrying the list of
  per-bar WAV chunks; the time until the first update that lists a chunk is when the browser
  can start playing (it then fetches and decodes a ~100 KB WAV: a few ms on localhost). Without
  ``--primer`` that chunk is the first composed bar; with one, it is the primer's audio.
- click -> full result: the final update of the same /compose call (16 bars).
- compare: /compare, the same request through the three checkpoints.
- variations x4: /compose with variations=4 (one batch), to the final update.

Uses the real checkpoints (the newest generation holding each step: checkpoints/stepN);
a missing one becomes an untrained default-size stand-in, which costs the same per word.
Targets: first sound <= 0.6 s, compare <= 4 s; exits 1 when one is missed. Other work on the
machine (a training run) slows every figure: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from html import unescape
from pathlib import Path

import torch
from gradio_client import Client, handle_file

from cwcompose.checkpoints import SHIPPED_DIR, SHIPPED_STEPS, fill_with_stand_ins
from cwcompose.render import Renderer, seconds_of
from cwcompose.tokenizer import read_midi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app.py is a script at the root, not part of the package
import app  # noqa: E402

POP909 = Path(os.environ.get("CWCOMPOSE_DATA", ROOT.parent / "shared" / "data")) / "pop909"
FIRST_SOUND_TARGET_S = 0.6
COMPARE_TARGET_S = 4.0


def chunks_listed(roll: str | None) -> int:
    """How many audio chunks a streamed roll lists (its data-chunks attribute)."""
    found = re.search(r'data-chunks="([^"]*)"', roll or "")
    return len(json.loads(unescape(found[1]))) if found else 0


def timed_compose(client: Client, seed: int, bars: int, variations: int = 1, primer=None) -> tuple[float, float, int]:
    """(seconds to the first update listing an audio chunk, seconds to the final result, words)."""
    kwargs = dict(checkpoint=28500, bars=bars, variations=variations, seed=seed, random_seed=False)
    if primer is not None:
        kwargs["primer"] = primer
    start = time.perf_counter()
    job = client.submit(**kwargs, api_name="/compose")
    first = None
    for update in job:
        if first is None and chunks_listed(update[2]):
            first = time.perf_counter() - start
    result = job.result()
    total = time.perf_counter() - start
    words = {row[0]: row[1] for row in result[3]["data"]}["words generated"]
    return (first if first is not None else total), total, int(words)


def median_of(call, runs: int) -> list[tuple]:
    call(0)  # warm-up: first use of a synth, caches
    return [call(i + 1) for i in range(runs)]


def render_speed(renderer: Renderer, songs: list[Path]) -> tuple[float, float]:
    """(seconds of compute per minute of music, times real time) over ``songs``."""
    renderer.warm_up()
    music = compute = 0.0
    for song in songs:
        midi = read_midi(song)
        start = time.perf_counter()
        audio = renderer.render(midi)
        compute += time.perf_counter() - start
        music += seconds_of(audio, renderer.sample_rate)
    return 60.0 * compute / music, music / compute


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bars", type=int, default=16)
    parser.add_argument("--checkpoints", type=Path, default=SHIPPED_DIR)
    parser.add_argument("--primer", type=Path, default=None, help="a MIDI primer (default: none)")
    parser.add_argument("--no-render", action="store_true", help="skip the render-speed figure")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        kinds = fill_with_stand_ins(folder, source=args.checkpoints)
        for step, kind in kinds.items():
            print(f"step {step}: {'real checkpoint' if kind == 'real' else 'missing, untrained default-size stand-in'}")
        studio = app.make_studio({app.CHECKPOINTS_ENV: folder})
        studio.preload()
        studio.renderer.warm_up()
        demo = app.launch(studio, prevent_thread_lock=True, quiet=True)
        client = Client(demo.local_url, verbose=False)
        primer = handle_file(str(args.primer)) if args.primer else None
        compose = median_of(lambda seed: timed_compose(client, seed, args.bars, primer=primer), args.runs)
        variations = median_of(lambda seed: timed_compose(client, seed, args.bars, variations=4), args.runs)

        def compare_once(seed):
            start = time.perf_counter()
            client.predict(bars=args.bars, seed=seed, random_seed=False, api_name="/compare")
            return (time.perf_counter() - start,)

        compare = median_of(compare_once, args.runs)
        demo.close()
        render = None if args.no_render else render_speed(
            studio.renderer, sorted(POP909.glob("00[1-5]/00[1-5].mid")))
        studio.close()
    load_after = os.getloadavg()

    def line(values):
        return f"median {statistics.median(values):.2f} s (runs {', '.join(f'{v:.2f}' for v in values)})"

    first = [c[0] for c in compose]
    compare_s = [c[0] for c in compare]
    print(f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}, load average (1/5/15 min) "
          f"before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, after "
          f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}: other work shares the CPU, "
          "figures are indicative")
    what = "the primer's audio" if args.primer else "bar 1"
    print(f"compose {args.bars} bars, click -> first audio chunk ({what}): {line(first)}; "
          f"target <= {FIRST_SOUND_TARGET_S} s")
    print(f"compose {args.bars} bars, click -> full result: {line([c[1] for c in compose])}; "
          f"{compose[-1][2]} words")
    print(f"compare {args.bars} bars x {len(SHIPPED_STEPS)} checkpoints: {line(compare_s)}; "
          f"target <= {COMPARE_TARGET_S} s")
    print(f"variations x4, {args.bars} bars (one batch): first chunk {line([v[0] for v in variations])}, "
          f"full result {line([v[1] for v in variations])}")
    if render is not None:
        print(f"render: {render[0]:.2f} s per minute of music, {render[1]:.0f}x real time")
    missed = []
    if statistics.median(first) > FIRST_SOUND_TARGET_S:
        missed.append(f"first sound {statistics.median(first):.2f} s > {FIRST_SOUND_TARGET_S} s")
    if statistics.median(compare_s) > COMPARE_TARGET_S:
        missed.append(f"compare {statistics.median(compare_s):.2f} s > {COMPARE_TARGET_S} s")
    print("targets: " + ("MISSED: " + "; ".join(missed) if missed else "met"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
