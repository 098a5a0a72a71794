"""Composing: primer -> words -> batched, KV-cached, grammar-masked sampling -> MIDI.

:func:`iter_compose` writes ``variations`` pieces at once (row i with seed ``seed + i``)
and yields a :class:`BarDone` per finished bar per row, then :class:`Done`;
:func:`compose` is the one-piece call that consumes it. Length is unlimited: each row's
window slides at a bar line when its cache fills (:mod:`cwcompose.decoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import miditoolkit
import numpy as np
import torch

from cwcompose.decoder import Decoder, Processor, WordSampler
from cwcompose.fused import FusedWords, finish_word, worth_compiling
from cwcompose.grammar import MAX_NOTES_PER_ONSET, WordState
from cwcompose.model import CPTransformer
from cwcompose.render import ticks_to_seconds
from cwcompose.sampling import DEFAULT_SAMPLING, SamplingConfig, sampling_processors
from cwcompose.tokenizer import CPTokenizer, ScoreNote, tempo_classes_bpm
from cwcompose.words import (
    BAR, CHORD_NONE, COL, CONTI, FAMILY_END, FAMILY_METRIC, FIELDS, IGNORE, KIND_REST, POS0, TEMPO0, VALUE0,
    bar_jumps, bar_lines, count_bars, note_table, read_words, word_seconds,
)

MAX_WORDS_PER_BAR = 32 * (MAX_NOTES_PER_ONSET + 1) + 2


# ---------------------------------------------------------------- primers


def primer_words(tokenizer: CPTokenizer, primer, keep_bars: int, from_bar: int | None = None) -> np.ndarray:
    """A primer (MIDI or words) -> the words of its last ``keep_bars`` bars (of its first
    ``from_bar`` bars when given), with the first position word's tempo and chord made
    explicit (they may have been set before the cut)."""
    if isinstance(primer, np.ndarray):
        words = primer[primer[:, COL["family"]] != FAMILY_END]
    else:
        words = tokenizer.encode(primer, end=False)
    if from_bar is not None:
        words = first_bars(words, from_bar)
    jumps = bar_jumps(words)
    starts = np.flatnonzero(bar_lines(words))  # not rests
    bars_from_here = np.cumsum(jumps[::-1])[::-1]
    fitting = starts[bars_from_here[starts] <= keep_bars]
    cut = int(fitting[0]) if len(fitting) else 0
    kept = words[cut:].copy()
    positions = np.flatnonzero(kept[:, COL["bar_pos"]] >= POS0)
    if len(positions):
        first = positions[0]
        for name, real in (("tempo", TEMPO0), ("chord", CHORD_NONE)):
            before = words[:cut, COL[name]]
            set_before = before[before >= real]
            if kept[first, COL[name]] == CONTI and len(set_before):
                kept[first, COL[name]] = set_before[-1]
    return kept


def first_bars(words: np.ndarray, bars: int) -> np.ndarray:
    """The words of the first ``bars`` bars (bar lines counted from the first word; a
    Rest jumping past the last one is shortened to end there)."""
    if bars < 1:
        raise ValueError(f"from_bar must be at least 1, got {bars}")
    reading = read_words(words, positions_per_bar=1)
    past = np.flatnonzero(reading.bar >= bars)
    if not len(past):
        return words[:reading.length].copy()
    cut = int(past[0])
    kept = words[:cut].copy()
    bar_before = int(reading.bar[cut] - reading.jump[cut])
    if reading.kind[cut] == KIND_REST and bar_before < bars - 1:
        rest = words[cut].copy()
        rest[COL["rest"]] = VALUE0 + bars - 2 - bar_before
        kept = np.vstack([kept, rest[None]])
    return kept


# ---------------------------------------------------------------- composing


@dataclass
class Composition:
    """A composed piece: primer words followed by generated words, and its MIDI."""

    words: np.ndarray
    primer_length: int
    midi: miditoolkit.MidiFile
    primer_end_tick: int
    primer_bars: int
    bars: int
    seconds: float
    seed: int
    stopped_early: bool = False
    continuation: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.continuation = self.words[self.primer_length:]


@dataclass(frozen=True)
class BarDone:
    """Bar ``bar`` (0 = the first generated bar) of row ``row`` is finished: ``words`` are
    the row's words so far (primer included, up to the word that closed the bar) and
    ``notes`` the bar's notes (onsets in positions from the start of ``words``)."""

    row: int
    bar: int
    words: np.ndarray
    notes: list[ScoreNote]


@dataclass(frozen=True)
class Done:
    """The end of a composing run: one composition per row."""

    compositions: list[Composition]


@dataclass
class _Rows:
    """Host-side bookkeeping of the rows: the bars reported and where each piece ends."""

    bars: list[int]  # each row's current bar (0 = the first generated one)
    done: list[bool]
    reported: list[int]  # bars yielded as BarDone
    cut: list[np.ndarray | None]  # the words kept when a row was cut (time limit, stop)
    stopped: list[bool]


