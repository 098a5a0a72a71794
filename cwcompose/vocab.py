"""The representation's vocabulary: the tokenizer config, the quantisers that put
tempo, durations and velocities on classes, every field's token names, and the grid
(:class:`Score`) that MIDI input is read into. Pure data and arithmetic: it imports
nothing else of cwcompose but the word layout, so every reader and writer of words can
depend on it without a cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from cwcompose.chords import parse_chord_label
from cwcompose.jsonconfig import JsonConfig
from cwcompose.words import CHORD0, CHORD_NONE

SPECIALS = ("Pad", "Ignore")
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CHORD_QUALITIES = ("maj", "min", "dim", "aug", "sus2", "sus4", "7", "maj7", "min7", "hdim7", "dim7")


@dataclass(frozen=True)
class TokenizerConfig(JsonConfig):
    """Ranges and resolutions of the representation (saved with every checkpoint)."""

    beats_per_bar: int = 4
    positions_per_beat: int = 8
    pitch_min: int = 21
    pitch_max: int = 108
    n_tempo: int = 32
    tempo_min_bpm: float = 40.0
    tempo_max_bpm: float = 250.0
    n_velocity: int = 64
    fine_duration_beats: int = 4  # durations up to this many beats step by 1/positions_per_beat
    coarse_duration_beats: int = 12  # ... then by 1/coarse_steps_per_beat up to this
    coarse_steps_per_beat: int = 4
    max_rest_bars: int = 10
    chord_qualities: tuple[str, ...] = CHORD_QUALITIES
    ticks_per_beat: int = 480  # resolution of decoded MIDI

    def __post_init__(self) -> None:
        checks = {
            "beats_per_bar >= 1": self.beats_per_bar >= 1,
            "positions_per_beat >= 1": self.positions_per_beat >= 1,
            "0 <= pitch_min <= pitch_max <= 127": 0 <= self.pitch_min <= self.pitch_max <= 127,
            "n_tempo >= 2": self.n_tempo >= 2,
            "0 < tempo_min_bpm < tempo_max_bpm": 0 < self.tempo_min_bpm < self.tempo_max_bpm,
            "1 <= n_velocity <= 127": 1 <= self.n_velocity <= 127,
            "0 < fine_duration_beats < coarse_duration_beats":
                0 < self.fine_duration_beats < self.coarse_duration_beats,
            "coarse_steps_per_beat divides positions_per_beat":
                self.coarse_steps_per_beat >= 1 and self.positions_per_beat % self.coarse_steps_per_beat == 0,
            "max_rest_bars >= 1": self.max_rest_bars >= 1,
            "chord_qualities are known": set(self.chord_qualities) <= set(CHORD_QUALITIES),
            "ticks_per_beat divisible by positions_per_beat":
                self.ticks_per_beat > 0 and self.ticks_per_beat % self.positions_per_beat == 0,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid TokenizerConfig: {', '.join(failed)}")

    @property
    def positions_per_bar(self) -> int:
        return self.beats_per_bar * self.positions_per_beat


# ---------------------------------------------------------------- quantisers


def tempo_classes_bpm(config: TokenizerConfig) -> np.ndarray:
    """The BPM value of every tempo class, log-spaced."""
    return np.geomspace(config.tempo_min_bpm, config.tempo_max_bpm, config.n_tempo)


def quantise_tempo(bpm: float, config: TokenizerConfig) -> int:
    """Tempo in beats per minute -> nearest class index (in log space)."""
    classes = np.log(tempo_classes_bpm(config))
    return int(np.argmin(np.abs(classes - np.log(max(bpm, 1e-3)))))


def duration_classes(config: TokenizerConfig) -> np.ndarray:
    """The length of every duration class, in positions (1/positions_per_beat beat)."""
    ppb = config.positions_per_beat
    fine = np.arange(1, config.fine_duration_beats * ppb + 1)
    step = ppb // config.coarse_steps_per_beat
    coarse = np.arange(fine[-1] + step, config.coarse_duration_beats * ppb + 1, step)
    return np.concatenate([fine, coarse])


def quantise_durations(positions: np.ndarray, config: TokenizerConfig) -> np.ndarray:
    """Durations in positions (float) -> duration class indices (nearest, ties to the shorter)."""
    classes = duration_classes(config)
    return np.argmin(np.abs(classes[None, :] - np.asarray(positions, float)[:, None]), axis=1)


def velocity_class_values(config: TokenizerConfig) -> np.ndarray:
    """The MIDI velocity (1..127) that every velocity class decodes to: the centre of its bin."""
    edges = np.linspace(0, 128, config.n_velocity + 1)
    return np.clip(np.round((edges[:-1] + edges[1:]) / 2), 1, 127).astype(int)


def quantise_velocities(velocities: np.ndarray, config: TokenizerConfig) -> np.ndarray:
    """MIDI velocities (0..127) -> velocity class indices (equal-width bins over 0..128)."""
    v = np.clip(np.asarray(velocities), 0, 127)
    return (v * config.n_velocity // 128).astype(int)


# ---------------------------------------------------------------- vocabularies


def build_vocabularies(config: TokenizerConfig) -> dict[str, tuple[str, ...]]:
    """Token names of every field, keyed by field name; index = token id."""
    ppb = config.positions_per_beat
    chords = ("N",) + tuple(f"{root}:{q}" for root in PITCH_CLASSES for q in config.chord_qualities)
    return {
        "family": SPECIALS + ("Metric", "Note", "End"),
        "bar_pos": SPECIALS + ("Bar", "Rest") + tuple(f"Pos_{i}" for i in range(config.positions_per_bar)),
        "tempo": SPECIALS + ("Conti",) + tuple(f"Tempo_{b:.1f}" for b in tempo_classes_bpm(config)),
        "chord": SPECIALS + ("Conti",) + chords,
        "rest": SPECIALS + tuple(f"Rest_{i}" for i in range(1, config.max_rest_bars + 1)),
        "pitch": SPECIALS + tuple(f"Pitch_{p}" for p in range(config.pitch_min, config.pitch_max + 1)),
        "duration": SPECIALS + tuple(f"Dur_{d / ppb:g}b" for d in duration_classes(config)),
        "velocity": SPECIALS + tuple(f"Vel_{v}" for v in velocity_class_values(config)),
    }


@dataclass
class ScoreNote:
    """A note on the representation's grid: onset and duration in positions."""

    onset: int
    pitch: int
    duration_class: int
    velocity_class: int


@dataclass
class Score:
    """A song on the grid: notes plus tempo and chord changes keyed by onset position."""

    notes: list[ScoreNote]
    tempo_at: dict[int, int] = dataclasses.field(default_factory=dict)  # position -> tempo class
    chord_at: dict[int, int] = dataclasses.field(default_factory=dict)  # position -> chord token


def chord_token_of(root: int | None, quality: str, config: TokenizerConfig) -> int:
    """Chord token id of a root (0 = C .. 11 = B; None = no chord) and a quality name."""
    if root is None:
        return CHORD_NONE
    return CHORD0 + root * len(config.chord_qualities) + config.chord_qualities.index(quality)


def chord_token_of_label(label: str, config: TokenizerConfig) -> int:
    """A chord label (``C:maj``, ``Gb:min7/b3``, ``N``) -> chord token id."""
    root, quality = parse_chord_label(label, config.chord_qualities)
    return chord_token_of(root, quality, config)
