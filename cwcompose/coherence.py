"""Coherence of a continuation with its primer, and of a long piece with itself: key
adherence against the primer's key, phrases that return (a bar that closely or exactly
repeats one of the bars before it), density against the primer, and the same measured
chunk by chunk over a long form (drift, dead bars, loops).

Bars and positions are those of :class:`cwcompose.metrics.GridNotes` (32 positions to a
4-beat bar).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from cwcompose.metrics import (
    GridNotes, bar_hashes, estimate_key, excerpt, key_name, note_density, out_of_key_ratio, repetition_share,
)

REPEAT_LOOKBACK = 8  # bars looked back for a repeated phrase
CLOSE_REPEAT_JACCARD = 0.6  # a bar "closely repeats" another at this Jaccard similarity or more


def bar_onset_sets(notes: GridNotes) -> list[frozenset]:
    """Per bar, the set of (position in the bar, pitch class) of its note onsets (empty for a
    bar without notes): what a bar sounds like, octave and duration aside."""
    sets: list[set] = [set() for _ in range(notes.bars)]
    for position, pitch, bar in zip((notes.onset % notes.positions_per_bar).tolist(), (notes.pitch % 12).tolist(),
                                    notes.bar.tolist()):
        sets[bar].add((position, pitch))
    return [frozenset(s) for s in sets]


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a ∩ b| / |a ∪ b|, 0..1; 0 when either set is empty (an empty bar repeats nothing)."""
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def close_repeats(notes: GridNotes, lookback: int = REPEAT_LOOKBACK,
                  threshold: float = CLOSE_REPEAT_JACCARD) -> np.ndarray:
    """(bars,) bool: the bar has notes and its :func:`bar_onset_sets` set has a Jaccard
    similarity of at least ``threshold`` with one of the ``lookback`` bars before it."""
    sets = bar_onset_sets(notes)
    return np.array([any(jaccard(sets[b], sets[a]) >= threshold for a in range(max(b - lookback, 0), b))
                     for b in range(notes.bars)], bool)


def exact_repeats(notes: GridNotes, lookback: int = REPEAT_LOOKBACK) -> np.ndarray:
    """(bars,) bool: the bar has notes and equals (position, pitch, duration of every note) one
    of the ``lookback`` bars before it."""
    hashes = bar_hashes(notes)
    return np.array([h != 0 and bool(np.any(hashes[max(b - lookback, 0):b] == h)) for b, h in enumerate(hashes)],
                    bool)


def occupied_bars(notes: GridNotes) -> np.ndarray:
    """(bars,) bool: the bar holds at least one note onset."""
    return np.bincount(notes.bar, minlength=notes.bars)[:notes.bars] > 0


def share_of_bars(flags: np.ndarray, notes: GridNotes, first_bar: int = 0, last_bar: int | None = None) -> float:
    """Share (0..1) of the bars with notes in ``first_bar .. last_bar - 1`` where ``flags`` is
    set; NaN when none of those bars has notes."""
    occupied = occupied_bars(notes)[first_bar:last_bar]
    return float(flags[first_bar:last_bar][occupied].mean()) if occupied.any() else math.nan


def close_repeat_share(notes: GridNotes, first_bar: int = 0, lookback: int = REPEAT_LOOKBACK,
                       threshold: float = CLOSE_REPEAT_JACCARD) -> float:
    """Share of the bars with notes from ``first_bar`` on that closely repeat (Jaccard >=
    ``threshold`` on (position, pitch class)) one of the ``lookback`` bars before them; the
    bars before ``first_bar`` (a primer) are looked back at but not counted."""
    return share_of_bars(close_repeats(notes, lookback, threshold), notes, first_bar)


def exact_repeat_share(notes: GridNotes, first_bar: int = 0, lookback: int = REPEAT_LOOKBACK) -> float:
    """As :func:`close_repeat_share`, for bars equal to one of the ``lookback`` bars before them."""
    return share_of_bars(exact_repeats(notes, lookback), notes, first_bar)


def same_key(a: GridNotes, b: GridNotes) -> float:
    """1.0 when the estimated keys of ``a`` and ``b`` are the same (tonic and mode: a relative
    minor is another key), 0.0 when not, NaN when either has no notes."""
    if not len(a.pitch) or not len(b.pitch):
        return math.nan
    return float(estimate_key(a) == estimate_key(b))


