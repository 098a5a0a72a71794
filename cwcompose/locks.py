"""User constraints on generation ("locks"): chord progression, key, tempo, density.

A lock is a *logit processor*: a callable ``(state, field, logits) -> logits`` applied
when ``field`` is drawn, after the grammar mask and before temperature and top-p.
``logits`` is a float tensor (B, V) in nats; ``state`` is the engine's batched
``WordState`` ((B,) tensors: ``current`` (B, fields), ``bar``, ``position``,
``notes_in_bar``, ``done``). Every processor touches only the rows its rule applies to
(e.g. the key lock only rows drawing a note), never syncs with the host, and returns a
new tensor. The locks that hold tensors (:class:`ChordLock`, :class:`KeyLock`) offer
``to(device)``; ``generation.iter_compose`` moves every processor that has it to the model's
device once, before the first word, so nothing crosses between host and device per word.

Chord progressions (:func:`parse_progression`)
    Bars are separated by spaces and cycle: ``"C G Am F"`` is C in bar 1, G in bar 2,
    Am in bar 3, F in bar 4, C in bar 5 ... Two chords in one bar go in square brackets:
    ``"C [G Am] F"`` is C, then G for the first half of bar 2 and Am from its half bar,
    then F. ``|`` is not used (``"C G | Am F"`` would be ambiguous between bar lines and
    chord groups) and gets an error saying how to write it. Chord names: a root A-G with
    an optional ``#`` or ``b``, then a quality: nothing / ``maj`` / ``M`` (major),
    ``m`` / ``min`` / ``-`` (minor), ``dim`` / ``o``, ``aug`` / ``+``, ``sus2``,
    ``sus4`` / ``sus``, ``7``, ``maj7`` / ``M7``, ``m7`` / ``min7``, ``m7b5`` / ``hdim7``
    / ``ø``, ``dim7`` / ``o7``; ``N`` (or ``NC``) for no chord. A bass after ``/``
    (``C/E``) is accepted and dropped: the vocabulary has no inversions.

Keys (:func:`parse_key`)
    ``"A minor"``, ``"Am"``, ``"C major"``, ``"C"``, ``"F# minor"``, ``"Bb maj"`` ...,
    or ``"from primer"``: the key that ``metrics.estimate_key`` finds in the primer.
    The scales are the ones ``metrics.out_of_key_ratio`` measures against: major, and
    *natural* minor for minor keys (A minor = A B C D E F G). Harmonic minor's raised
    7th (G# in A minor, the third of the E major dominant) is left out on purpose, so
    that "strength 1 leaves no out-of-key note" holds by the same measure the app and
    the evaluation report; at strength < 1 a raised 7th is merely discouraged.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from cwcompose.chords import CHORD_TEMPLATES, NOTE_OFFSETS
from cwcompose.jsonconfig import JsonConfig
from cwcompose.metrics import SCALES, estimate_key, grid_notes_from_words
from cwcompose.tokenizer import (
    BAR, CHORD_NONE, CHORD_QUALITIES, COL, CONTI, FAMILY_METRIC, FAMILY_NOTE, IGNORE, PITCH_CLASSES, POS0, REST, TEMPO0,
    VALUE0, CPTokenizer, TokenizerConfig, quantise_tempo, tempo_classes_bpm,
)
from cwcompose.words import KIND_POS, as_words, read_words

MAX_PENALTY_NATS = 20.0  # a key penalty never exceeds this (strength -> 1 below the hard mask)
DENSITY_GAIN_NATS = 2.0  # density bias per note behind (or ahead of) the target's pace
DENSITY_MAX_BIAS_NATS = 8.0
MAX_NOTES_PER_BAR = 128.0

# Quality suffix as written -> the tokenizer's quality name. Case matters: M is major, m minor.
QUALITY_SPELLINGS = {
    "": "maj", "maj": "maj", "M": "maj", "major": "maj", "Maj": "maj",
    "m": "min", "min": "min", "mi": "min", "-": "min", "minor": "min",
    "dim": "dim", "o": "dim", "°": "dim",
    "aug": "aug", "+": "aug", "+5": "aug", "#5": "aug",
    "sus2": "sus2", "sus4": "sus4", "sus": "sus4",
    "7": "7", "dom7": "7",
    "maj7": "maj7", "M7": "maj7", "Maj7": "maj7", "ma7": "maj7", "Δ": "maj7", "Δ7": "maj7",
    "m7": "min7", "min7": "min7", "mi7": "min7", "-7": "min7",
    "m7b5": "hdim7", "min7b5": "hdim7", "-7b5": "hdim7", "hdim7": "hdim7", "hdim": "hdim7",
    "ø": "hdim7", "ø7": "hdim7",
    "dim7": "dim7", "o7": "dim7", "°7": "dim7",
}
NO_CHORD_SPELLINGS = ("N", "NC", "N.C.")
CHORD_FORMS = (
    "a root A-G, optionally followed by # or b, then nothing or maj or M for major, m, min or - for minor, "
    "dim or o, aug or +, sus2, sus4 or sus, 7, maj7 or M7, m7 or min7, m7b5 or hdim7, dim7 or o7 "
    "(e.g. C, Cm, F#m, Bb, G7, Am7, Cmaj7, Bdim, Bm7b5, Caug, Dsus4); N for no chord; "
    "bars separated by spaces, two chords in one bar in brackets, e.g. \"C [G Am] F\"")
KEY_FORMS = ("a tonic A-G, optionally followed by # or b, then major (maj, or nothing) or minor (min, m), "
             "e.g. \"A minor\", \"Am\", \"C major\", \"C\", \"F# minor\", \"Bb major\"; or \"from primer\"")
FROM_PRIMER = ("from primer", "primer", "auto")

_CHORD = re.compile(r"^([A-G])([#b♯♭]?)(.*)$")
_KEY = re.compile(r"^([A-Ga-g])([#b♯♭]?)\s*((?i:major|maj|minor|min)|m|M)?$")


@dataclass(frozen=True)
class Chord:
    """A chord: ``root`` pitch class 0..11 (C = 0) and a tokenizer quality; root None = no chord."""

    root: int | None
    quality: str = ""

    @property
    def pitch_classes(self) -> frozenset[int]:
        """The chord tones as pitch classes 0..11 (empty for no chord)."""
        if self.root is None:
            return frozenset()
        return frozenset((self.root + i) % 12 for i in CHORD_TEMPLATES[self.quality])

    def token(self, tokenizer: CPTokenizer) -> int:
        """The chord field's token id for this chord."""
        if self.root is None:
            return CHORD_NONE
        return tokenizer.token_id("chord", f"{PITCH_CLASSES[self.root]}:{self.quality}")


