"""The composing service behind the app: validated requests in, audio + piano roll + MIDI out.

>>> studio = Studio(Path("checkpoints"))
>>> *updates, takes = stream_compose(studio, ComposeRequest(checkpoint=28500, primer="song.mid", bars=16, seed=1))
>>> takes[0].audio_path, takes[0].midi_path, takes[0].numbers

A :class:`Studio` loads each checkpoint once and keeps it (a lock per checkpoint, so
two requests never load the same one twice), owns the :class:`Renderer`, and writes
each result's MIDI file into its own folder, deleting the oldest folders so at most
``Limits.kept_results`` remain. All caps live in :class:`Limits`.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections import deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cwcompose.checkpoints import SHIPPED_DIR, SHIPPED_STEPS, CheckpointError, load_checkpoint, shipped_stem
from cwcompose.generation import BarDone, Composition, iter_compose, primer_words
from cwcompose.model import ModelConfig
from cwcompose.render import SOUNDFONT_ENV, Renderer, RenderError
from cwcompose.request import MAX_SEED, ComposeRequest, Limits, RequestError
from cwcompose.result_files import join_wavs, write_wav
from cwcompose.takes import Take, locks_summary, piece_metrics
from cwcompose.turns import StopSignals, Turns
from cwcompose.words import count_bars

class Studio:
    """Composes requests with cached checkpoints and renders the results."""

    def __init__(self, checkpoint_dir: str | Path, renderer: Renderer | None = None, limits: Limits | None = None,
                 device: str | None = None, workdir: str | Path | None = None):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.renderer = renderer or Renderer()
        self.limits = limits or Limits()
        self.device = device
        self.stops = StopSignals()
        self.turns = Turns(self.limits.concurrency, self.limits.queue_size)  # who composes next
        self.audio_problem: str | None = None  # why the latest take without audio has none
        self._made_here = threading.local()  # see guard_result_files
        self._models: dict[int, tuple] = {}
        self._load_locks = {step: threading.Lock() for step in SHIPPED_STEPS}
        self._workdir = Path(tempfile.mkdtemp(prefix="cwcompose-", dir=workdir))  # result files; workdir: its parent
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

    def memory_words(self, step: int) -> int | None:
        """How many words a checkpoint's model sees (its context), from its JSON; None if unreadable."""
        try:
            info = json.loads(self.checkpoint_stem(step).with_suffix(".json").read_text())
            return ModelConfig.from_dict(info["model"]).context
        except (OSError, KeyError, TypeError, ValueError):
            return None

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
                try:
                    self._models[step] = load_checkpoint(self.checkpoint_stem(step), device=self.device)
                except (CheckpointError, OSError) as err:
                    raise CheckpointError(self.damaged_checkpoint_message(step, err)) from err
            return self._models[step]

    def damaged_checkpoint_message(self, step: int, err: Exception) -> str:
        """What to tell a person when checkpoint ``step``'s files exist but cannot be loaded."""
        stem = self.checkpoint_stem(step)
        text = str(err)
        name = next((f"{stem.name}{suffix}" for suffix in (".safetensors", ".json") if f"{stem.name}{suffix}" in text),
                    f"{stem.name}.safetensors")
        others = ", ".join(str(s) for s in self.available_checkpoints() if s != step) or "none"
        return (f"Checkpoint {step} cannot be used: its file {stem.parent / name} is damaged or is not a cwcompose "
                f"checkpoint (it could not be read). Choose another checkpoint (available: {others}), or replace "
                f"the file with a good copy (`make train` exports it again) and restart the app.")

    def preload(self) -> list[int]:
        """Load every available checkpoint now; returns the steps loaded."""
        steps = self.available_checkpoints()
        for step in steps:
            self.model(step)
        return steps

    def tokenizer_config(self, step: int):
        """The TokenizerConfig of checkpoint ``step`` (loaded)."""
        return self._models[step][1].config

    # ------------------------------------------------------------ files

    @property
    def workdir(self) -> Path:
        """The folder holding every result file (the app serves files from it)."""
        return self._workdir

    def new_result_dir(self) -> Path:
        """A fresh folder for one result; the oldest folders beyond ``kept_results`` are deleted."""
        folder = Path(tempfile.mkdtemp(dir=self._workdir))
        sink = getattr(self._made_here, "folders", None)  # guard_result_files: the folders of this request
        if sink is not None:
            sink.append(folder)
        with self._results_lock:
            self._results.append(folder)
            while len(self._results) > self.limits.kept_results:
                shutil.rmtree(self._results.popleft(), ignore_errors=True)
        return folder

    # ------------------------------------------------------------ faults at run time

    @contextmanager
    def audio_stream(self) -> Iterator:
        """``renderer.stream()``, or a stream that renders nothing (and ``audio_problem`` saying
        why) when no synth can be loaded, e.g. the soundfont was removed or damaged after start:
        composing goes on and the MIDI and the roll are still served."""
        with ExitStack() as stack:
            try:
                stream = stack.enter_context(self.renderer.stream())
            except RenderError:
                stream = MutedStream()
                self.audio_problem = self.no_audio_message()
            yield stream

    def render_or_none(self, midi) -> np.ndarray | None:
        """``renderer.render(midi)``, or None (and ``audio_problem`` set) when it cannot render."""
        try:
            return self.renderer.render(midi)
        except RenderError:
            self.audio_problem = self.no_audio_message()
            return None

    def no_audio_message(self) -> str:
        path = self.renderer.soundfont.path
        return (f"No audio this time: the soundfont {path} could not be loaded (it was removed, moved or damaged "
                "after the app started). The MIDI file and the piano roll are ready. To hear results again, put the "
                f"soundfont back (or set ${SOUNDFONT_ENV} to a working .sf2/.sf3 file) and restart the app.")

    def discard_results(self, folders: list[Path]) -> None:
        """Delete these result folders (a request that failed half-way: nothing of it is served)."""
        with self._results_lock:
            for folder in folders:
                if folder in self._results:
                    self._results.remove(folder)
                shutil.rmtree(folder, ignore_errors=True)

    def storage_message(self, err: OSError) -> str:
        """A failed write of a result file -> what is wrong and what to do, in words."""
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            problem = "the server's disk is full"
        elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            problem = f"the results folder {self._workdir} cannot be written to"
        else:
            problem = f"a result file could not be written in {self._workdir} ({err.strerror or 'input/output error'})"
        return (f"The piece could not be saved: {problem}, so nothing was kept from this request. Try again in a "
                "few minutes; if it keeps happening, the Space owner needs to free disk space or make the results "
                "folder writable (or set TMPDIR to a writable folder) and restart the app.")

    def restore_files(self, *takes: Take) -> None:
        """Write again, into one new result folder, the files of those ``takes`` whose folder is
        gone: result folders are shared by every session and the oldest go once ``kept_results``
        exist, while a session's history keeps up to 20 takes, so Undo or Keep can reach such a
        take. Its MIDI comes from its composition, its audio is rendered again (None without a
        soundfont) and its roll plays that audio. The takes are updated in place, so the history
        and the variations holding them keep the new paths; a failed write is a StorageError."""
        missing = [t for t in takes if not t.midi_path.is_file() or (t.audio_path and not t.audio_path.is_file())]
        if not missing:
            return
        folder = self.new_result_dir()
        try:
            written = [(take, *self._write_take_files(take, folder)) for take in missing]
        except OSError as err:
            self.discard_results([folder])
            raise StorageError(self.storage_message(err)) from err
        for take, midi_path, audio_path in written:  # only once every file is written
            take.midi_path, take.audio_path = midi_path, audio_path
            take.roll = take_roll(take.composition, take.checkpoint, [audio_path] if audio_path else [],
                                  f"{folder.name}-{midi_path.stem}")

    def _write_take_files(self, take: Take, folder: Path) -> tuple[Path, Path | None]:
        """``take``'s MIDI and audio (None without a soundfont) written in ``folder``, under their names."""
        midi_path = folder / take.midi_path.name
        take.composition.midi.dump(str(midi_path))
        audio = self.render_or_none(take.composition.midi)
        audio_path = None if audio is None else write_wav(midi_path.with_suffix(".wav"), audio,
                                                           self.renderer.sample_rate)
        return midi_path, audio_path

    def close(self) -> None:
        """Delete every result folder and free the synths."""
        shutil.rmtree(self._workdir, ignore_errors=True)
        self.renderer.close()