@torch.inference_mode()
def iter_compose(model: CPTransformer, tokenizer: CPTokenizer, *, primer=None, primer_bars: int = 8, bars: int = 16,
                 variations: int = 1, seed: int = 0, sampling: SamplingConfig | None = None,
                 constraints: Sequence[Processor] = (), from_bar: int | None = None,
                 max_seconds: float | None = None, should_stop: Callable[[], bool] | None = None,
                 compile: bool = False) -> Iterator[BarDone | Done]:
    """Continue ``primer`` (path, bytes, MidiFile, words or None) by ``bars`` bars,
    ``variations`` times (row i with seed ``seed + i``; row i is what a run of one with
    that seed writes). ``from_bar``: keep only the primer's first N bars (then its last
    ``primer_bars``). Yields a :class:`BarDone` per finished bar per row, in order, and
    a final :class:`Done`. A row stops after ``bars`` bars or once its music passes
    ``max_seconds`` (primer included); ``should_stop()`` (checked at every finished bar)
    stops every row, keeping the bars already finished. ``compile``: for one variation
    without custom constraints, each word after the first is one compiled call
    (:mod:`cwcompose.fused`; the first call compiles, about a minute)."""
    if bars < 1 or primer_bars < 1 or variations < 1:
        raise ValueError("bars, primer_bars and variations must be at least 1")
    sampling = sampling or DEFAULT_SAMPLING
    opening, primer_length = _opening(tokenizer, primer, primer_bars, from_bar)
    device = next(model.parameters()).device
    constraints = on_device(constraints, device)
    state = WordState.start(opening, batch=variations, bars=bars, from_primer=primer_length > 0,
                            vocab_sizes=model.config.vocab_sizes, device=device)
    decoder = Decoder(model, variations)
    sampler = WordSampler(model, [seed + i for i in range(variations)],
                          [*constraints, *sampling_processors(sampling)],
                          greedy=frozenset(f for f, t in sampling.temperature.items() if t == 0))
    fused = FusedWords(decoder, sampler) if compile and worth_compiling(sampler, variations) else None
    sampler.family(decoder.prefill(opening), state, 0)
    rows = _Rows(bars=[int(state.bar[0])] * variations, done=[False] * variations, reported=[0] * variations,
                 cut=[None] * variations, stopped=[False] * variations)
    first_bar = count_bars(opening) - (0 if primer_length else 1)  # the first generated bar, counted in `opening`
    for index in range(bars * MAX_WORDS_PER_BAR + 1):  # word ``index``'s family is drawn
        info = torch.stack([state.done.long(), state.bar, decoder.lengths, decoder.n_words]).tolist()  # the sync
        done, bar, lengths, n_words = info
        stop = False
        for event in _bar_events(tokenizer, decoder, state, rows, bar, done, n_words, first_bar, max_seconds):
            yield event
            rows.reported[event.row] = event.bar + 1
            if should_stop is not None and should_stop():
                stop = True
                break
        if stop:
            _stop(decoder, rows, len(opening), first_bar)
            break
        if all(rows.done) or index == bars * MAX_WORDS_PER_BAR:
            break
        decoder.slide(decoder.full_rows(lengths, rows.done))
        finish_word(decoder, sampler, fused, state, index)
    yield Done([_finish(tokenizer, _row_words(decoder, rows, r), primer_length, seed + r, rows.stopped[r],
                        count_bars(opening[:primer_length])) for r in range(variations)])


def _bar_events(tokenizer: CPTokenizer, decoder: Decoder, state: WordState, rows: _Rows, bar: list[int],
                done: list[bool], n_words: list[int], first_bar: int,
                max_seconds: float | None) -> Iterator[BarDone]:
    """BarDone events for the bars that the last word finished, row by row; rows past
    ``max_seconds`` are cut there and marked done."""
    for r in range(len(bar)):
        if rows.done[r] or (bar[r] == rows.bars[r] and not done[r]):
            continue
        finished = range(rows.bars[r], bar[r]) if not done[r] else range(rows.bars[r], rows.bars[r] + 1)
        words = decoder.history[r, :n_words[r] - (0 if done[r] else 1)].cpu().numpy().copy()
        rows.bars[r], rows.done[r] = bar[r], bool(done[r])
        if max_seconds is not None:
            seconds = word_seconds(words, tokenizer.config, tempo_classes_bpm(tokenizer.config))
            if len(seconds) and seconds[-1] > max_seconds:
                rows.cut[r] = words[:int(np.searchsorted(seconds, max_seconds, side="right"))]
                rows.done[r], rows.stopped[r] = True, True
                state.done[r] = True
                continue
        notes = note_table(words, tokenizer.config)
        for b in finished:
            if b >= 0:
                yield BarDone(row=r, bar=b, words=words, notes=_notes_of_bar(notes, first_bar + b))


