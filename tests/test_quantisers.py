"""The tokenizer's quantisers pinned to values worked out by hand (never by the code under test).

The POP909 round-trip test compares the tokenizer with itself; these tables say what the
quantisers must give in the first place, for the default :class:`TokenizerConfig`
(32 tempo classes over 40-250 BPM, 8 positions a beat, 64 duration and 64 velocity classes).
Every expected value below is derived in the comment beside it so a reader can check it
with pencil and paper (or a pocket calculator for the logarithms).
"""

from __future__ import annotations

import pytest

from cwcompose.tokenizer import (
    CPTokenizer, TokenizerConfig, duration_classes, quantise_durations, quantise_tempo, quantise_velocities,
    tempo_classes_bpm, velocity_class_values,
)

CONFIG = TokenizerConfig()
TOKENIZER = CPTokenizer(CONFIG)

# ---------------------------------------------------------------- tempo
#
# 32 classes log-spaced from 40 to 250 BPM: class k = 40 * r**k with r = (250/40)**(1/31).
#   ln(250/40) = ln 6.25 = 1.832581;  / 31 = 0.0591155 = ln r;  r = e**0.0591155 = 1.060898.
# A tempo's class is the nearest in log space: k* = ln(bpm/40) / 0.0591155, rounded.
# Halfway between classes k and k+1 (log space) lies 40 * r**(k + 0.5).

TEMPO_CLASS_BPM = {  # class -> its BPM, to 2 decimals
    0: 40.00,    # 40 * r**0
    1: 42.44,    # 40 * 1.060898                    = 42.436
    2: 45.02,    # 40 * e**(2 * 0.0591155)  = 40 * 1.125505 = 45.020
    7: 60.50,    # 40 * e**0.413809        = 40 * 1.512567 = 60.503
    14: 91.51,   # 40 * e**0.827617        = 40 * 2.287861 = 91.514
    18: 115.93,  # 40 * e**1.064080        = 40 * 2.898170 = 115.927
    19: 122.99,  # 115.927 * 1.060898                        = 122.987
    27: 197.35,  # 40 * e**1.596119        = 40 * 4.933847 = 197.354
    30: 235.65,  # 250 / r                                   = 235.650
    31: 250.00,  # 40 * 6.25
}

TEMPO_TABLE = [  # (BPM, class)
    (40, 0),        # the bottom of the range
    (250, 31),      # the top
    (120, 19),      # ln 3 = 1.098612; / 0.0591155 = 18.584 -> 19 (0.416 away, 18 is 0.584 away)
    (60, 7),        # ln 1.5 = 0.405465; / 0.0591155 = 6.859 -> 7
    (90, 14),       # ln 2.25 = 0.810930; / 0.0591155 = 13.718 -> 14
    (200, 27),      # ln 5 = 1.609438; / 0.0591155 = 27.225 -> 27
    (119.3, 18),    # the 18/19 boundary is 40 * r**18.5 = 119.40: just below it ...
    (119.5, 19),    # ... and just above it
    (41.1, 0),      # the 0/1 boundary is 40 * r**0.5 = 41.20
    (41.3, 1),
    (10, 0),        # below the range: the slowest class
    (1000, 31),     # above the range: the fastest class
    (0, 0),         # no tempo at all: the slowest class, no error
]
# 100 BPM is left out on purpose: 100 = sqrt(40 * 250) sits exactly halfway (class 15.5) in log space.


@pytest.mark.parametrize("klass, bpm", TEMPO_CLASS_BPM.items())
def test_tempo_class_bpm(klass, bpm):
    classes = tempo_classes_bpm(CONFIG)
    assert len(classes) == 32
    assert classes[klass] == pytest.approx(bpm, abs=0.005)


@pytest.mark.parametrize("bpm, klass", TEMPO_TABLE)
def test_quantise_tempo(bpm, klass):
    assert quantise_tempo(bpm, CONFIG) == klass


def test_tempo_token_names():
    # Pad, Ignore, Conti, then Tempo_<BPM to 1 decimal> for classes 0..31: 35 tokens.
    tempo = TOKENIZER.vocab["tempo"]
    assert len(tempo) == 35
    assert tempo[:4] == ("Pad", "Ignore", "Conti", "Tempo_40.0")
    assert tempo[3 + 19] == "Tempo_123.0"  # 122.987 to 1 decimal
    assert tempo[3 + 18] == "Tempo_115.9"
    assert tempo[-1] == "Tempo_250.0"


# ---------------------------------------------------------------- duration
#
# A position is 1/8 beat. Classes 0..31 are 1..32 positions (1/8 beat steps up to 4 beats);
# classes 32..63 are 34, 36, ..., 96 positions (1/4 beat = 2 positions steps up to 12 beats):
# class of a coarse length L = 32 + (L - 34) / 2. A length goes to the nearest class, and a
# tie goes to the shorter one.