def relative_density(primer: GridNotes, continuation: GridNotes) -> float:
    """Notes per bar of the continuation ÷ notes per bar of the primer; NaN for a primer
    without notes."""
    return note_density(continuation) / note_density(primer) if len(primer.onset) and primer.bars else math.nan


COHERENCE_LABELS = {
    "out_of_key_vs_primer": "out-of-key vs primer key",
    "same_key": "same key as primer",
    "close_repeats": "close repeats (8 back)",
    "exact_repeats": "exact repeats (8 back)",
    "repetition": "repeated bars",
    "density_ratio": "density ÷ primer",
}


@dataclass(frozen=True)
class CoherenceMetrics:
    """How a continuation holds to its primer; see :func:`coherence_metrics`."""

    primer_key: str
    key: str
    out_of_key_vs_primer: float
    same_key: float
    close_repeats: float
    exact_repeats: float
    repetition: float
    density_ratio: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def coherence_metrics(piece: GridNotes, primer_bars: int, bars: int | None = None) -> CoherenceMetrics:
    """A primer (bars ``0 .. primer_bars - 1`` of ``piece``) and its continuation (the next
    ``bars`` bars, default: the rest): the continuation's out-of-key share against the
    primer's estimated key, whether the two estimated keys are the same, the share of its
    bars closely / exactly repeating one of the 8 bars before them (the primer's included),
    :func:`repetition_share` of the continuation alone, and its density relative to the primer."""
    bars = piece.bars - primer_bars if bars is None else bars
    primer, continuation = excerpt(piece, 0, primer_bars), excerpt(piece, primer_bars, bars)
    whole = excerpt(piece, 0, primer_bars + bars)
    primer_key = estimate_key(primer)
    return CoherenceMetrics(
        primer_key=key_name(primer_key) if len(primer.pitch) else "-",
        key=key_name(estimate_key(continuation)) if len(continuation.pitch) else "-",
        out_of_key_vs_primer=out_of_key_ratio(continuation, primer_key) if len(primer.pitch) else math.nan,
        same_key=same_key(primer, continuation),
        close_repeats=close_repeat_share(whole, primer_bars), exact_repeats=exact_repeat_share(whole, primer_bars),
        repetition=repetition_share(continuation), density_ratio=relative_density(primer, continuation),
    )


LONG_FORM_LABELS = {
    "drift": "out-of-key vs primer key",
    "dead_bars": "dead bars",
    "exact_loops": "exact repeats (8 back)",
    "close_loops": "close repeats (8 back)",
    "note_density": "notes/bar",
}


def long_form_chunks(piece: GridNotes, primer_bars: int, chunk_bars: int) -> list[dict]:
    """The bars after a primer (bars ``0 .. primer_bars - 1``) cut into chunks of
    ``chunk_bars`` bars (the last may be shorter); per chunk: ``drift``, its out-of-key share
    against the primer's estimated key; ``dead_bars``, the share of its bars without notes;
    ``exact_loops`` / ``close_loops``, the share of its bars with notes repeating one of the 8
    bars before them (looking back across chunks and into the primer); notes per bar."""
    if chunk_bars < 1:
        raise ValueError("chunk_bars must be at least 1")
    primer = excerpt(piece, 0, primer_bars)
    key = estimate_key(primer) if len(primer.pitch) else None
    exact, close, occupied = exact_repeats(piece), close_repeats(piece), occupied_bars(piece)
    chunks = []
    for first in range(primer_bars, piece.bars, chunk_bars):
        last = min(first + chunk_bars, piece.bars)
        chunk = excerpt(piece, first, last - first)
        chunks.append({
            "first_bar": first - primer_bars, "bars": last - first,
            "drift": out_of_key_ratio(chunk, key) if key is not None else math.nan,
            "dead_bars": float(1.0 - occupied[first:last].mean()),
            "exact_loops": share_of_bars(exact, piece, first, last),
            "close_loops": share_of_bars(close, piece, first, last),
            "note_density": note_density(chunk),
        })
    return chunks