def _pitch_class(letter: str, accidental: str) -> int:
    """``("F", "#")`` -> 6; ``("b", "b")`` -> 10 (letter case ignored)."""
    shift = 1 if accidental in ("#", "♯") else -1 if accidental in ("b", "♭") else 0
    return (NOTE_OFFSETS[letter.upper()] + shift) % 12


def parse_chord(name: str, qualities: tuple[str, ...] = CHORD_QUALITIES) -> Chord:
    """One chord name (``"F#m"``, ``"Bm7b5"``, ``"C/E"``, ``"N"``) -> :class:`Chord`.

    Raises ValueError naming the chord and listing the accepted forms."""
    text = name.strip()
    if text in NO_CHORD_SPELLINGS:
        return Chord(None)
    symbol, _, bass = text.partition("/")
    match = _CHORD.match(symbol)
    quality = QUALITY_SPELLINGS.get(match.group(3)) if match else None
    if quality is None or (bass and not re.fullmatch(r"[A-G][#b♯♭]?", bass)):
        raise ValueError(f"unknown chord {name!r}: write {CHORD_FORMS}")
    if quality not in qualities:
        raise ValueError(f"chord {name!r}: this checkpoint's vocabulary has no {quality!r} chords "
                         f"(it knows {', '.join(qualities)})")
    return Chord(_pitch_class(match.group(1), match.group(2)), quality)


