"""Composing: primer -> words -> KV-cached, grammar-masked, per-field sampling -> MIDI.

Length is unlimited: the KV cache holds at most ``max_relative_distance`` words;
when it fills, the newest half (cut at a bar line where possible) is re-encoded in
one batched pass and decoding goes on, so the cost per word stays flat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import miditoolkit
import numpy as np
import torch

from cwcompose.model import CPTransformer
from cwcompose.render import ticks_to_seconds
from cwcompose.sampling import DEFAULT_SAMPLING, SamplingConfig, sample_token
from cwcompose.tokenizer import (
    COL,
    BAR, CHORD_NONE, CONTI, FAMILY_END, FAMILY_METRIC, FAMILY_NOTE, FIELDS, IGNORE, POS0, REST, TEMPO0,
    VALUE0, CPTokenizer, tempo_classes_bpm,
)

MAX_NOTES_PER_ONSET = 16  # a chord of more notes than fingers means the model is stuck
MAX_WORDS_PER_BAR = 32 * (MAX_NOTES_PER_ONSET + 1) + 2


# ---------------------------------------------------------------- incremental decoding


class IncrementalDecoder:
    """Feeds words to the model one at a time with a KV cache and a sliding window."""

    def __init__(self, model: CPTransformer, capacity: int | None = None):
        self.model = model
        self.capacity = capacity or model.config.max_relative_distance
        self.device = next(model.parameters()).device
        self.history: list[np.ndarray] = []
        self.window_start = 0

    @torch.inference_mode()
    def prefill(self, words: np.ndarray) -> torch.Tensor:
        """Start from ``words`` (n, fields); returns the hidden state after the last one."""
        self.history = [w for w in np.asarray(words, dtype=np.int64)]
        self.window_start = max(len(self.history) - self.capacity, 0)
        return self._encode_window()

    @torch.inference_mode()
    def step(self, word: np.ndarray) -> torch.Tensor:
        """Append one word; returns the hidden state after it."""
        self.history.append(np.asarray(word, dtype=np.int64))
        if self.cache.length >= self.capacity:
            self.window_start = self._restart_index()
            return self._encode_window()
        x = torch.as_tensor(self.history[-1], device=self.device).view(1, 1, -1)
        return self.model.hidden(x, self.cache)[0, -1]

    def _restart_index(self) -> int:
        """Where the next window starts: the first bar line in the newest half, if any."""
        earliest = len(self.history) - self.capacity // 2
        for i in range(earliest, len(self.history)):
            word = self.history[i]
            if word[COL["family"]] == FAMILY_METRIC and word[COL["bar_pos"]] == BAR:
                return i
        return earliest

    def _encode_window(self) -> torch.Tensor:
        window = torch.as_tensor(np.stack(self.history[self.window_start:]), device=self.device)[None]
        self.cache = self.model.new_cache(1, self.capacity)
        return self.model.hidden(window, self.cache)[0, -1]


# ---------------------------------------------------------------- grammar


@dataclass
class Grammar:
    """What may come next, so that every sampled sequence decodes.

    ``previous`` is the kind of the last word: start, bar, rest, pos, note, or primer
    (after a primer the first word must be metrical, which keeps the boundary exact).
    """

    vocab_sizes: dict[str, int]
    previous: str = "start"
    last_position: int = -1
    bar_open: bool = False
    have_tempo: bool = False
    have_chord: bool = False
    notes_at_onset: int = 0

    def allowed_families(self, allow_end: bool) -> torch.Tensor:
        allowed = torch.zeros(self.vocab_sizes["family"], dtype=torch.bool)
        allowed[FAMILY_METRIC] = True
        allowed[FAMILY_NOTE] = self.previous in ("pos", "note") and self.notes_at_onset < MAX_NOTES_PER_ONSET
        allowed[FAMILY_END] = allow_end and self.previous != "start"
        return allowed

    def allowed_bar_pos(self) -> torch.Tensor:
        allowed = torch.zeros(self.vocab_sizes["bar_pos"], dtype=torch.bool)
        allowed[BAR] = self.previous != "bar"
        allowed[REST] = self.previous != "bar"
        if self.bar_open and self.previous != "rest":
            allowed[POS0 + self.last_position + 1:] = True
        return allowed

    def allowed_values(self, field: str, conti: bool) -> torch.Tensor:
        """Real values of a field (never Pad / Ignore); ``Conti`` only where ``conti``."""
        allowed = torch.zeros(self.vocab_sizes[field], dtype=torch.bool)
        allowed[VALUE0:] = True
        if field in ("tempo", "chord"):
            allowed[CONTI] = conti
        return allowed

    def update(self, word: np.ndarray) -> None:
        family, bar_pos = word[COL["family"]], word[COL["bar_pos"]]
        if family == FAMILY_NOTE:
            self.previous, self.notes_at_onset = "note", self.notes_at_onset + 1
            return
        self.notes_at_onset = 0
        if bar_pos == BAR:
            self.previous, self.bar_open, self.last_position = "bar", True, -1
        elif bar_pos == REST:
            self.previous, self.bar_open, self.last_position = "rest", False, -1
        elif bar_pos >= POS0:
            self.previous, self.last_position = "pos", int(bar_pos - POS0)
            self.have_tempo |= bool(word[COL["tempo"]] >= TEMPO0)
            self.have_chord |= bool(word[COL["chord"]] >= CHORD_NONE)


def sample_word(model: CPTransformer, h: torch.Tensor, grammar: Grammar, sampling: SamplingConfig,
                generator: torch.Generator, allow_end: bool = False) -> np.ndarray:
    """The next word from hidden state ``h`` (d_model,): family first, then its fields."""
    t, p = sampling.temperature, sampling.top_p
    word = np.full(len(FIELDS), IGNORE, dtype=np.int64)
    family = sample_token(model.family_logits(h), t["family"], p["family"], generator,
                          grammar.allowed_families(allow_end))
    word[COL["family"]] = family
    if family == FAMILY_END:
        return word
    fields = ("bar_pos", "tempo", "chord", "rest") if family == FAMILY_METRIC else ("pitch", "duration", "velocity")
    logits = model.field_logits(h, torch.tensor(family, device=h.device), fields)

    def draw(f: str, allowed: torch.Tensor) -> None:
        word[COL[f]] = sample_token(logits[f].cpu(), t[f], p[f], generator, allowed)

    if family == FAMILY_NOTE:
        for f in fields:
            draw(f, grammar.allowed_values(f, conti=False))
        return word
    draw("bar_pos", grammar.allowed_bar_pos())
    if word[COL["bar_pos"]] == REST:
        draw("rest", grammar.allowed_values("rest", conti=False))
    elif word[COL["bar_pos"]] >= POS0:
        draw("tempo", grammar.allowed_values("tempo", conti=grammar.have_tempo))
        draw("chord", grammar.allowed_values("chord", conti=grammar.have_chord))
    return word


# ---------------------------------------------------------------- primers


def primer_words(tokenizer: CPTokenizer, primer, keep_bars: int) -> np.ndarray:
    """A primer MIDI -> the words of its last ``keep_bars`` bars, with the first position
    word's tempo and chord made explicit (they may have been set before the cut)."""
    if isinstance(primer, np.ndarray):
        words = primer[primer[:, COL["family"]] != FAMILY_END]
    else:
        words = tokenizer.encode(primer, end=False)
    bar_starts = np.flatnonzero((words[:, COL["family"]] == FAMILY_METRIC) & (words[:, COL["bar_pos"]] == BAR))
    bars_from_here = np.cumsum(bar_increments(words)[::-1])[::-1]
    fitting = bar_starts[bars_from_here[bar_starts] <= keep_bars]
    cut = int(fitting[0]) if len(fitting) else 0
    tempo, chord = None, None
    for word in words[:cut]:
        if word[COL["tempo"]] >= TEMPO0:
            tempo = word[COL["tempo"]]
        if word[COL["chord"]] >= CHORD_NONE:
            chord = word[COL["chord"]]
    kept = words[cut:].copy()
    positions = np.flatnonzero(kept[:, COL["bar_pos"]] >= POS0)
    if len(positions):
        first = positions[0]
        if kept[first, COL["tempo"]] == CONTI and tempo is not None:
            kept[first, COL["tempo"]] = tempo
        if kept[first, COL["chord"]] == CONTI and chord is not None:
            kept[first, COL["chord"]] = chord
    return kept