DURATION_TABLE = [  # (length in positions, class)
    (1, 0),         # 1/8 beat: the first class
    (8, 7),         # one beat = 8 positions -> class 8 - 1
    (32, 31),       # 4 beats: the last fine class
    (34, 32),       # 4.25 beats: the first coarse class
    (36, 33),
    (48, 39),       # 6 beats: 32 + (48 - 34) / 2 = 39
    (96, 63),       # 12 beats: the last class, 32 + (96 - 34) / 2 = 63
    (0, 0),         # a zero-length note: nearest is 1 position
    (0.4, 0),
    (1.5, 0),       # a tie between 1 and 2 -> the shorter, 1
    (1.51, 1),
    (4.5, 3),       # a tie between 4 and 5 -> 4 -> class 3
    (12.4, 11),     # nearest 12 -> class 11
    (33, 31),       # a tie between 32 (class 31) and 34 (class 32) -> the shorter
    (33.01, 32),
    (35, 32),       # a tie between 34 and 36 -> 34
    (95, 62),       # a tie between 94 and 96 -> 94 = class 32 + (94 - 34) / 2 = 62
    (200, 63),      # longer than 12 beats: the longest class
    (10**6, 63),
]


def test_duration_class_lengths():
    lengths = duration_classes(CONFIG)
    assert len(lengths) == 64
    assert lengths[:4].tolist() == [1, 2, 3, 4] and lengths[31] == 32  # 1/8 beat steps
    assert lengths[32:36].tolist() == [34, 36, 38, 40] and lengths[63] == 96  # 1/4 beat steps


@pytest.mark.parametrize("positions, klass", DURATION_TABLE)
def test_quantise_duration(positions, klass):
    assert quantise_durations([positions], CONFIG).tolist() == [klass]


def test_duration_token_names():
    # Pad, Ignore, then Dur_<beats>b: class 0 = 1/8 beat, 7 = 1 beat, 31 = 4, 32 = 4.25, 63 = 12.
    duration = TOKENIZER.vocab["duration"]
    assert len(duration) == 66
    assert [duration[2 + k] for k in (0, 7, 31, 32, 39, 63)] == [
        "Dur_0.125b", "Dur_1b", "Dur_4b", "Dur_4.25b", "Dur_6b", "Dur_12b"]


# ---------------------------------------------------------------- velocity
#
# 64 classes of equal width over 0..128: width 128 / 64 = 2, so class = velocity // 2
# (velocities clipped to 0..127 first). Each class decodes to the centre of its bin:
# bin k spans [2k, 2k + 2), centre 2k + 1.

VELOCITY_TABLE = [  # (MIDI velocity, class)
    (0, 0), (1, 0), (2, 1), (3, 1),
    (63, 31), (64, 32), (100, 50),
    (126, 63), (127, 63),
    (128, 63),      # out of range: clipped to 127
    (-5, 0),        # out of range: clipped to 0
]


@pytest.mark.parametrize("velocity, klass", VELOCITY_TABLE)
def test_quantise_velocity(velocity, klass):
    assert quantise_velocities([velocity], CONFIG).tolist() == [klass]


def test_velocity_class_values():
    values = velocity_class_values(CONFIG)
    assert len(values) == 64
    assert [values[k] for k in (0, 1, 31, 32, 50, 63)] == [1, 3, 63, 65, 101, 127]  # 2k + 1
    velocity = TOKENIZER.vocab["velocity"]
    assert (velocity[2], velocity[2 + 32], velocity[-1]) == ("Vel_1", "Vel_65", "Vel_127")


# ---------------------------------------------------------------- chords
#
# Pad, Ignore, Conti, N, then 12 roots x 11 qualities, root-major:
#   roots    C C# D D# E F F# G G# A A# B              (0..11)
#   quality  maj min dim aug sus2 sus4 7 maj7 min7 hdim7 dim7   (0..10)
# so the token of (root, quality) is 4 + 11 * root + quality, and there are 4 + 132 = 136.

CHORD_NAMES = {  # token -> name
    0: "Pad", 1: "Ignore", 2: "Conti", 3: "N",
    4: "C:maj",       # 4 + 0 + 0
    5: "C:min",       # 4 + 0 + 1
    14: "C:dim7",     # 4 + 0 + 10
    15: "C#:maj",     # 4 + 11 + 0
    89: "G:min7",     # 4 + 77 + 8
    111: "A:min7",    # 4 + 99 + 8
    135: "B:dim7",    # 4 + 121 + 10: the last
}

CHORD_LABELS = [  # (POP909-style label, token)
    ("N", 3),
    ("C:maj", 4),
    ("A:min7", 111),
    ("Gb:min7/b3", 78),   # Gb = F# (root 6), inversion dropped: 4 + 66 + 8
    ("Bb:maj6", 114),     # maj6 -> maj; Bb = A# (root 10): 4 + 110 + 0
    ("E:min9", 56),       # min9 -> min7; E = root 4: 4 + 44 + 8
    ("D:sus4(b7)", 31),   # extension dropped -> sus4; D = root 2: 4 + 22 + 5
    ("Cb:maj", 125),      # Cb = B (root 11): 4 + 121 + 0
    ("X", 3),             # unreadable -> N
]


def test_chord_vocabulary_names():
    chord = TOKENIZER.vocab["chord"]
    assert len(chord) == 136
    assert {token: chord[token] for token in CHORD_NAMES} == CHORD_NAMES


@pytest.mark.parametrize("label, token", CHORD_LABELS)
def test_chord_labels_map_to_tokens(label, token):
    assert TOKENIZER.chord_token(label) == token
