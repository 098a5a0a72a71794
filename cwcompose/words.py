"""The one reader of compound words: per word its kind, bar and onset.

The grammar of a word sequence, in one place:

- a Metric word with ``Bar`` starts a new bar (bar += 1) and clears the onset;
- a Metric word with ``Rest_k`` jumps k empty bars (bar += k) and clears the onset;
- a Metric word with ``Pos_p`` sets the onset to ``max(bar, 0) * positions_per_bar + p``;
- a Note word sounds at the current onset (it is dropped when there is none, or when a
  note field is not a real value);
- ``End`` ends the piece: nothing after it is read.

:func:`word_kind` and :func:`bar_jump` are written with operators only, so the same two
rules serve numpy arrays (this module's reader) and torch tensors (the batched
:class:`cwcompose.grammar.WordState`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the tokenizer imports this module: only its type is named here
    from cwcompose.tokenizer import TokenizerConfig

# The layout of a word (re-exported by the tokenizer, which builds the vocabularies).
PAD, IGNORE = 0, 1
FIELDS = ("family", "bar_pos", "tempo", "chord", "rest", "pitch", "duration", "velocity")
COL = {f: i for i, f in enumerate(FIELDS)}  # field name -> column of a word array
METRIC_FIELDS = ("bar_pos", "tempo", "chord", "rest")
NOTE_FIELDS = ("pitch", "duration", "velocity")
# Offsets of the first real value in each field's vocabulary.
FAMILY_METRIC, FAMILY_NOTE, FAMILY_END = 2, 3, 4
BAR, REST, POS0 = 2, 3, 4
CONTI = 2
CHORD_NONE = 3
VALUE0 = 2  # rest, pitch, duration, velocity values start here
TEMPO0, CHORD0 = 3, 4

KIND_OTHER, KIND_BAR, KIND_REST, KIND_POS, KIND_NOTE, KIND_END = 0, 1, 2, 3, 4, 5


def word_kind(family, bar_pos):
    """Kind of each word (KIND_*), from its family and bar_pos columns (numpy or torch)."""
    metric = family == FAMILY_METRIC
    return (KIND_NOTE * (family == FAMILY_NOTE) + KIND_END * (family == FAMILY_END)
            + metric * (KIND_BAR * (bar_pos == BAR) + KIND_REST * (bar_pos == REST) + KIND_POS * (bar_pos >= POS0)))


def bar_jump(kind, rest):
    """Bars each word starts (numpy or torch): 1 for a Bar word, k for ``Rest_k``, else 0.
    A Rest word without a real rest value jumps nothing."""
    return (kind == KIND_BAR) * 1 + (kind == KIND_REST) * (rest >= VALUE0) * (rest - VALUE0 + 1)


@dataclass(frozen=True)
class WordReading:
    """Per word of a sequence (cut at its first End): what it is and where it sounds.

    ``bar``: index of the bar the word is in (after its own jump; -1 before the first
    bar line). ``onset``: the onset in positions (1/positions_per_beat beat, from bar 0)
    that a Note word sounds at, or that a Pos word sets; -1 where there is none.
    ``note``: Note words that decode to a note.
    """

    kind: np.ndarray
    jump: np.ndarray
    bar: np.ndarray
    onset: np.ndarray
    note: np.ndarray
    length: int  # words read (up to, not including, the first End)


def as_words(words) -> np.ndarray:
    return np.asarray(words, dtype=np.int64).reshape(-1, len(FIELDS))


def read_words(words, positions_per_bar: int) -> WordReading:
    """Words (n, fields) -> :class:`WordReading`, vectorised."""
    words = as_words(words)
    ends = np.flatnonzero(words[:, COL["family"]] == FAMILY_END)
    words = words[:ends[0]] if len(ends) else words
    kind = word_kind(words[:, COL["family"]], words[:, COL["bar_pos"]])
    jump = bar_jump(kind, words[:, COL["rest"]])
    bar = np.cumsum(jump) - 1
    is_pos = kind == KIND_POS
    own_onset = np.maximum(bar, 0) * positions_per_bar + words[:, COL["bar_pos"]] - POS0
    marker = np.where((jump > 0) | is_pos, np.arange(len(words)), -1)
    last_marker = np.maximum.accumulate(marker) if len(words) else marker
    has_onset = last_marker >= 0
    has_onset[has_onset] = is_pos[last_marker[has_onset]]
    onset = np.where(has_onset, own_onset[np.maximum(last_marker, 0)], -1)
    note = (kind == KIND_NOTE) & has_onset & np.all(words[:, [COL[f] for f in NOTE_FIELDS]] >= VALUE0, axis=1)
    onset = np.where((kind == KIND_NOTE) & ~note, -1, onset)
    return WordReading(kind=kind, jump=jump, bar=bar, onset=onset, note=note, length=len(words))


def word_kinds(words) -> np.ndarray:
    """(n,) kind of each word of (n, fields) words (KIND_*)."""
    words = as_words(words)
    return word_kind(words[:, COL["family"]], words[:, COL["bar_pos"]])


def bar_jumps(words) -> np.ndarray:
    """(n,) bars each word of (n, fields) words starts: 1 for a Bar word, k for a Rest word
    jumping k bars, else 0."""
    words = as_words(words)
    return bar_jump(word_kinds(words), words[:, COL["rest"]])


def bar_lines(words) -> np.ndarray:
    """(n,) bool: the words that are bar lines (``Bar``; a ``Rest`` word is not one)."""
    return word_kinds(words) == KIND_BAR


def bar_starts(words) -> np.ndarray:
    """Indices of the words that start bars (Bar or Rest words)."""
    return np.flatnonzero(bar_jumps(words))


def count_bars(words) -> int:
    """Bars spanned by words: one per Bar word plus the bars every Rest word jumps."""
    return int(bar_jumps(words).sum())


@dataclass(frozen=True)
class NoteTable:
    """The notes of a word sequence as arrays (one entry per note, in word order).

    onset in positions; pitch as a MIDI number; duration and velocity as class indices."""

    onset: np.ndarray
    bar: np.ndarray
    pitch: np.ndarray
    duration_class: np.ndarray
    velocity_class: np.ndarray


def note_table(words, config: TokenizerConfig) -> NoteTable:
    """Every note a word sequence decodes to."""
    words = as_words(words)
    reading = read_words(words, config.positions_per_bar)
    notes = words[:reading.length][reading.note]
    return NoteTable(onset=reading.onset[reading.note], bar=reading.bar[reading.note],
                     pitch=notes[:, COL["pitch"]] - VALUE0 + config.pitch_min,
                     duration_class=notes[:, COL["duration"]] - VALUE0,
                     velocity_class=notes[:, COL["velocity"]] - VALUE0)


def changes(words, config: TokenizerConfig) -> tuple[dict[int, int], dict[int, int]]:
    """Tempo classes and chord tokens set by position words, keyed by onset (positions)."""
    words = as_words(words)
    reading = read_words(words, config.positions_per_bar)
    words = words[:reading.length]
    is_pos = reading.kind == KIND_POS
    tempo = is_pos & (words[:, COL["tempo"]] >= TEMPO0)
    chord = is_pos & (words[:, COL["chord"]] >= CHORD_NONE)
    tempo_at = dict(zip(reading.onset[tempo].tolist(), (words[tempo, COL["tempo"]] - TEMPO0).tolist()))
    chord_at = dict(zip(reading.onset[chord].tolist(), words[chord, COL["chord"]].tolist()))
    return tempo_at, chord_at


def word_seconds(words, config: TokenizerConfig, tempo_bpm: np.ndarray, default_bpm: float = 120.0) -> np.ndarray:
    """Seconds of music elapsed at each word: a Bar word is at its bar's start, a Rest word
    at the end of the bars it jumps, a Pos word at its onset; others at the time before them.
    Time runs at the tempo in effect before each word (``tempo_bpm[class]`` beats per
    minute, ``default_bpm`` until one is set)."""
    words = as_words(words)
    reading = read_words(words, config.positions_per_bar)
    words, n = words[:reading.length], reading.length
    ppbar = config.positions_per_bar
    time = np.full(n, -1, dtype=np.int64)
    time = np.where(reading.kind == KIND_BAR, reading.bar * ppbar, time)
    time = np.where(reading.kind == KIND_REST, (reading.bar + 1) * ppbar, time)
    time = np.where(reading.kind == KIND_POS, reading.onset, time)
    time = np.maximum.accumulate(np.maximum(time, 0)) if n else time
    bpm_classes = np.asarray(tempo_bpm, dtype=float)
    sets = (reading.kind == KIND_POS) & (words[:, COL["tempo"]] >= TEMPO0)
    bpm_after = np.where(sets, bpm_classes[np.clip(words[:, COL["tempo"]] - TEMPO0, 0, len(bpm_classes) - 1)], np.nan)
    last_set = np.maximum.accumulate(np.where(sets, np.arange(n), -1)) if n else np.zeros(0, int)
    bpm_at = np.where(last_set >= 0, bpm_after[np.maximum(last_set, 0)], default_bpm)
    bpm_before = np.concatenate([[default_bpm], bpm_at[:-1]]) if n else bpm_at
    step = np.diff(np.concatenate([[0], time]))
    return np.cumsum(step / config.positions_per_beat * 60.0 / bpm_before)