def _notes_of_bar(table, bar: int) -> list[ScoreNote]:
    keep = table.bar == bar
    return [ScoreNote(onset=o, pitch=p, duration_class=d, velocity_class=v) for o, p, d, v in zip(
        table.onset[keep].tolist(), table.pitch[keep].tolist(), table.duration_class[keep].tolist(),
        table.velocity_class[keep].tolist())]


def _stop(decoder: Decoder, rows: _Rows, opening_length: int, first_bar: int) -> None:
    """Cut every unfinished row after the bars it reported (never into the opening)."""
    for r, finished in enumerate(rows.done):
        if finished:
            continue
        words = decoder.history[r, :int(decoder.n_words[r])].cpu().numpy()
        keep = first_bar + rows.reported[r]
        kept = first_bars(words, keep) if keep >= 1 else words[:0]
        rows.cut[r] = kept if len(kept) >= opening_length else words[:opening_length].copy()
        rows.done[r], rows.stopped[r] = True, True


def _row_words(decoder: Decoder, rows: _Rows, r: int) -> np.ndarray:
    if rows.cut[r] is not None:
        return rows.cut[r]
    return decoder.history[r, :int(decoder.n_words[r])].cpu().numpy().copy()


@torch.inference_mode()
def compose(model: CPTransformer, tokenizer: CPTokenizer, *, primer=None, primer_bars: int = 8, bars: int = 16,
            max_seconds: float | None = None, sampling: SamplingConfig | None = None, seed: int = 0,
            on_bar: Callable[[int, int], bool | None] | None = None, constraints: Sequence[Processor] = (),
            from_bar: int | None = None, compile: bool = False) -> Composition:
    """Continue ``primer`` (path, bytes, MidiFile, words or None) by ``bars`` bars.

    Stops after ``bars`` bars, or once ``max_seconds`` of music (primer included) are
    written, or when ``on_bar(bars_done, bars)`` returns False (the bars done are kept,
    ``stopped_early`` set). Same inputs and seed -> same words. ``compile``: as
    :func:`iter_compose` (off the request path: the first call compiles)."""
    stop = [False]

    def progress(event: BarDone) -> None:
        if on_bar is not None and event.bar + 1 < bars and on_bar(event.bar + 1, bars) is False:
            stop[0] = True

    for event in iter_compose(model, tokenizer, primer=primer, primer_bars=primer_bars, bars=bars, seed=seed,
                              sampling=sampling, constraints=constraints, from_bar=from_bar,
                              max_seconds=max_seconds, should_stop=lambda: stop[0], compile=compile):
        if isinstance(event, BarDone):
            progress(event)
        else:
            return event.compositions[0]
    raise AssertionError("iter_compose ends with Done")


def compose_variations(model: CPTransformer, tokenizer: CPTokenizer, *, variations: int, **options) -> list[Composition]:
    """``variations`` pieces at once (seeds ``seed``, ``seed + 1``, ...); options as :func:`iter_compose`."""
    for event in iter_compose(model, tokenizer, variations=variations, **options):
        if isinstance(event, Done):
            return event.compositions
    raise AssertionError("iter_compose ends with Done")


def on_device(processors: Sequence[Processor], device: torch.device) -> list[Processor]:
    """The processors with their tensors on ``device``, moved once here rather than copied
    on every word: a processor holding tensors (a chord or key lock) offers ``to(device)``."""
    return [q.to(device) if callable(getattr(q, "to", None)) else q for q in processors]


def _opening(tokenizer: CPTokenizer, primer, primer_bars: int, from_bar: int | None) -> tuple[np.ndarray, int]:
    """The words a piece starts from (the primer's last bars, or one bar line) and how
    many came from the primer."""
    if primer is None:  # training windows start on a bar line: so does an empty piece
        return np.array([[FAMILY_METRIC, BAR] + [IGNORE] * (len(FIELDS) - 2)], dtype=np.int64), 0
    words = primer_words(tokenizer, primer, primer_bars, from_bar)
    if not len(words):
        return _opening(tokenizer, None, primer_bars, None)
    return words, len(words)


def _finish(tokenizer: CPTokenizer, words: np.ndarray, primer_length: int, seed: int, stopped: bool,
            primer_bars: int) -> Composition:
    midi = tokenizer.decode(words)
    primer_notes = tokenizer.decode(words[:primer_length]).instruments[0].notes if primer_length else []
    primer_end_tick = max((n.start for n in primer_notes), default=-1) + 1
    seconds = float(ticks_to_seconds(np.array([midi.max_tick]), midi)[0])
    return Composition(words=words, primer_length=primer_length, midi=midi, primer_end_tick=primer_end_tick,
                       primer_bars=primer_bars, bars=count_bars(words[primer_length:]), seconds=seconds,
                       seed=int(seed), stopped_early=stopped)


def save_midi(composition: Composition, path: str | Path) -> Path:
    composition.midi.dump(str(path))
    return Path(path)