# ---------------------------------------------------------------- streaming and variations


@dataclass
class Partial:
    """A streamed update: the roll so far and the audio chunk files so far (variation 1)."""

    bars_done: int  # bars of the piece (primer included) complete so far
    roll: str  # the roll's HTML, which lists the audio chunk files for the browser's player


@dataclasses.dataclass(frozen=True)
class CloseLastBar:
    """A logit processor for continuing a take (continue, rewind): a take is whole bars, so the
    first metrical word after it is a bar line (or a rest), never one more onset in its last
    bar, which would change bars the person chose to keep. Rows where the grammar allows no
    bar line are left alone."""

    def __call__(self, state, field: str, logits):
        import torch
        from cwcompose.words import POS0
        if field != "bar_pos":
            return logits
        rows = (state.bar < 0) & ~state.done
        closed = logits.clone()
        closed[:, POS0:] = -torch.inf
        possible = torch.isfinite(closed).any(dim=1)
        return torch.where((rows & possible)[:, None], closed, logits)


def first_seed(request: ComposeRequest) -> int:
    """The seed of variation 1 (variation i gets seed + i - 1, so all must stay within 0..MAX_SEED)."""
    last = MAX_SEED - (request.variations - 1)
    if request.seed is None:
        return secrets.randbelow(last + 1)
    if request.seed > last:
        raise RequestError(f"with {request.variations} variations the seed must be at most {last} "
                           f"(variation i uses seed + i - 1), got {request.seed}")
    return request.seed


