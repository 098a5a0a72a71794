"""The whole-word step (cwcompose.fused): the same words as the eager ops, traced or
compiled, through window slides; locks stay eager."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cwcompose.decoder import Decoder, WordSampler
from cwcompose.fused import FusedWords, finish_word, fusable, worth_compiling
from cwcompose.generation import compose
from cwcompose.grammar import WordState
from cwcompose.locks import Locks
from cwcompose.sampling import SamplingConfig, sampling_processors
from cwcompose.tokenizer import FIELDS
from tiny_models import tiny_model

WILD = SamplingConfig(temperature={f: 5.0 for f in FIELDS}, top_p={f: 1.0 for f in FIELDS})
COMPILE = pytest.mark.skipif(not os.environ.get("CWCOMPOSE_TEST_COMPILE"),
                             reason="compiles the word step (a minute or more): set CWCOMPOSE_TEST_COMPILE=1")


def draw(model, sampling: SamplingConfig, rows: int, n: int, fused: bool) -> np.ndarray:
    """``n`` words per row (no bar limit) through the eager ops or the uncompiled word step."""
    opening = np.array([[2, 2] + [1] * (len(FIELDS) - 2)])
    state = WordState.start(opening, batch=rows, bars=10**9, from_primer=False, vocab_sizes=model.config.vocab_sizes)
    decoder = Decoder(model, rows)
    sampler = WordSampler(model, list(range(rows)), sampling_processors(sampling))
    steps = FusedWords(decoder, sampler, compiled=False) if fused else None
    with torch.inference_mode():
        sampler.family(decoder.prefill(opening), state, 0)
        for index in range(n):
            decoder.slide(decoder.full_rows(decoder.lengths.tolist(), [False] * rows))
            finish_word(decoder, sampler, steps, state, index)
    return decoder.history[:, :int(decoder.n_words.max())].numpy()


@pytest.mark.parametrize("sampling", [WILD, SamplingConfig()], ids=["wild", "default"])
def test_the_word_step_draws_the_eager_words_through_slides(sampling):
    """The function that is compiled, run as Python: the very words of the eager ops
    (a cache of 64 slides several times in 300 words)."""
    model, _ = tiny_model()
    assert np.array_equal(draw(model, sampling, 3, 300, fused=True), draw(model, sampling, 3, 300, fused=False))


def test_locks_and_several_rows_keep_the_eager_path():
    model, tokenizer = tiny_model()
    processors = Locks(chords="C G Am F", key="A minor").processors(tokenizer)
    assert processors and not fusable(WordSampler(model, [0], [*processors, *sampling_processors(WILD)]))
    assert fusable(WordSampler(model, [0], sampling_processors(WILD)))
    assert worth_compiling(WordSampler(model, [0], sampling_processors(WILD)), 1)
    assert not worth_compiling(WordSampler(model, [0, 1], sampling_processors(WILD)), 2)
    with pytest.raises(ValueError, match="eager"):
        FusedWords(Decoder(model, 1), WordSampler(model, [0], processors))
    locked = dict(bars=3, seed=2, constraints=processors)
    assert np.array_equal(compose(model, tokenizer, compile=True, **locked).words,
                          compose(model, tokenizer, **locked).words)


@COMPILE
def test_compiled_word_step_draws_the_eager_words_on_a_shipped_checkpoint(pop909):
    """Compiled, on the shipped model the bench measures: the eager words, word for word,
    from a POP909 primer over several hundred words (its context of 256 slides)."""
    from cwcompose.checkpoints import load_checkpoint
    model, tokenizer = load_checkpoint("v1/28500", device="cpu")
    options = dict(primer=pop909 / "010" / "010.mid", primer_bars=4, bars=24, seed=3)
    compiled = compose(model, tokenizer, compile=True, **options)
    eager = compose(model, tokenizer, **options)
    assert len(compiled.continuation) >= 400
    assert np.array_equal(compiled.words, eager.words)
