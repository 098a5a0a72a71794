"""Objective metrics of a piece, measured on the tokenizer's grid.

Times are in *positions* (1/``positions_per_beat`` beat; 32 to a 4-beat bar), pitches
in MIDI numbers. A piece is first reduced to :class:`GridNotes` (onset, pitch,
duration per note, and its length in bars), from words, a :class:`Score` or a MIDI
file; every metric is a small function of that.

H1/H4 and GS follow MusDr (Wu & Yang 2020), as used by the CP Transformer paper
(Hsiao et al. 2021): pitch-class histograms count note onsets, windows slide by one
bar and skip windows without notes, and GS averages over all pairs of bars.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable

import miditoolkit
import numpy as np

from cwcompose.tokenizer import PITCH_CLASSES, Score, TokenizerConfig, duration_classes
from cwcompose.words import note_table

SPAN_BARS = 4  # length of the spans that the copying metric looks up

# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Natural minor: the same pitch-class set as the relative major, so confusing the two
# (a common error of the profile method) does not change the out-of-key ratio.
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}


@dataclass(frozen=True)
class GridNotes:
    """Notes on the grid: ``onset`` and ``duration`` in positions, ``pitch`` in MIDI numbers.

    ``bars`` is the piece's length in bars; bar ``b`` holds onsets
    ``b * positions_per_bar <= onset < (b + 1) * positions_per_bar``.
    """

    onset: np.ndarray
    pitch: np.ndarray
    duration: np.ndarray
    bars: int
    positions_per_bar: int = 32

    @property
    def bar(self) -> np.ndarray:
        """The bar of every note's onset."""
        return self.onset // self.positions_per_bar


def make_grid_notes(onset, pitch, duration, bars: int | None = None, positions_per_bar: int = 32) -> GridNotes:
    """GridNotes sorted by (onset, pitch, duration) of a piece of ``bars`` bars (default: up
    to the last onset's bar); notes starting outside those bars are left out."""
    onset, pitch, duration = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (onset, pitch, duration))
    if bars is None:
        bars = int(onset.max() // positions_per_bar + 1) if len(onset) else 0
    keep = (onset >= 0) & (onset < bars * positions_per_bar)
    order = np.lexsort((duration[keep], pitch[keep], onset[keep]))
    return GridNotes(onset[keep][order], pitch[keep][order], duration[keep][order], int(bars), positions_per_bar)


def grid_notes_from_words(words: np.ndarray, config: TokenizerConfig, bars: int | None = None) -> GridNotes:
    """Compound words -> GridNotes, read by :func:`cwcompose.words.note_table` (as ``decode_score``)."""
    table = note_table(words, config)
    return make_grid_notes(table.onset, table.pitch, duration_classes(config)[table.duration_class],
                           bars, config.positions_per_bar)


def grid_notes_from_score(score: Score, config: TokenizerConfig, bars: int | None = None) -> GridNotes:
    """A :class:`Score` -> GridNotes (durations from the duration classes, in positions)."""
    lengths = duration_classes(config)
    return make_grid_notes([n.onset for n in score.notes], [n.pitch for n in score.notes],
                           [lengths[n.duration_class] for n in score.notes], bars, config.positions_per_bar)


def grid_notes_from_midi(midi: miditoolkit.MidiFile, config: TokenizerConfig, bars: int | None = None) -> GridNotes:
    """Every non-drum note of a MIDI file, bar 0 at tick 0, rounded to the nearest position."""
    ticks = midi.ticks_per_beat / config.positions_per_beat  # ticks per position
    notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes]
    onset = np.round(np.array([n.start for n in notes], float) / ticks)
    duration = np.maximum(np.round(np.array([n.end - n.start for n in notes], float) / ticks), 1)
    return make_grid_notes(onset, [n.pitch for n in notes], duration, bars, config.positions_per_bar)


def to_grid_notes(piece, config: TokenizerConfig, bars: int | None = None) -> GridNotes:
    """Words (ndarray), a Score, a MidiFile or GridNotes -> GridNotes."""
    if isinstance(piece, GridNotes):
        return piece if bars is None else excerpt(piece, 0, bars)
    if isinstance(piece, Score):
        return grid_notes_from_score(piece, config, bars)
    if isinstance(piece, miditoolkit.MidiFile):
        return grid_notes_from_midi(piece, config, bars)
    return grid_notes_from_words(np.asarray(piece), config, bars)