class MutedStream:
    """Stands in for a :class:`StreamRenderer` when no synth can be loaded: no audio, no error."""

    def feed(self, midi, until_tick: int) -> np.ndarray:
        return np.zeros((0, 2), dtype=np.float32)

    def finish(self, midi) -> np.ndarray:
        return np.zeros((0, 2), dtype=np.float32)


class StorageError(RequestError):
    """A result file could not be written (disk full, folder read-only); nothing of the request is served."""


def guard_result_files(stream: Callable) -> Callable:
    """Wraps :func:`stream_compose`: a failed write of a result file (disk full, folder not
    writable) deletes the request's result folder and becomes a :class:`StorageError` saying so;
    a request that fails or is dropped (client gone) leaves no folder behind either."""

    @functools.wraps(stream)
    def guarded(studio: "Studio", *args, **kwargs):
        inner, made = stream(studio, *args, **kwargs), []
        finished = False  # once the takes are out, their files are someone's result: kept
        try:
            while True:
                # each step runs on the calling thread (Gradio may change threads between steps),
                # so a thread-local tells new_result_dir whose folder it makes
                studio._made_here.folders = made
                try:
                    event = next(inner)
                except StopIteration:
                    break
                finally:
                    studio._made_here.folders = None
                finished = finished or isinstance(event, list)
                yield event
        except OSError as err:
            raise StorageError(studio.storage_message(err)) from err
        finally:
            inner.close()
            if not finished:
                studio.discard_results(made)

    return guarded


def request_opening(tokenizer, request: ComposeRequest) -> tuple:
    """The request's primer as words (from its MIDI file, read once, or the words it
    carries), the opening the engine continues (cut and trimmed, or None) and the locks
    as logit processors."""
    if request.primer_words is not None:
        primer = request.primer_words
    elif request.primer is not None:
        # through the tokenizer's own reader: a failed read is a MidiReadError naming the primer,
        # never an OSError that guard_result_files would report as the results disk failing
        primer = tokenizer.encode(request.primer, end=False)
    else:
        primer = None
    opening = primer_words(tokenizer, primer, request.primer_bars, request.from_bar) if primer is not None else None
    if opening is not None and not len(opening):
        opening = None
    try:
        constraints = request.locks.processors(tokenizer, opening)
    except ValueError as err:
        raise RequestError(str(err)) from err
    if request.primer_words is not None and opening is not None:
        constraints = [CloseLastBar(), *constraints]
    return primer, opening, constraints


def compare_checkpoints(studio: "Studio", request: ComposeRequest, stop: threading.Event | None) -> dict:
    """Every shipped checkpoint on one request and seed: step -> Take, or a message where
    the checkpoint is missing or damaged (the others still play)."""
    available = studio.available_checkpoints()
    if not available:
        raise CheckpointError(f"no checkpoints in {studio.checkpoint_dir}")
    seed = first_seed(request)  # one seed for every checkpoint, checked against the variations asked for
    out = {}
    for step in SHIPPED_STEPS:
        if step not in available:
            out[step] = studio.missing_checkpoint_message(step)
            continue
        try:
            for event in stream_compose(studio, dataclasses.replace(request, checkpoint=step, seed=seed), stop,
                                        label=f"checkpoint {step}"):
                if not isinstance(event, Partial):
                    out[step] = event[0]
        except CheckpointError as err:
            out[step] = str(err)
    return out


def compare_table(takes: dict) -> dict:
    """:func:`compare_checkpoints`' results as a table: a row per measure, a column per checkpoint
    ("not available" where a checkpoint gave a message instead of a take)."""
    columns = {step: take.numbers for step, take in takes.items() if not isinstance(take, str)}
    names = next((list(numbers) for numbers in columns.values()), [])
    rows = [[name] + [str(columns[s][name]) if s in columns else "not available" for s in takes]
            for name in names if name != "checkpoint"]
    return {"headers": ["measure", *map(str, takes)], "data": rows or [[""] * (len(takes) + 1)]}


