"""The composing service behind the app: validated requests in, audio + piano roll + MIDI out.

>>> studio = Studio(Path("checkpoints"))
>>> result = studio.compose(ComposeRequest(checkpoint=28500, primer="song.mid", bars=16, seed=1))
>>> result.audio, result.figure, result.midi_path, result.metrics

A :class:`Studio` loads each checkpoint once and keeps it (a lock per checkpoint, so
two requests never load the same one twice), owns the :class:`Renderer`, and writes
each result's MIDI file into its own folder, deleting the oldest folders so at most
``Limits.kept_results`` remain. All caps live in :class:`Limits`.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.figure import Figure

from cwcompose import metrics
from cwcompose.checkpoints import SHIPPED_DIR, SHIPPED_STEPS, CheckpointError, load_checkpoint, shipped_stem
from cwcompose.generation import Composition, compose
from cwcompose.pianoroll import RollStyle, note_name, piano_roll
from cwcompose.render import Renderer, seconds_of, to_pcm16
from cwcompose.sampling import DEFAULT_SAMPLING, SamplingConfig

DEFAULT_CHECKPOINT = 28500
MAX_SEED = 2**32 - 1
MIDI_SUFFIXES = (".mid", ".midi")
OnBar = Callable[[int, int], None]
COMPARE_ROLL = RollStyle(width_inches=6.0, height_inches=4.5)  # three of these sit side by side


class RequestError(ValueError):
    """A request the service will not run: a value out of range, a primer too large or missing."""


class Stopped(Exception):
    """The person asked to stop; the partial result is thrown away."""


@dataclass(frozen=True)
class Limits:
    """Every cap the service enforces, in one place."""

    upload_mb: float = 1.0  # largest primer file accepted, in MiB
    max_primer_bars: int = 32  # "keep the last N bars" of a primer, at most
    max_bars: int = 64  # bars generated per request, at most
    max_music_seconds: float = 300.0  # length of a whole piece (primer + continuation), at most
    request_seconds: float = 120.0  # wall-clock budget of one request; composing stops at a bar line after it
    queue_size: int = 16  # requests waiting in the queue, at most
    concurrency: int = 1  # requests composed at the same time
    kept_results: int = 64  # result folders (MIDI files) kept on disk before the oldest is deleted
    cache_seconds: int = 3600  # uploads and served audio/MIDI copies older than this are deleted (checked as often)

    def __post_init__(self) -> None:
        positive = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        bad = [f"{name}={value}" for name, value in positive.items() if not value > 0]
        if bad:
            raise ValueError(f"invalid Limits: {', '.join(bad)} (every limit must be positive)")

    @property
    def upload_bytes(self) -> int:
        return int(self.upload_mb * 1024 * 1024)


def whole_number(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``low..high``; RequestError naming ``name`` otherwise (16.0 is fine, 16.5 is not)."""
    allowed = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value) or value != int(value) or value < low or (high is not None and value > high)):
        raise RequestError(f"{name} must be a whole number {allowed}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ComposeRequest:
    """One composing job. ``seed=None`` asks for a random seed (the one used comes back)."""

    checkpoint: int = DEFAULT_CHECKPOINT
    primer: str | Path | None = None  # a .mid/.midi file, or None to start from nothing
    primer_bars: int = 8  # keep this many bars from the end of the primer
    bars: int = 16  # bars to generate after the primer
    seed: int | None = None
    sampling: SamplingConfig = DEFAULT_SAMPLING

    def __post_init__(self) -> None:
        if self.checkpoint not in SHIPPED_STEPS or isinstance(self.checkpoint, bool):
            steps = ", ".join(map(str, SHIPPED_STEPS))
            raise RequestError(f"checkpoint must be one of {steps}, got {self.checkpoint!r}")
        set_ = object.__setattr__  # normalise 16.0 -> 16 (the value is unchanged)
        set_(self, "checkpoint", int(self.checkpoint))
        set_(self, "primer_bars", whole_number("primer bars to keep", self.primer_bars, 1))
        set_(self, "bars", whole_number("bars to generate", self.bars, 1))
        if self.seed is not None:
            set_(self, "seed", whole_number("seed", self.seed, 0, MAX_SEED))
        if not isinstance(self.sampling, SamplingConfig):
            raise RequestError("sampling must be a SamplingConfig")
        if self.primer is not None:
            set_(self, "primer", Path(self.primer))
            if self.primer.suffix.lower() not in MIDI_SUFFIXES:
                raise RequestError(f"the primer {self.primer.name!r} is not a MIDI file: upload a .mid or .midi file")

    def check(self, limits: Limits) -> None:
        """RequestError naming the cap and the fix when the request exceeds ``limits``."""
        if self.bars > limits.max_bars:
            raise RequestError(f"bars to generate must be from 1 to {limits.max_bars}, got {self.bars}; "
                             "generate fewer bars, or continue from the result to go longer")
        if self.primer_bars > limits.max_primer_bars:
            raise RequestError(f"primer bars to keep must be from 1 to {limits.max_primer_bars}, "
                               f"got {self.primer_bars}")
        if self.primer is not None:
            if not self.primer.is_file():
                raise RequestError(f"the primer file {self.primer.name!r} was not received; upload it again")
            size = self.primer.stat().st_size
            if size > limits.upload_bytes:
                raise RequestError(f"the primer is {size / 2**20:.1f} MB; the limit is {limits.upload_mb:g} MB. "
                                 "Upload a shorter MIDI file (only its last bars are used anyway)")


@dataclass
class ComposeResult:
    """What the app shows: audio, a piano roll, a MIDI file to download, and a few numbers."""

    audio: tuple[int, np.ndarray]  # (sample rate in Hz, int16 (n, 2))
    figure: Figure
    midi_path: Path
    metrics: dict
    seed: int
    composition: Composition


def piece_metrics(composition: Composition, config, checkpoint: int) -> dict:
    """Readable numbers about the generated part (not the primer) of a composition."""
    notes = metrics.excerpt(metrics.to_grid_notes(composition.words, config),
                            composition.primer_bars, composition.bars)
    key = metrics.estimate_key(notes)
    low, high = (int(notes.pitch.min()), int(notes.pitch.max())) if len(notes.pitch) else (0, 0)
    span = f"{note_name(low)}-{note_name(high)} ({high - low} semitones)" if len(notes.pitch) else "no notes"
    return {
        "checkpoint": checkpoint,
        "seed": composition.seed,
        "bars generated": composition.bars,
        "notes generated": int(len(notes.pitch)),
        "words generated": int(len(composition.continuation)),
        "note density (notes per bar)": round(metrics.note_density(notes), 2) if composition.bars else 0.0,
        "pitch range": span,
        "key (estimated)": metrics.key_name(key),
        "out-of-key notes (%)": round(100 * metrics.out_of_key_ratio(notes, key), 1) if len(notes.pitch) else 0.0,
        "primer bars": composition.primer_bars,
        "length (seconds)": round(composition.seconds, 1),
        "stopped early": composition.stopped_early,
    }


def comparison_rows(results: dict[int, "ComposeResult | str"]) -> list[list[str]]:
    """One row per metric, one column per checkpoint (a missing checkpoint shows "not available")."""
    names = next((list(r.metrics) for r in results.values() if not isinstance(r, str)), [])
    return [[name] + ["not available" if isinstance(r, str) else str(r.metrics[name]) for r in results.values()]
            for name in names if name != "checkpoint"]


class StopSignals:
    """A stop flag per caller (e.g. per browser session), so a Stop click ends that caller's work."""

    def __init__(self):
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> threading.Event:
        with self._lock:
            self._events[key] = threading.Event()
            return self._events[key]

    def stop(self, key: str) -> None:
        with self._lock:
            if key in self._events:
                self._events[key].set()

    def finish(self, key: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(key) is event:
                del self._events[key]


class Studio:
    """Composes requests with cached checkpoints and renders the results."""

    def __init__(self, checkpoint_dir: str | Path, renderer: Renderer | None = None, limits: Limits | None = None,
                 device: str | None = None):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.renderer = renderer or Renderer()
        self.limits = limits or Limits()
        self.device = device
        self.stops = StopSignals()
        self._models: dict[int, tuple] = {}
        self._load_locks = {step: threading.Lock() for step in SHIPPED_STEPS}
        self._workdir = Path(tempfile.mkdtemp(prefix="cwcompose-"))
        self._results: deque[Path] = deque()
        self._results_lock = threading.Lock()

    # ------------------------------------------------------------ checkpoints

    def checkpoint_stem(self, step: int) -> Path:
        """The shipped folder holds generations (``checkpoints/``, ``checkpoints/v1/``): a step
        is served from the newest that has it; any other folder holds ``step<N>`` directly."""
        if self.checkpoint_dir.resolve() == SHIPPED_DIR.resolve():
            return shipped_stem(step)
        return self.checkpoint_dir / f"step{step}"

    def available_checkpoints(self) -> list[int]:
        """Shipped steps whose weights and config are both present."""
        return [s for s in SHIPPED_STEPS if self.checkpoint_stem(s).with_suffix(".safetensors").is_file()
                and self.checkpoint_stem(s).with_suffix(".json").is_file()]

    def missing_checkpoint_message(self, step: int) -> str:
        have = ", ".join(map(str, self.available_checkpoints())) or "none"
        return (f"checkpoint {step} is not available: {self.checkpoint_dir}/step{step}.safetensors and "
                f".json are missing (training may not have reached it yet). Available: {have}")

    def model(self, step: int):
        """(model, tokenizer) of a checkpoint, loaded on first use and kept."""
        if step in self._models:
            return self._models[step]
        if step not in self._load_locks:
            raise CheckpointError(f"checkpoint must be one of {SHIPPED_STEPS}, got {step!r}")
        with self._load_locks[step]:
            if step not in self._models:
                if step not in self.available_checkpoints():
                    raise CheckpointError(self.missing_checkpoint_message(step))
                self._models[step] = load_checkpoint(self.checkpoint_stem(step), device=self.device)
            return self._models[step]

    def preload(self) -> list[int]:
        """Load every available checkpoint now; returns the steps loaded."""
        steps = self.available_checkpoints()
        for step in steps:
            self.model(step)
        return steps

    # ------------------------------------------------------------ composing

    def compose(self, request: ComposeRequest, on_bar: OnBar | None = None, stop: threading.Event | None = None,
                roll_style: RollStyle | None = None) -> ComposeResult:
        """Compose, render and draw one request. Raises RequestError (bad request), MidiReadError
        (bad primer), CheckpointError (missing checkpoint), RenderError, or Stopped."""
        request.check(self.limits)
        model, tokenizer = self.model(request.checkpoint)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        primer = request.primer.read_bytes() if request.primer is not None else None
        composition = compose(model, tokenizer, primer=primer, primer_bars=request.primer_bars, bars=request.bars,
                              max_seconds=self.limits.max_music_seconds, sampling=request.sampling, seed=seed,
                              on_bar=self._bar_callback(on_bar, stop))
        if stop is not None and stop.is_set():
            raise Stopped()
        return self._result(composition, request.checkpoint, roll_style or RollStyle())

    def compare(self, request: ComposeRequest, on_bar: OnBar | None = None,
                stop: threading.Event | None = None) -> dict[int, ComposeResult | str]:
        """The same request on every shipped checkpoint (one seed for all). A missing
        checkpoint gives its message instead of a result; CheckpointError if all are missing."""
        request.check(self.limits)
        available = self.available_checkpoints()
        if not available:
            raise CheckpointError(f"no checkpoints in {self.checkpoint_dir}; " + self.missing_checkpoint_message(
                request.checkpoint))
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        results: dict[int, ComposeResult | str] = {}
        for i, step in enumerate(SHIPPED_STEPS):
            if step not in available:
                results[step] = self.missing_checkpoint_message(step)
                continue
            progress = None if on_bar is None else (
                lambda done, total, i=i: on_bar(i * total + done, len(SHIPPED_STEPS) * total))
            results[step] = self.compose(dataclasses.replace(request, checkpoint=step, seed=seed), progress, stop,
                                         COMPARE_ROLL)
        return results

    def _bar_callback(self, on_bar: OnBar | None, stop: threading.Event | None) -> Callable[[int, int], bool]:
        """Wraps the progress callback: False (stop) once asked to stop or over the time budget."""
        deadline = time.monotonic() + self.limits.request_seconds

        def callback(done: int, total: int) -> bool:
            if on_bar is not None:
                on_bar(done, total)
            return not ((stop is not None and stop.is_set()) or time.monotonic() > deadline)

        return callback

    def _result(self, composition: Composition, checkpoint: int, roll_style: RollStyle) -> ComposeResult:
        audio = self.renderer.render(composition.midi)
        folder = self._new_result_dir()
        midi_path = folder / f"cwcompose-{checkpoint}-seed{composition.seed}.mid"
        composition.midi.dump(str(midi_path))
        info = piece_metrics(composition, self._tokenizer_config(checkpoint), checkpoint)
        info["audio seconds"] = round(seconds_of(audio, self.renderer.sample_rate), 1)
        return ComposeResult(audio=(self.renderer.sample_rate, to_pcm16(audio)),
                             figure=piano_roll(composition.midi, composition.primer_end_tick,
                                               title=f"checkpoint {checkpoint}, seed {composition.seed}",
                                               bars=composition.primer_bars + composition.bars, style=roll_style),
                             midi_path=midi_path, metrics=info, seed=composition.seed, composition=composition)

    def _tokenizer_config(self, step: int):
        return self._models[step][1].config

    # ------------------------------------------------------------ files

    def _new_result_dir(self) -> Path:
        """A fresh folder for one result; the oldest folders beyond ``kept_results`` are deleted."""
        folder = Path(tempfile.mkdtemp(dir=self._workdir))
        with self._results_lock:
            self._results.append(folder)
            while len(self._results) > self.limits.kept_results:
                shutil.rmtree(self._results.popleft(), ignore_errors=True)
        return folder

    def close(self) -> None:
        """Delete every result folder and free the synths."""
        shutil.rmtree(self._workdir, ignore_errors=True)
        self.renderer.close()
