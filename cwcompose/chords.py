"""Chord labels: parsing POP909-style annotations and estimating chords from notes."""

from __future__ import annotations

import re

import numpy as np

NOTE_OFFSETS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# Intervals above the root, for estimation and for reading the annotations.
CHORD_TEMPLATES = {
    "maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "aug": (0, 4, 8),
    "sus2": (0, 2, 7), "sus4": (0, 5, 7), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11),
    "min7": (0, 3, 7, 10), "hdim7": (0, 3, 6, 10), "dim7": (0, 3, 6, 9),
}
# Annotated qualities outside the vocabulary -> the nearest one inside it.
QUALITY_ALIASES = {
    "maj6": "maj", "min6": "min", "minmaj7": "min", "9": "7", "11": "7", "13": "7",
    "maj9": "maj7", "maj11": "maj7", "maj13": "maj7", "min9": "min7", "min11": "min7", "min13": "min7",
    "": "maj", "5": "maj", "1": "maj",
}
_LABEL = re.compile(r"^([A-G])([#b]*):?([^/(]*)")


def parse_chord_label(label: str, qualities: tuple[str, ...]) -> tuple[int | None, str]:
    """``'Gb:min7/b3'`` -> (root pitch class 6, ``'min7'``); ``'N'`` or unreadable -> (None, '')."""
    match = _LABEL.match(label.strip())
    if not match:
        return None, ""
    letter, accidentals, quality = match.groups()
    root = (NOTE_OFFSETS[letter] + accidentals.count("#") - accidentals.count("b")) % 12
    quality = QUALITY_ALIASES.get(quality, quality)
    if quality not in qualities:
        quality = "min" if quality.startswith("min") and "min" in qualities else "maj"
    return root, quality


def estimate_chord(pitch_weights: np.ndarray, qualities: tuple[str, ...]) -> tuple[int | None, str]:
    """A 12-bin pitch-class weight vector (e.g. summed note durations) -> (root, quality).

    Each (root, quality) template scores the weight it covers minus half the weight it
    misses; a silent window gives (None, '').
    """
    total = float(pitch_weights.sum())
    if total <= 0:
        return None, ""
    best, best_score = (None, ""), -np.inf
    for quality in qualities:
        template = CHORD_TEMPLATES[quality]
        for root in range(12):
            covered = sum(pitch_weights[(root + i) % 12] for i in template)
            score = covered - 0.5 * (total - covered) - 0.01 * len(template)
            if score > best_score:
                best, best_score = (root, quality), score
    return best