def excerpt(notes: GridNotes, first_bar: int, bars: int) -> GridNotes:
    """Bars ``first_bar .. first_bar + bars - 1`` (by onset), moved to start at bar 0."""
    keep = (notes.bar >= first_bar) & (notes.bar < first_bar + bars)
    shift = first_bar * notes.positions_per_bar
    return GridNotes(notes.onset[keep] - shift, notes.pitch[keep], notes.duration[keep], bars, notes.positions_per_bar)


# ---------------------------------------------------------------- pitch


def entropy_bits(histogram: np.ndarray) -> float:
    """Shannon entropy in bits of a histogram (any non-negative weights, not all zero)."""
    p = np.asarray(histogram, float)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def pitch_class_entropy(notes: GridNotes, window_bars: int) -> float:
    """Mean entropy (bits, 0..log2 12) of the onset-count pitch-class histogram of every
    ``window_bars``-bar window, sliding by one bar; windows without notes are skipped.
    A piece shorter than the window is one window. NaN for a piece without notes."""
    window_bars = max(min(window_bars, notes.bars), 1)
    counts = np.zeros((max(notes.bars, 1), 12))
    np.add.at(counts, (notes.bar, notes.pitch % 12), 1)
    cumulative = np.vstack([np.zeros(12), np.cumsum(counts, axis=0)])
    windows = cumulative[window_bars:] - cumulative[:-window_bars]
    entropies = [entropy_bits(w) for w in windows if w.sum() > 0]
    return float(np.mean(entropies)) if entropies else math.nan


def estimate_key(notes: GridNotes) -> tuple[int, str]:
    """(tonic pitch class 0..11, "major" | "minor") by Krumhansl-Schmuckler: the key whose
    profile correlates best with the duration-weighted pitch-class histogram."""
    histogram = np.bincount(notes.pitch % 12, weights=notes.duration, minlength=12)
    if not histogram.any() or np.all(histogram == histogram[0]):
        return 0, "major"  # no tonal evidence: the correlation is undefined
    profiles = np.stack([MAJOR_PROFILE, MINOR_PROFILE])
    scores = np.array([[np.corrcoef(histogram, np.roll(p, tonic))[0, 1] for tonic in range(12)] for p in profiles])
    mode, tonic = np.unravel_index(np.argmax(scores), scores.shape)  # ties: major, then the lower tonic
    return int(tonic), ("major", "minor")[mode]


def key_name(key: tuple[int, str]) -> str:
    return f"{PITCH_CLASSES[key[0]]} {key[1]}"


def out_of_key_ratio(notes: GridNotes, key: tuple[int, str]) -> float:
    """Share of notes (by count, 0..1) whose pitch class is outside ``key``'s scale."""
    if not len(notes.pitch):
        return math.nan
    in_scale = np.isin((notes.pitch - key[0]) % 12, SCALES[key[1]])
    return float(1.0 - in_scale.mean())


def pitch_range(notes: GridNotes) -> int:
    """Highest minus lowest pitch, in semitones (0 without notes)."""
    return int(notes.pitch.max() - notes.pitch.min()) if len(notes.pitch) else 0


# ---------------------------------------------------------------- rhythm and texture


def note_density(notes: GridNotes) -> float:
    """Notes per bar."""
    return len(notes.onset) / notes.bars if notes.bars else math.nan


def polyphony(notes: GridNotes) -> float:
    """Mean number of notes sounding at each distinct onset position (held notes count)."""
    if not len(notes.onset):
        return math.nan
    onsets = np.unique(notes.onset)
    started = np.searchsorted(notes.onset, onsets, side="right")  # notes.onset is sorted
    ended = np.searchsorted(np.sort(notes.onset + notes.duration), onsets, side="right")
    return float(np.mean(started - ended))


def onset_vectors(notes: GridNotes) -> np.ndarray:
    """(bars, positions_per_bar) bool: where in each bar at least one note starts."""
    grid = np.zeros((notes.bars, notes.positions_per_bar), bool)
    grid[notes.bar, notes.onset % notes.positions_per_bar] = True
    return grid


