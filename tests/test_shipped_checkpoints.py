"""The checkpoints committed under checkpoints/ (every generation) are the trained ones:
their SHA-256 match checkpoints/SHA256SUMS, they load strictly, they compose, and their
loss on held-out POP909 windows is near the validation loss recorded in their JSON and
far below an untrained model's."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from cwcompose.checkpoints import SHIPPED_DIR, SHIPPED_STEPS, load_checkpoint, resolve_checkpoint, shipped_names
from cwcompose.data import TokenDataset, split_of
from cwcompose.generation import compose
from cwcompose.midi_input import score_from_pop909
from cwcompose.model import CPTransformer, total_loss
from cwcompose.tokenizer import CPTokenizer

NAMES = shipped_names()
SUMS = SHIPPED_DIR / "SHA256SUMS"
HELD_OUT_SONGS = 6
WINDOWS = 12
TOLERANCE_NATS = 0.3  # 12 windows of 6 songs against the 64 windows the run validated on


def recorded_sums() -> dict[str, str]:
    """relative path -> SHA-256, from ``sha256sum`` lines."""
    lines = [line.split() for line in SUMS.read_text().splitlines() if line.strip()]
    return {path.lstrip("*"): digest for digest, path in lines}


def test_every_shipped_step_is_available():
    assert all(f"{s}" in NAMES or f"v1/{s}" in NAMES for s in SHIPPED_STEPS), NAMES


def test_weights_match_their_recorded_sha256():
    sums = recorded_sums()
    shipped = sorted(str(p.relative_to(SHIPPED_DIR)) for p in SHIPPED_DIR.rglob("step*.safetensors"))
    assert sorted(sums) == shipped, "every shipped weights file is listed in SHA256SUMS, and only those"
    for path, digest in sums.items():
        assert hashlib.sha256((SHIPPED_DIR / path).read_bytes()).hexdigest() == digest, path


@pytest.fixture(scope="module")
def held_out(pop909) -> TokenDataset:
    """A few songs of the validation split, encoded as training encodes them."""
    tokenizer = CPTokenizer()
    songs = sorted(p for p in pop909.iterdir() if p.is_dir() and split_of(p.name) == "valid")[:HELD_OUT_SONGS]
    words = [tokenizer.encode_score(score_from_pop909(p, tokenizer.config)).astype(np.int64) for p in songs]
    return TokenDataset(words, [p.name for p in songs], tokenizer.config, fingerprint="held-out")


@torch.no_grad()
def held_out_loss(model: CPTransformer, held_out: TokenDataset) -> float:
    windows = held_out.fixed_windows(WINDOWS, model.config.context + 1)
    losses = [total_loss(model(w[None, :-1], w[None, 1:])[1]).item() for w in windows]
    return float(np.mean(losses))


@pytest.mark.parametrize("name", NAMES)
def test_shipped_checkpoint_is_trained_and_composes(name, held_out, pop909):
    stem = resolve_checkpoint(name)
    info = json.loads(stem.with_suffix(".json").read_text())
    assert str(info["step"]) == name.rpartition("/")[2]
    assert len(info["dataset_fingerprint"]) == 16
    assert stem.with_suffix(".safetensors").stat().st_size < 10 * 2**20
    model, tokenizer = load_checkpoint(name, device="cpu", tokenizer_config=CPTokenizer().config)
    trained = held_out_loss(model, held_out)
    torch.manual_seed(0)
    untrained = held_out_loss(CPTransformer(model.config).eval(), held_out)
    assert abs(trained - info["valid_loss"]["total"]) < TOLERANCE_NATS, (trained, info["valid_loss"]["total"])
    assert trained < untrained - 2.0, (trained, untrained)

    piece = compose(model, tokenizer, primer=pop909 / "010" / "010.mid", primer_bars=4, bars=4, seed=0)
    assert piece.bars == 4
    continuation = [n for n in piece.midi.instruments[0].notes if n.start >= piece.primer_end_tick]
    assert len(continuation) >= 8, "a trained model writes notes, not just bar lines"