def parse_progression(text: str, qualities: tuple[str, ...] = CHORD_QUALITIES) -> tuple[tuple[Chord, ...], ...]:
    """A progression -> one tuple of 1 or 2 chords per bar (see the module docstring).

    >>> [[c.root for c in bar] for bar in parse_progression("C [G Am] F")]
    [[0], [7, 9], [5]]
    """
    if "|" in text:
        raise ValueError(f"chord progression {text!r}: '|' is not used; separate bars with spaces and put two "
                         f"chords of one bar in brackets, e.g. \"C G Am F\" or \"[C G] [Am F]\"")
    bars: list[tuple[Chord, ...]] = []
    for group, single in re.findall(r"\[([^\[\]]*)\]|([^\s\[\]]+)", text):
        names = group.split() if single == "" else [single]
        if not 1 <= len(names) <= 2:
            raise ValueError(f"chord progression {text!r}: a bar holds one or two chords, "
                             f"got [{group.strip()}]; e.g. \"C [G Am] F\"")
        bars.append(tuple(parse_chord(n, qualities) for n in names))
    leftover = re.sub(r"\[([^\[\]]*)\]|([^\s\[\]]+)", "", text).strip()
    if leftover:
        raise ValueError(f"chord progression {text!r}: unmatched bracket; two chords in one bar are "
                         f"written in brackets, e.g. \"C [G Am] F\"")
    if not bars:
        raise ValueError(f"chord progression {text!r} holds no chords; write {CHORD_FORMS}")
    return tuple(bars)


def parse_key(text: str) -> tuple[int, str]:
    """``"F# minor"`` -> (6, "minor"); ``"Bb"`` -> (10, "major"). Raises ValueError naming
    the key and listing the accepted forms (``"from primer"`` is resolved by :class:`Locks`)."""
    match = _KEY.match(text.strip())
    if not match:
        raise ValueError(f"unknown key {text!r}: write {KEY_FORMS}")
    letter, accidental, mode = match.groups()
    is_minor = mode is not None and (mode == "m" or mode.lower().startswith("min"))
    return _pitch_class(letter, accidental), "minor" if is_minor else "major"


def key_penalty_nats(strength: float) -> float:
    """Nats subtracted from every out-of-key pitch's logit: ``-log(1 - strength)``, so at
    temperature 1 an out-of-key pitch's odds are multiplied by ``1 - strength`` (0.5 ->
    0.69 nats, halved odds; 0.9 -> 2.3 nats). 0 is off; 1 is a hard mask (inf); the
    finite penalty is capped at :data:`MAX_PENALTY_NATS`. Temperature T divides it by T."""
    if strength >= 1.0:
        return math.inf
    return min(-math.log1p(-strength), MAX_PENALTY_NATS)


def pitch_token_classes(tokenizer: CPTokenizer) -> np.ndarray:
    """Pitch class (0..11) of every pitch-field token; -1 for Pad and Ignore."""
    size, low = tokenizer.vocab_sizes["pitch"], tokenizer.config.pitch_min
    return np.array([-1 if t < VALUE0 else (t - VALUE0 + low) % 12 for t in range(size)])


def scale_pitch_mask(tokenizer: CPTokenizer, key: tuple[int, str]) -> torch.Tensor:
    """Bool (V_pitch,): True for pitch tokens outside ``key``'s scale (Pad/Ignore: False)."""
    classes = pitch_token_classes(tokenizer)
    in_scale = np.isin((classes - key[0]) % 12, SCALES[key[1]])
    return torch.from_numpy((classes >= 0) & ~in_scale)


def progression_chord(progression: tuple[tuple[Chord, ...], ...], bar: int, position: int,
                      positions_per_bar: int = 32) -> Chord:
    """The chord asked for at ``position`` (0..31) of generated bar ``bar`` (0 = the first)."""
    chords = progression[bar % len(progression)]
    return chords[-1] if position >= positions_per_bar // 2 else chords[0]


