"""The whole per-word step as one compiled graph: the word's fields, the grammar's
advance, the model's decode step, the next word's family.

At this model's size an eager word is mostly per-op overhead: about 200 ops (the model's
step, the sampler's draws, the grammar's update) at a few microseconds each, beside the
matmuls' reading of the weights (3.6 MB a word); compiling the model's step alone gained
little (the sampler and the grammar stayed eager). The one host sync a word needs
(:func:`cwcompose.generation.iter_compose` reads the rows' bars and lengths for bar events
and window slides) comes after the family draw, so a word is cut there: everything from
one sync to the next is one graph of static shapes (one per batch size, model shape and
set of fields with a top-p below 1), with the C++ wrapper (no Python between its kernels).

Outside the graph stay what changes shape or is made a block of words at a time: the
Gumbel noise (:meth:`WordSampler.noise_for`, so the compiled step draws with the very
noise the eager step draws with), the growing history, and the new keys' write into the
cache (one ``index_copy_``: a graph that writes into a slice of an input copies the whole
cache). The compiler's fused arithmetic rounds the hidden states differently in the last
bits, so the compiled words are the eager words but for an improbable near-tie
(tests/test_fused.py compares them over a shipped checkpoint). Samplers with custom
processors (locks) and several rows stay on the eager path: :func:`worth_compiling`.
"""

from __future__ import annotations

import functools
import time
from dataclasses import fields

import numpy as np
import torch

from cwcompose.decoder import Decoder, WordSampler, decode_step_pure
from cwcompose.grammar import WordState, kind_jump_table
from cwcompose.model import CPTransformer
from cwcompose.sampling import DEFAULT_SAMPLING, sampling_processors
from cwcompose.words import BAR, COL, FAMILY_METRIC, FIELDS, IGNORE

STATE_TENSORS = tuple(f.name for f in fields(WordState) if f.name not in ("vocab_sizes", "allow_end"))


def fusable(sampler: WordSampler) -> bool:
    """Whether the compiled step can run the sampler's pipeline: grammar, temperature and
    top-p only (a custom processor is arbitrary Python, traced into the graph or not)."""
    return not sampler.custom


def worth_compiling(sampler: WordSampler, batch: int) -> bool:
    """Whether to draw with the compiled step: a fusable sampler and one row. With several
    rows the graph's attention over the whole static cache costs more than the overhead it
    saves at a long context (8 rows at context 1024: 0.62x the eager step, which reads the
    keys up to the longest row only, with the fused attention kernel)."""
    return fusable(sampler) and batch == 1


def word_step(sampler: WordSampler, tables: tuple, weights: tuple, max_distance: int, vocab_sizes: dict,
              allow_end: bool, state_tensors: tuple, rest: torch.Tensor, noise: torch.Tensor,
              next_noise: torch.Tensor, kv: torch.Tensor, lengths: torch.Tensor,
              n_words: torch.Tensor) -> tuple:
    """Draw the fields of the word whose family is drawn (``rest`` and ``noise`` from that
    draw), advance the grammar, run the model's step on the cache ``kv`` (left unwritten)
    and draw the next word's family with ``next_noise``. Returns the word, the new state
    tensors, the next ``rest``, the new lengths and word counts, and the new keys and
    values (layers, B, 2 * d) for :meth:`Decoder.write_keys`."""
    state = WordState(**dict(zip(STATE_TENSORS, state_tensors)), vocab_sizes=vocab_sizes, allow_end=allow_end)
    word = sampler.draw_fields(state, rest, noise)
    keep = state.advance(word)
    h, new_keys = decode_step_pure(word, lengths, kv, tables, weights, max_distance)
    state.begin_word()
    rest = sampler.draw_family(h, state, next_noise)
    return word, tuple(getattr(state, f) for f in STATE_TENSORS), rest, lengths + keep, n_words + keep, new_keys


@functools.cache
def compiled_word_step():
    """:func:`word_step` through ``torch.compile``: static shapes, no graph break, the C++
    wrapper. Compiles on the first step of each shape (about a minute on this CPU): warm
    it off the request path (:func:`warm_up`)."""
    return torch.compile(word_step, dynamic=False, fullgraph=True, options={"cpp_wrapper": True})


class FusedWords:
    """:func:`word_step` over a decoder, its sampler and a grammar state."""

    def __init__(self, decoder: Decoder, sampler: WordSampler, compiled: bool = True):
        if not fusable(sampler):
            raise ValueError("a sampler with custom processors draws on the eager path")
        self.decoder, self.sampler = decoder, sampler
        # a lazily built global table: built now, so that the graph reads it rather than builds it
        kind_jump_table(decoder.model.config.vocab_sizes, decoder.device)
        self.step_fn = compiled_word_step() if compiled else word_step

    @torch.inference_mode()
    def step(self, state: WordState, word_index: int) -> torch.Tensor:
        """Finish word ``word_index`` (its family drawn), append it where the rows keep it,
        draw the next word's family; returns it (B,). The sampler keeps the carry between
        the draws (``pending_rest``, ``pending_noise``), so eager and compiled steps may alternate."""
        d, s = self.decoder, self.sampler
        next_noise = s.noise_for(word_index + 1)
        word, tensors, rest, lengths, n_words, new_keys = self.step_fn(
            s, *d.step_constants(), state.vocab_sizes, state.allow_end,
            tuple(getattr(state, f) for f in STATE_TENSORS), s.pending_rest, s.pending_noise, next_noise, d.kv,
            d.lengths, d.n_words)
        d.record(word)
        d.write_keys(new_keys)
        d.lengths, d.n_words = lengths, n_words
        s.pending_rest, s.pending_noise = rest, next_noise
        for name, value in zip(STATE_TENSORS, tensors):
            setattr(state, name, value)
        return state.current[:, COL["family"]]


def finish_word(decoder: Decoder, sampler: WordSampler, fused: FusedWords | None, state: WordState,
                word_index: int) -> torch.Tensor:
    """Draw the rest of word ``word_index``, append it and draw the next word's family
    (B,): one compiled call with ``fused``, else the eager ops."""
    if fused is not None:
        return fused.step(state, word_index)
    word = sampler.fields(state)
    h = decoder.step(word, state.advance(word))
    return sampler.family(h, state, word_index + 1)


@torch.inference_mode()
def warm_up(model: CPTransformer) -> float:
    """Compile the word step for one row and the default sampling (e.g. in a background
    thread); the seconds it took."""
    started = time.perf_counter()
    opening = np.array([[FAMILY_METRIC, BAR] + [IGNORE] * (len(FIELDS) - 2)])
    state = WordState.start(opening, batch=1, bars=1, from_primer=False, vocab_sizes=model.config.vocab_sizes,
                            device=next(model.parameters()).device)
    decoder = Decoder(model, 1)
    sampler = WordSampler(model, [0], sampling_processors(DEFAULT_SAMPLING))
    sampler.family(decoder.prefill(opening), state, 0)
    FusedWords(decoder, sampler).step(state, 0)
    return time.perf_counter() - started