def groove_similarity(notes: GridNotes) -> float:
    """GS: mean over all pairs of bars of 1 - Hamming distance / positions_per_bar between
    their onset vectors (0..1; 1 = every bar has the same rhythm); bars without notes take
    part, as in MusDr. NaN under 2 bars or without notes."""
    grid = onset_vectors(notes)
    if len(grid) < 2 or not grid.any():
        return math.nan
    distance = (grid[:, None, :] != grid[None, :, :]).sum(-1)
    i, j = np.triu_indices(len(grid), k=1)
    return float(np.mean(1.0 - distance[i, j] / notes.positions_per_bar))


# ---------------------------------------------------------------- repetition and copying


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (SplitMix64's finaliser); uint64 in, uint64 out, wrapping."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def bar_hashes(notes: GridNotes) -> np.ndarray:
    """(bars,) uint64: a hash of each bar's notes as (position in bar, pitch, duration),
    independent of the bar's place in the piece; 0 for a bar without onsets."""
    position = notes.onset % notes.positions_per_bar
    codes = (((position * 128 + notes.pitch) << 16) | np.minimum(notes.duration, 0xFFFF)).astype(np.uint64)
    sums = np.zeros(notes.bars, dtype=np.uint64)
    np.add.at(sums, notes.bar, splitmix64(codes))  # a sum: the order of a bar's notes does not matter
    occupied = np.bincount(notes.bar, minlength=notes.bars)[:notes.bars] > 0
    return np.where(occupied, splitmix64(sums) | np.uint64(1), np.uint64(0))  # | 1 keeps 0 for empty bars


def span_hashes(notes: GridNotes, span_bars: int = SPAN_BARS) -> np.ndarray:
    """uint64 hash of every ``span_bars``-bar span (sliding by one bar) that holds a note."""
    bars = bar_hashes(notes)
    count = len(bars) - span_bars + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    spans = np.zeros(count, dtype=np.uint64)
    for k in range(span_bars):  # chaining a bijection makes the hash depend on the bars' order
        spans = splitmix64(spans ^ bars[k:k + count])
    occupied = np.convolve(bars != 0, np.ones(span_bars, int), mode="valid") > 0
    return spans[occupied]


def repetition_share(notes: GridNotes) -> float:
    """Share (0..1) of the bars with notes whose content (position, pitch, duration of every
    note) equals an earlier bar's; a bar played 8 times gives 7/8. NaN without notes."""
    hashes = bar_hashes(notes)
    hashes = hashes[hashes != 0]
    if not len(hashes):
        return math.nan
    _, first = np.unique(hashes, return_index=True)
    return 1.0 - len(first) / len(hashes)


def longest_repeated_run(notes: GridNotes) -> int:
    """Longest run of consecutive bars (with notes) equal to an earlier run of the same
    length, in bars; the two runs may overlap (one bar played 8 times gives 7)."""
    hashes = bar_hashes(notes)
    same = np.tril((hashes[:, None] == hashes[None, :]) & (hashes[:, None] != 0), k=-1)
    run, best = np.zeros(len(hashes), int), 0
    for row in same:  # run[j]: length of the match ending at (this bar, bar j)
        run = np.where(row, np.concatenate([[0], run[:-1]]) + 1, 0)
        best = max(best, int(run.max(initial=0)))
    return best


@dataclass(frozen=True)
class SpanIndex:
    """Hashes of every 4-bar span of a set of songs, sorted, for the copying metric."""

    hashes: np.ndarray
    songs: int
    span_bars: int = SPAN_BARS


def build_span_index(songs: Iterable, config: TokenizerConfig, span_bars: int = SPAN_BARS) -> SpanIndex:
    """An index of the spans of ``songs`` (each words, a Score, a MidiFile or GridNotes)."""
    parts, count = [], 0
    for song in songs:
        parts.append(span_hashes(to_grid_notes(song, config), span_bars))
        count += 1
    hashes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)
    return SpanIndex(hashes, count, span_bars)


def copy_share(notes: GridNotes, index: SpanIndex) -> float:
    """Share (0..1) of the piece's spans with notes found verbatim in ``index``; NaN for a
    piece shorter than a span."""
    spans = span_hashes(notes, index.span_bars)
    return float(np.isin(spans, index.hashes).mean()) if len(spans) else math.nan


# ---------------------------------------------------------------- variety across pieces