def bar_increments(words: np.ndarray) -> np.ndarray:
    """Bars each word starts: 1 for a Bar word, k for a Rest word jumping k bars, else 0."""
    metric = words[:, COL["family"]] == FAMILY_METRIC
    bars = (metric & (words[:, COL["bar_pos"]] == BAR)).astype(np.int64)
    rests = metric & (words[:, COL["bar_pos"]] == REST)
    return np.where(rests, words[:, COL["rest"]] - VALUE0 + 1, bars)


def count_bars(words: np.ndarray) -> int:
    """Bars spanned by words: one per Bar word plus the bars every Rest word jumps."""
    return int(bar_increments(words).sum())


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


@dataclass
class MusicClock:
    """Seconds of music elapsed, advanced word by word from positions and tempo classes."""

    positions_per_bar: int
    positions_per_beat: int
    tempo_bpm: np.ndarray
    bar: int = -1
    last_onset: int = 0
    bpm: float = 120.0
    seconds: float = 0.0

    def advance(self, word: np.ndarray) -> None:
        bar_pos = word[COL["bar_pos"]]
        if word[COL["family"]] != FAMILY_METRIC:
            return
        if bar_pos == BAR:
            self.bar += 1
            onset = self.bar * self.positions_per_bar
        elif bar_pos == REST:
            self.bar += int(word[COL["rest"]] - VALUE0 + 1)
            onset = (self.bar + 1) * self.positions_per_bar
        else:
            onset = max(self.bar, 0) * self.positions_per_bar + int(bar_pos - POS0)
        self.seconds += max(onset - self.last_onset, 0) / self.positions_per_beat * 60.0 / self.bpm
        self.last_onset = onset
        if word[COL["tempo"]] >= TEMPO0:
            self.bpm = float(self.tempo_bpm[word[COL["tempo"]] - TEMPO0])