@guard_result_files
def stream_compose(studio: "Studio", request: ComposeRequest, stop: threading.Event | None = None,
                   label: str = "") -> "Iterator[Partial | list[Take]]":
    """Compose ``request`` with the batched engine (``generation.iter_compose``: every variation
    in one batch, the locks as logit processors, ``from_bar`` for rewinds) and stream it: a
    :class:`Partial` after the primer (when there is one) and after every bar of variation 1
    (its audio so far as chunk files, its roll so far), then the list of takes (one per
    variation). Stop keeps what was composed."""
    from cwcompose.roll_view import RollNotes, roll_html
    request.check(studio.limits)
    model, tokenizer = studio.model(request.checkpoint)
    seed = first_seed(request)
    primer, opening, constraints = request_opening(tokenizer, request)
    primer_bars = count_bars(opening) if opening is not None else 0
    deadline = time.monotonic() + studio.limits.request_seconds
    should_stop = lambda: (stop is not None and stop.is_set()) or time.monotonic() > deadline  # noqa: E731
    folder = studio.new_result_dir()
    stream_id = folder.name
    sample_rate = studio.renderer.sample_rate
    total_bars = primer_bars + request.bars
    compositions: list[Composition] = []
    chunks: list[Path] = []

    def partial(audio_stream, words, complete: int) -> Partial:
        midi = tokenizer.decode(words)
        chunk = audio_stream.feed(midi, complete * 4 * midi.ticks_per_beat)
        if len(chunk):  # a WAV with no frames is not decodable audio in a browser
            chunks.append(write_wav(folder / f"chunk{len(chunks):03d}.wav", chunk, sample_rate))
        notes = RollNotes.from_midi(midi, primer_end, bars=complete)
        return Partial(complete, roll_html(notes, title=f"composing, bar {complete} of {total_bars}",
                                           chunks=chunks, stream_id=stream_id, done=False))

    with studio.audio_stream() as audio_stream:  # no synth (soundfont gone): MIDI and roll only
        primer_end = 0
        if opening is not None:  # the primer sounds at once, while the first bar is composed
            primer_midi = tokenizer.decode(opening)
            primer_end = max((n.start for n in primer_midi.instruments[0].notes), default=-1) + 1 \
                if primer_midi.instruments else 0
            yield partial(audio_stream, opening, primer_bars)
        for event in iter_compose(model, tokenizer, primer=primer, primer_bars=request.primer_bars,
                                  bars=request.bars, variations=request.variations, seed=seed,
                                  sampling=request.sampling, constraints=constraints, from_bar=request.from_bar,
                                  max_seconds=studio.limits.max_music_seconds, should_stop=should_stop):
            if isinstance(event, BarDone):
                if event.row == 0:
                    yield partial(audio_stream, event.words, primer_bars + event.bar + 1)
                continue
            compositions = event.compositions
            tail = audio_stream.finish(compositions[0].midi)
            if len(tail):
                chunks.append(write_wav(folder / f"chunk{len(chunks):03d}.wav", tail, sample_rate))
    takes = []
    for row, composition in enumerate(compositions):
        takes.append(_take(studio, request, composition, folder, row, chunks if row == 0 else None, stream_id,
                           label=f"{label} variation {row + 1}".strip() if request.variations > 1 else label))
    yield takes


def _take(studio: "Studio", request: ComposeRequest, composition: Composition, folder: Path, row: int,
          chunks: list[Path] | None, stream_id: str, label: str) -> Take:
    sample_rate = studio.renderer.sample_rate
    if chunks:
        audio_path = join_wavs(chunks, folder / f"cwcompose-{request.checkpoint}-seed{composition.seed}.wav",
                               sample_rate)
    else:
        audio = studio.render_or_none(composition.midi)  # None: no soundfont (studio.audio_problem says so)
        audio_path = None if audio is None else write_wav(
            folder / f"cwcompose-{request.checkpoint}-seed{composition.seed}-v{row + 1}.wav", audio, sample_rate)
    midi_path = folder / (f"cwcompose-{request.checkpoint}-seed{composition.seed}"
                          f"{f'-v{row + 1}' if row else ''}.mid")
    composition.midi.dump(str(midi_path))
    config = studio.tokenizer_config(request.checkpoint)
    numbers = piece_metrics(composition, config, request.checkpoint)
    numbers.update(locks_summary(request.locks, config))
    if request.variations > 1:
        numbers["variation"] = row + 1
    roll = take_roll(composition, request.checkpoint, chunks or [], stream_id)
    return Take(request.checkpoint, composition.seed, dataclasses.replace(request, seed=composition.seed),
                composition, midi_path, audio_path, numbers, roll, label)


def take_roll(composition: Composition, checkpoint: int, audio: list[Path], stream_id: str) -> str:
    """A finished take's roll; its player streams the ``audio`` files under ``stream_id`` (no
    player without audio)."""
    from cwcompose.roll_view import RollNotes, roll_html
    notes = RollNotes.from_midi(composition.midi, composition.primer_end_tick,
                                bars=composition.primer_bars + composition.bars)
    return roll_html(notes, title=f"checkpoint {checkpoint}, seed {composition.seed}", chunks=audio,
                     stream_id=stream_id if audio else "", done=True)