def pitch_class_histogram(notes: GridNotes) -> np.ndarray:
    """Share of the note onsets on each of the 12 pitch classes (all zero without notes)."""
    counts = np.bincount(notes.pitch % 12, minlength=12).astype(float)
    return counts / max(counts.sum(), 1.0)


def onset_position_histogram(notes: GridNotes) -> np.ndarray:
    """Share of the note onsets at each position of the bar (``positions_per_bar`` bins)."""
    counts = np.bincount(notes.onset % notes.positions_per_bar, minlength=notes.positions_per_bar).astype(float)
    return counts / max(counts.sum(), 1.0)


VARIETY_HISTOGRAMS = {"pitch_classes": pitch_class_histogram, "rhythm": onset_position_histogram}
VARIETY_LABELS = {"pitch_classes": "pitch-class variety", "rhythm": "rhythm variety"}


def pairwise_distances(histograms: np.ndarray) -> np.ndarray:
    """(pieces, pieces) total-variation distances between the rows of ``histograms`` (pieces,
    bins): 0 for rows alike, 1 for rows with no bin in common."""
    return 0.5 * np.abs(histograms[:, None, :] - histograms[None, :, :]).sum(-1)


def mean_pairwise_distance(histograms: np.ndarray) -> float:
    """Mean total-variation distance over all pairs of rows of ``histograms`` (pieces, bins):
    0 when every piece uses the bins alike, 1 when no two share any; NaN below 2 rows."""
    n = len(histograms)
    return float(pairwise_distances(histograms)[np.triu_indices(n, k=1)].mean()) if n >= 2 else math.nan


def variety(pieces: list[GridNotes], histogram) -> dict[str, float]:
    """How differently ``pieces`` use ``histogram``'s bins: the mean pairwise distance, with a
    leave-one-piece-out (jackknife) standard error; pieces without notes are left out."""
    rows = np.array([histogram(p) for p in pieces if len(p.onset)])
    n = len(rows)
    if n < 3:
        return {"mean": mean_pairwise_distance(rows), "sem": math.nan, "n": n}
    distances = pairwise_distances(rows)
    total = distances[np.triu_indices(n, k=1)].sum()
    # leaving piece i out drops its row of pairs; the rest is a mean over (n-1)(n-2)/2 pairs
    left_out = (total - distances.sum(axis=1)) / ((n - 1) * (n - 2) / 2)
    sem = math.sqrt((n - 1) / n * ((left_out - left_out.mean()) ** 2).sum())
    return {"mean": float(total / (n * (n - 1) / 2)), "sem": sem, "n": n}


# ---------------------------------------------------------------- all together


METRIC_LABELS = {
    "h1": "H1 (bits)",
    "h4": "H4 (bits)",
    "groove_similarity": "GS",
    "out_of_key": "out-of-key",
    "note_density": "notes/bar",
    "polyphony": "polyphony",
    "pitch_range": "range (st)",
    "repetition": "repeated bars",
    "longest_repeat": "longest repeat (bars)",
    "copying": "copied 4-bar spans",
}


@dataclass(frozen=True)
class PieceMetrics:
    """Every metric of one piece; see the functions of the same names for units."""

    bars: int
    notes: int
    key: str
    h1: float
    h4: float
    groove_similarity: float
    out_of_key: float
    note_density: float
    polyphony: float
    pitch_range: int
    repetition: float
    longest_repeat: int
    copying: float  # NaN when no index was given

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def piece_metrics(piece, config: TokenizerConfig, *, bars: int | None = None,
                  index: SpanIndex | None = None) -> PieceMetrics:
    """All metrics of ``piece`` (words, Score, MidiFile or GridNotes) of ``bars`` bars
    (default: up to its last onset), copying measured against ``index``."""
    notes = to_grid_notes(piece, config, bars)
    key = estimate_key(notes)
    return PieceMetrics(
        bars=notes.bars, notes=len(notes.onset), key=key_name(key),
        h1=pitch_class_entropy(notes, 1), h4=pitch_class_entropy(notes, 4),
        groove_similarity=groove_similarity(notes), out_of_key=out_of_key_ratio(notes, key),
        note_density=note_density(notes), polyphony=polyphony(notes), pitch_range=pitch_range(notes),
        repetition=repetition_share(notes), longest_repeat=longest_repeated_run(notes),
        copying=copy_share(notes, index) if index is not None else math.nan,
    )
