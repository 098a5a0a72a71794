"""Transposition augmentation on real POP909 windows: notes move by k semitones with
onset, duration and velocity unchanged, chord roots move with them, no note leaves the
keyboard, the draw is seeded, and validation is never moved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cwcompose.data import TokenDataset, playable_shifts, transpose_window
from cwcompose.tokenizer import CHORD0, COL, VALUE0, CPTokenizer
from cwcompose.training import TrainConfig, Trainer

TINY = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)


@pytest.fixture(scope="module")
def train_set(small_dataset) -> TokenDataset:
    return TokenDataset.load(small_dataset, "train")


def notes_of(words: np.ndarray) -> list[tuple[int, int, int, int]]:
    tokenizer = CPTokenizer()
    return sorted((n.start, n.pitch, n.end - n.start, n.velocity)
                  for n in tokenizer.decode(words).instruments[0].notes)


def chords_of(words: np.ndarray) -> list[tuple[int, int]]:
    """(root 0-11, quality index) of every explicit chord, in order."""
    qualities = len(CPTokenizer().config.chord_qualities)
    chords = words[words[:, COL["chord"]] >= CHORD0, COL["chord"]] - CHORD0
    return [(int(c) // qualities, int(c) % qualities) for c in chords]


@pytest.mark.parametrize("semitones", [-5, -1, 3, 6])
def test_transposed_window_moves_notes_and_chord_roots(train_set, semitones):
    window = train_set.window(*train_set.bar_starts[40], 600)
    moved = transpose_window(window, semitones, train_set.tokenizer_config).numpy()
    original = window.numpy()
    before, after = notes_of(original), notes_of(moved)
    assert len(before) > 100
    assert after == [(start, pitch + semitones, length, velocity) for start, pitch, length, velocity in before]
    chords = chords_of(original)
    assert len(chords) > 5
    assert chords_of(moved) == [((root + semitones) % 12, quality) for root, quality in chords]
    untouched = [c for c in range(original.shape[1]) if c not in (COL["pitch"], COL["chord"])]
    assert np.array_equal(moved[:, untouched], original[:, untouched])


def test_shifts_keep_every_note_on_the_keyboard(train_set):
    config = train_set.tokenizer_config
    window = train_set.window(*train_set.bar_starts[0], 300)
    lowest = int(window[window[:, COL["pitch"]] >= VALUE0, COL["pitch"]].min()) - VALUE0 + config.pitch_min
    window[window[:, COL["pitch"]] >= VALUE0, COL["pitch"]] -= lowest - config.pitch_min  # lowest note -> A0
    low, high = playable_shifts(window, (-5, 6), config)
    assert low == 0 and high == 6, "nothing can go below A0"
    batch = train_set.sample_batch(64, 300, torch.Generator().manual_seed(1), transpose=(-5, 6))
    pitches = batch[..., COL["pitch"]]
    played = pitches[pitches >= VALUE0] - VALUE0 + config.pitch_min
    assert played.min() >= config.pitch_min and played.max() <= config.pitch_max


def test_augmented_batches_are_seeded_and_vary(train_set):
    def draw(seed, transpose):
        return train_set.sample_batch(8, 200, torch.Generator().manual_seed(seed), transpose=transpose)

    assert torch.equal(draw(3, (-5, 6)), draw(3, (-5, 6)))
    plain, moved = draw(3, None), draw(3, (-5, 6))
    assert not torch.equal(plain, moved)
    # the same windows were picked: only pitch and chord columns differ
    other = [c for c in range(plain.shape[-1]) if c not in (COL["pitch"], COL["chord"])]
    assert torch.equal(plain[..., other], moved[..., other])


def test_validation_is_never_transposed(small_dataset, tmp_path):
    def valid_loss(transpose):
        torch.manual_seed(0)
        cfg = TrainConfig(seq_len=64, batch_size=2, eval_windows=4, transpose=transpose, model=TINY)
        return Trainer(small_dataset, tmp_path / str(transpose), cfg, progress=False).validate()

    assert repr(valid_loss((-5, 6))) == repr(valid_loss(None))  # repr: NaN (no Rest target) equals NaN


@pytest.mark.parametrize("transpose", [(1, 3), (-2, -1), (0,)])
def test_transpose_range_must_contain_zero(transpose):
    with pytest.raises(ValueError, match="transpose"):
        TrainConfig(transpose=transpose)