def forced_chord_words(words: np.ndarray, primer_bars: int, progression: tuple[tuple[Chord, ...], ...],
                       tokenizer: CPTokenizer) -> list[tuple[int, int, int, int]]:
    """Where :class:`ChordLock` forces a chord in a piece: (generated bar, position, chord
    token written, chord token asked) for each generated bar's first position word and,
    in two-chord bars, its first position word at or after the half bar. ``primer_bars``
    bars (Bar words and Rest jumps) precede the first generated bar. Bars are counted by
    the one reader of words (:func:`cwcompose.words.read_words`)."""
    ppbar, words = tokenizer.config.positions_per_bar, as_words(words)
    reading = read_words(words, ppbar)
    pos = np.flatnonzero(reading.kind == KIND_POS)  # position words, in order
    bar = reading.bar[pos] - primer_bars
    here = words[pos, COL["bar_pos"]] - POS0
    first = np.diff(bar, prepend=bar[:1] - 1) != 0  # the bar's first position word
    previous = np.roll(here, 1)  # the position word before (read only where it is in the same bar)
    two = np.array([len(progression[b % len(progression)]) == 2 for b in bar.tolist()], dtype=bool)
    second = ~first & two & (previous < ppbar // 2) & (here >= ppbar // 2)  # first at or after the half bar
    found = []
    for i in np.flatnonzero((bar >= 0) & (first | second)).tolist():
        asked = progression_chord(progression, int(bar[i]), int(here[i]), ppbar).token(tokenizer)
        found.append((int(bar[i]), int(here[i]), int(words[pos[i], COL["chord"]]), asked))
    return found


# ---------------------------------------------------------------- processors


def _drawing(state, family: int) -> torch.Tensor:
    """(B,) rows drawing a field of a word of ``family`` (Metric rows: position words only)."""
    current = state.current
    rows = (current[:, COL["family"]] == family) & ~state.done
    if family == FAMILY_METRIC:
        rows &= current[:, COL["bar_pos"]] >= POS0
    return rows


def _only(logits: torch.Tensor, rows: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """On ``rows``, keep only ``token`` (B,) (its logit set to 0); other rows untouched."""
    keep = torch.arange(logits.shape[1], device=logits.device)[None, :] == token[:, None]
    forced = torch.where(keep, torch.zeros_like(logits), torch.full_like(logits, -math.inf))
    return torch.where(rows[:, None], forced, logits)


def _only_or_conti(logits: torch.Tensor, rows: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """On ``rows``, keep ``token`` and Conti (where the grammar allows Conti), nothing else."""
    allowed = torch.arange(logits.shape[1], device=logits.device)[None, :] == token[:, None]
    allowed[:, CONTI] = True
    return torch.where(rows[:, None] & ~allowed, torch.full_like(logits, -math.inf), logits)


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class ChordLock:
    """Forces the chord field of position words to follow a progression.

    Bar ``state.bar`` (0 = first generated bar; bars before it are left free) plays bar
    ``state.bar % len(progression)``. Its chord is forced on the bar's first position
    word (``state.position == -1``); in a two-chord bar the second chord is forced on the
    first position word at or after the half bar (``positions_per_bar // 2``, position
    16). Every other position word gets Conti (or the chord in effect, where the grammar
    forbids Conti)."""

    first: torch.Tensor  # (n_bars,) chord token of each bar's first half, on the model's device
    second: torch.Tensor  # (n_bars,) chord token of its second half (= first for one-chord bars)
    half: int = 16

    @classmethod
    def build(cls, progression: tuple[tuple[Chord, ...], ...], tokenizer: CPTokenizer) -> "ChordLock":
        first = torch.tensor([bar[0].token(tokenizer) for bar in progression])
        second = torch.tensor([bar[-1].token(tokenizer) for bar in progression])
        return cls(first, second, tokenizer.config.positions_per_bar // 2)

    def to(self, device: torch.device | str) -> "ChordLock":
        """This lock with its tables on ``device`` (itself when they are there already)."""
        if self.first.device == torch.device(device):
            return self
        return dataclasses.replace(self, first=self.first.to(device), second=self.second.to(device))

    def __call__(self, state, field: str, logits: torch.Tensor) -> torch.Tensor:
        if field != "chord":
            return logits
        rows = _drawing(state, FAMILY_METRIC) & (state.bar >= 0)
        # The tables live on the state's device: indexing them there copies nothing to or from the host.
        index = torch.remainder(state.bar, len(self.first))
        first, second = self.first[index], self.second[index]
        here = state.current[:, COL["bar_pos"]] - POS0
        chord = torch.where(here >= self.half, second, first)
        force = (state.position < 0) | ((first != second) & (state.position < self.half) & (here >= self.half))
        conti_forbidden = ~torch.isfinite(logits[:, CONTI])
        logits = _only(logits, rows & (force | conti_forbidden), chord)
        return _only(logits, rows & ~force & ~conti_forbidden, torch.full_like(chord, CONTI))


@dataclass(frozen=True, eq=False)
class KeyLock:
    """Pitches outside a key's scale lose ``penalty`` nats (inf: masked) on note rows."""

    out_of_key: torch.Tensor  # bool (V_pitch,), on the model's device
    penalty: float

    def to(self, device: torch.device | str) -> "KeyLock":
        """This lock with its mask on ``device`` (itself when it is there already)."""
        if self.out_of_key.device == torch.device(device):
            return self
        return dataclasses.replace(self, out_of_key=self.out_of_key.to(device))

    def __call__(self, state, field: str, logits: torch.Tensor) -> torch.Tensor:
        if field != "pitch" or self.penalty <= 0:
            return logits
        out = self.out_of_key[None, :] & _drawing(state, FAMILY_NOTE)[:, None]  # no copy: built on this device
        if math.isinf(self.penalty):
            return logits.masked_fill(out, -math.inf)
        return logits - out.to(logits.dtype) * self.penalty


@dataclass(frozen=True)
class TempoLock:
    """Holds the tempo at one class.

    The tempo field (drawn on position words) may only be the class or Conti; on the
    first position word of the first generated bar (``state.bar == 0``,
    ``state.position == -1``), and wherever the grammar forbids Conti (no tempo yet), it
    must be the class. POP909 states tempo on about 1 position word in 200 (at changes
    only), so stating it once and then Conti is how the model saw a steady tempo. One gap:
    if a primer set another tempo and the continuation jumps over bar 0 with a Rest word
    (no position word in it), nothing restates the class and the primer's tempo goes on;
    ``bench/locks.py`` reports the share of generated notes at the class."""

    token: int

    def __call__(self, state, field: str, logits: torch.Tensor) -> torch.Tensor:
        if field != "tempo":
            return logits
        rows = _drawing(state, FAMILY_METRIC)
        token = torch.full_like(state.bar, self.token).to(logits.device)
        force = ((state.bar == 0) & (state.position < 0)).to(logits.device) | ~torch.isfinite(logits[:, CONTI])
        logits = _only(logits, rows & force, token)
        return _only_or_conti(logits, rows & ~force, token)


@dataclass(frozen=True)
class DensityBias:
    """Steers notes per bar towards ``target`` with biases on the family and bar_pos fields.

    The pace says a bar that holds n notes should hold ``target * (q + 1) / positions_per_bar``
    by position q (0..31). Biases, each ``gain`` nats per note off the pace, clipped to
    ``max_bias`` nats:

    - family, after an onset at position p: the Note family gains the shortfall
      ``pace(p) - n`` (loses it when ahead): more or fewer notes on this onset;
    - bar_pos: every later position q loses the lead ``n - pace(q)`` where positive (the
      next onset moves to where the pace has caught up), and Bar and Rest lose what the
      bar still lacks, ``target - n`` (a thin bar is not closed early).

    It steers the model rather than dictating to it: ``bench/locks.py`` measures how close
    the notes per bar come to the target."""

    target: float
    positions_per_bar: int = 32
    gain: float = DENSITY_GAIN_NATS
    max_bias: float = DENSITY_MAX_BIAS_NATS

    def __call__(self, state, field: str, logits: torch.Tensor) -> torch.Tensor:
        if field not in ("family", "bar_pos"):
            return logits
        notes = state.notes_in_bar.to(logits.device, logits.dtype)[:, None]
        if field == "family":
            rows = (state.current[:, COL["family"]] == IGNORE) & ~state.done & (state.position >= 0)
            pace = self.target * (state.position + 1).to(logits.device, logits.dtype)[:, None] / self.positions_per_bar
            bias = torch.zeros_like(logits)
            note = ((pace - notes) * self.gain).clamp(-self.max_bias, self.max_bias)
            first = (state.notes_at_onset == 0).to(logits.device)[:, None]  # an onset keeps its first note
            bias[:, FAMILY_NOTE:FAMILY_NOTE + 1] = torch.where(first, note.clamp(min=0.0), note)
        else:
            rows = (state.current[:, COL["family"]] == FAMILY_METRIC) & ~state.done
            q = torch.arange(self.positions_per_bar, device=logits.device, dtype=logits.dtype)[None, :]
            bias = torch.zeros_like(logits)
            pace = self.target * (q + 1) / self.positions_per_bar
            bias[:, POS0:POS0 + self.positions_per_bar] = -self._nats(notes - pace)
            bias[:, BAR:REST + 1] = -self._nats(self.target - notes)
        return torch.where(rows.to(logits.device)[:, None], logits + bias, logits)

    def _nats(self, notes_off: torch.Tensor) -> torch.Tensor:
        """Notes off the pace (positive side only) -> nats of bias."""
        return (notes_off * self.gain).clamp(0.0, self.max_bias)


# ---------------------------------------------------------------- the request's locks


@dataclass(frozen=True)
class Locks(JsonConfig):
    """A request's user constraints, all optional.

    ``chords``: a progression (module docstring); ``key``: a key name or "from primer";
    ``key_strength``: 0..1 (:func:`key_penalty_nats`); ``tempo_bpm``: beats per minute,
    held at the nearest tempo class (:meth:`held_tempo_bpm`; the classes span the
    checkpoint's ``tempo_min_bpm``..``tempo_max_bpm``, 40-250 BPM for every shipped one,
    and :meth:`processors` refuses a tempo outside them); ``notes_per_bar``: a density
    target (:class:`DensityBias`)."""

    chords: str | None = None
    key: str | None = None
    key_strength: float = 1.0
    tempo_bpm: float | None = None
    notes_per_bar: float | None = None

    def __post_init__(self) -> None:
        if self.chords is not None:
            parse_progression(self.chords)
        if self.key is not None and not self.key_from_primer:
            parse_key(self.key)
        if not _number(self.key_strength) or not 0.0 <= self.key_strength <= 1.0:
            raise ValueError(f"key strength must be a number from 0 (off) to 1 (only in-key notes), "
                             f"got {self.key_strength!r}")
        if self.tempo_bpm is not None and (not _number(self.tempo_bpm) or self.tempo_bpm <= 0):
            raise ValueError(f"tempo must be a number of beats per minute above 0, got {self.tempo_bpm!r}")
        if self.notes_per_bar is not None and (not _number(self.notes_per_bar)
                                               or not 0.0 < self.notes_per_bar <= MAX_NOTES_PER_BAR):
            raise ValueError(f"density must be a number of notes per bar above 0 and at most "
                             f"{MAX_NOTES_PER_BAR:g}, got {self.notes_per_bar!r}")

    @property
    def key_from_primer(self) -> bool:
        return self.key is not None and self.key.strip().lower() in FROM_PRIMER

    def resolve_key(self, tokenizer: CPTokenizer, primer_words: np.ndarray | None = None) -> tuple[int, str] | None:
        """The (tonic, mode) locked, estimating it from ``primer_words`` for "from primer"."""
        if self.key is None:
            return None
        if not self.key_from_primer:
            return parse_key(self.key)
        notes = grid_notes_from_words(primer_words, tokenizer.config) if primer_words is not None else None
        if notes is None or not len(notes.pitch):
            raise ValueError(f"key {self.key!r} needs a primer with notes; give a key name instead, "
                             f"e.g. \"A minor\"")
        return estimate_key(notes)

    def held_tempo_bpm(self, config: TokenizerConfig | None = None) -> float | None:
        """The BPM of the tempo class the lock holds (the nearest to ``tempo_bpm``) in
        ``config``'s vocabulary (default: the shipped checkpoints'), or None when unlocked."""
        if self.tempo_bpm is None:
            return None
        config = config or TokenizerConfig()
        return float(tempo_classes_bpm(config)[quantise_tempo(self.tempo_bpm, config)])

    def processors(self, tokenizer: CPTokenizer, primer_words: np.ndarray | None = None) -> list:
        """The processors of the locks that are set, in the order chords, key, tempo, density
        (on the CPU: ``iter_compose`` moves them to the model's device). Raises ValueError for
        what this checkpoint's vocabulary cannot hold."""
        procs: list = []
        if self.chords is not None:
            progression = parse_progression(self.chords, tokenizer.config.chord_qualities)
            procs.append(ChordLock.build(progression, tokenizer))
        key = self.resolve_key(tokenizer, primer_words)
        if key is not None and self.key_strength > 0:
            procs.append(KeyLock(scale_pitch_mask(tokenizer, key), key_penalty_nats(self.key_strength)))
        if self.tempo_bpm is not None:
            check_tempo(self.tempo_bpm, tokenizer.config)
            procs.append(TempoLock(TEMPO0 + quantise_tempo(self.tempo_bpm, tokenizer.config)))
        if self.notes_per_bar is not None:
            procs.append(DensityBias(float(self.notes_per_bar), tokenizer.config.positions_per_bar))
        return procs


def check_tempo(bpm: float, config: TokenizerConfig) -> None:
    """Refuse a tempo outside the vocabulary's tempo classes: it would be held at the
    nearest end of the range (a 400 BPM lock playing at 250) without a word."""
    low, high = config.tempo_min_bpm, config.tempo_max_bpm
    if not low <= bpm <= high:
        raise ValueError(f"tempo {bpm:g} BPM is outside what this checkpoint can play: its tempos run from "
                         f"{low:g} to {high:g} BPM; choose a tempo in that range, or leave the tempo unlocked")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