@torch.inference_mode()
def compose(model: CPTransformer, tokenizer: CPTokenizer, *, primer=None, primer_bars: int = 8, bars: int = 16,
            max_seconds: float | None = None, sampling: SamplingConfig | None = None, seed: int = 0,
            on_bar: Callable[[int, int], bool | None] | None = None) -> Composition:
    """Continue ``primer`` (path, bytes, MidiFile, words or None) by ``bars`` bars.

    Stops after ``bars`` bars, or once ``max_seconds`` of music (primer included) are
    written, or when ``on_bar(bars_done, bars)`` returns False. Same inputs and seed ->
    same words.
    """
    if bars < 1 or primer_bars < 1:
        raise ValueError("bars and primer_bars must be at least 1")
    sampling = sampling or DEFAULT_SAMPLING
    generator = torch.Generator().manual_seed(int(seed))
    start, primer_length, grammar, clock = _opening(tokenizer, primer, primer_bars)
    decoder = IncrementalDecoder(model)
    h = decoder.prefill(start)
    words, bars_done, stopped = list(start), (0 if primer_length else 1), False
    for _ in range(bars * MAX_WORDS_PER_BAR):
        word = sample_word(model, h, grammar, sampling, generator)
        new_bars = count_bars(word[None])
        if word[COL["bar_pos"]] == REST and bars_done < bars < bars_done + new_bars:
            word[COL["rest"]], new_bars = VALUE0 + bars - bars_done - 1, bars - bars_done
        if new_bars and bars_done + new_bars > bars:
            break
        if new_bars and bars_done and on_bar is not None and on_bar(bars_done, bars) is False:
            stopped = True
            break
        clock.advance(word)
        if max_seconds is not None and clock.seconds > max_seconds:
            stopped = True
            break
        words.append(word)
        grammar.update(word)
        bars_done += new_bars
        h = decoder.step(word)
    return _finish(tokenizer, np.stack(words), primer_length, bars_done, seed, stopped, count_bars(start[:primer_length]))


def _opening(tokenizer: CPTokenizer, primer, primer_bars: int) -> tuple[np.ndarray, int, Grammar, MusicClock]:
    """The words a piece starts from (the primer's last bars, or one bar line), how many
    came from the primer, and the grammar and clock advanced past them."""
    cfg = tokenizer.config
    start = primer_words(tokenizer, primer, primer_bars) if primer is not None else np.zeros((0, len(FIELDS)), np.int64)
    primer_length = len(start)
    if primer_length == 0:  # training windows start on a bar line: so does an empty piece
        start = np.array([[FAMILY_METRIC, BAR] + [IGNORE] * (len(FIELDS) - 2)], dtype=np.int64)
    grammar = Grammar(tokenizer.vocab_sizes)
    clock = MusicClock(cfg.positions_per_bar, cfg.positions_per_beat, tempo_classes_bpm(cfg))
    for word in start:
        grammar.update(word)
        clock.advance(word)
    if primer_length:
        grammar.previous = "primer"
    return start, primer_length, grammar, clock


def _finish(tokenizer: CPTokenizer, words: np.ndarray, primer_length: int, bars_done: int, seed: int,
            stopped: bool, primer_bars: int) -> Composition:
    midi = tokenizer.decode(words)
    primer_notes = tokenizer.decode(words[:primer_length]).instruments[0].notes if primer_length else []
    primer_end_tick = max((n.start for n in primer_notes), default=-1) + 1
    seconds = float(ticks_to_seconds(np.array([midi.max_tick]), midi)[0])
    return Composition(words=words, primer_length=primer_length, midi=midi, primer_end_tick=primer_end_tick,
                       primer_bars=primer_bars, bars=bars_done, seconds=seconds, seed=int(seed), stopped_early=stopped)


def save_midi(composition: Composition, path: str | Path) -> Path:
    composition.midi.dump(str(path))
    return Path(path)
