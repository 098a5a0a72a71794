"""The checkpoints committed under checkpoints/ load strictly and compose."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cwcompose.checkpoints import SHIPPED_DIR, SHIPPED_STEPS, load_checkpoint
from cwcompose.generation import compose
from cwcompose.tokenizer import CPTokenizer

SHIPPED = [s for s in SHIPPED_STEPS if (SHIPPED_DIR / f"step{s}.safetensors").exists()]


def test_every_shipped_step_is_committed():
    assert SHIPPED == list(SHIPPED_STEPS), f"missing from {SHIPPED_DIR}: {sorted(set(SHIPPED_STEPS) - set(SHIPPED))}"


@pytest.mark.parametrize("step", SHIPPED)
def test_shipped_checkpoint_loads_and_composes(step, pop909):
    info = json.loads((SHIPPED_DIR / f"step{step}.json").read_text())
    assert info["step"] == step
    assert len(info["dataset_fingerprint"]) == 16
    assert (SHIPPED_DIR / f"step{step}.safetensors").stat().st_size < 10 * 2**20
    model, tokenizer = load_checkpoint(step, device="cpu", tokenizer_config=CPTokenizer().config)
    piece = compose(model, tokenizer, primer=pop909 / "010" / "010.mid", primer_bars=4, bars=4, seed=0)
    again = compose(model, tokenizer, primer=pop909 / "010" / "010.mid", primer_bars=4, bars=4, seed=0)
    assert np.array_equal(piece.words, again.words)
    assert piece.bars == 4
    continuation = [n for n in piece.midi.instruments[0].notes if n.start >= piece.primer_end_tick]
    assert len(continuation) >= 8, "a trained model writes notes, not just bar lines"
