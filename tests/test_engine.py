"""The engine: batched decoder == recomputation, seeding, grammar under extreme sampling,
rewind, stopping, the stream of bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cwcompose.decoder import Decoder, window_start
from cwcompose.generation import BarDone, Done, compose, compose_variations, first_bars, iter_compose
from cwcompose.grammar import MAX_NOTES_PER_ONSET
from cwcompose.sampling import SamplingConfig
from cwcompose.tokenizer import FIELDS, CPTokenizer
from tiny_models import tiny_model
from cwcompose.words import COL, KIND_BAR, KIND_NOTE, KIND_POS, KIND_REST, POS0, TEMPO0, read_words

WILD = SamplingConfig(temperature={f: 5.0 for f in FIELDS}, top_p={f: 1.0 for f in FIELDS})


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def wild_words(model, tokenizer, rows: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """At least ``n`` words of each of ``rows`` rows sampled at temperature 5 (then cut)."""
    longest = [0] * rows

    def enough() -> bool:
        return min(longest) > n + 400

    for event in iter_compose(model, tokenizer, variations=rows, bars=100_000, seed=seed, sampling=WILD,
                              should_stop=enough):
        if isinstance(event, BarDone):
            longest[event.row] = len(event.words)
        else:
            return [c.words[:n] for c in event.compositions]


def test_batched_steps_equal_recomputation_across_window_slides(tiny):
    """Two rows with different words, a cache of 64, distances clipped at 48: every step's
    hidden state equals model.hidden over that row's window, through several slides."""
    model, tokenizer = tiny
    pieces = wild_words(model, tokenizer, 2, 300, seed=1)
    n = 300
    decoder = Decoder(model, batch=2)
    with torch.inference_mode():
        decoder.prefill(pieces[0][:1])
        keep = torch.ones(2, dtype=torch.bool)
        slides, worst = 0, 0.0
        for t in range(1, n):
            full = decoder.full_rows(decoder.lengths.tolist(), [False, False])
            decoder.slide(full)
            slides += len(full)
            h = decoder.step(torch.as_tensor(np.stack([pieces[0][t], pieces[1][t]])), keep)
            for r in range(2):
                window = torch.as_tensor(pieces[r][decoder.window_starts[r]:t + 1])[None]
                worst = max(worst, (model.hidden(window)[0, -1] - h[r]).abs().max().item())
    assert slides >= 6, "the test must cross the window boundary several times"
    assert worst < 1e-4


def test_windows_slide_at_bar_lines_and_keep_three_quarters():
    words = np.full((100, len(FIELDS)), 1)
    words[:, 0] = 3
    words[[10, 40, 70], :2] = [2, 2]  # bar lines
    assert window_start(words[:50], 64) == 0
    start = window_start(words, 64)
    assert start == 40 and 100 - start >= 48 and 100 - start < 64
    words[40, :2] = [3, 1]
    assert window_start(words, 64) == 100 - 48, "no bar line in reach: keep exactly 3/4"


def test_row_of_a_batch_equals_a_batch_of_one(tiny):
    model, tokenizer = tiny
    batch = compose_variations(model, tokenizer, variations=3, bars=4, seed=5, sampling=WILD)
    for i, piece in enumerate(batch):
        alone = compose(model, tokenizer, bars=4, seed=5 + i, sampling=WILD)
        assert np.array_equal(piece.words, alone.words)
    assert not np.array_equal(batch[0].words, batch[1].words)


def test_same_seed_same_words(tiny):
    model, tokenizer = tiny
    a = compose_variations(model, tokenizer, variations=2, bars=3, seed=9)
    b = compose_variations(model, tokenizer, variations=2, bars=3, seed=9)
    assert all(np.array_equal(x.words, y.words) for x, y in zip(a, b))


def test_every_grammar_rule_holds_in_every_row_under_extreme_sampling(tiny):
    model, tokenizer = tiny
    rows = wild_words(model, tokenizer, 4, 1000)
    assert all(len(w) == 1000 for w in rows), "each row writes 1000 words"
    for words in rows:
        check_grammar(words)
        midi = tokenizer.decode(words)
        assert len(midi.instruments[0].notes) == int(np.sum(words[:, 0] == 3)), "every note word decodes"


def check_grammar(words: np.ndarray) -> None:
    reading = read_words(words, 32)
    kind = reading.kind
    assert np.all(kind > 0) and reading.length == len(words), "every word is a bar, rest, position or note"
    previous = np.concatenate([[0], kind[:-1]])
    assert not np.any((kind == KIND_BAR) & (previous == KIND_BAR)), "no Bar right after a Bar"
    assert not np.any((kind == KIND_REST) & (previous == KIND_BAR))
    assert np.all(np.isin(previous[kind == KIND_NOTE], [KIND_POS, KIND_NOTE])), "notes follow a position or a note"
    pos = np.flatnonzero(kind == KIND_POS)
    same_bar = reading.bar[pos[1:]] == reading.bar[pos[:-1]]
    assert np.all(np.diff(words[pos, COL["bar_pos"]])[same_bar] > 0), "positions increase within a bar"
    after = previous[pos]
    assert not np.any(after == KIND_REST), "no position right after a Rest"
    runs = np.diff(np.flatnonzero(np.concatenate([[True], kind != KIND_NOTE, [True]]))) - 1
    assert runs.max() <= MAX_NOTES_PER_ONSET
    first = pos[0]
    assert words[first, COL["tempo"]] >= TEMPO0 and words[first, COL["chord"]] >= 3, "no Conti before a value"
    assert np.all(words[pos, COL["bar_pos"]] >= POS0)


def test_stream_yields_a_bar_done_per_bar_per_row_in_order(tiny):
    model, tokenizer = tiny
    events = list(iter_compose(model, tokenizer, variations=2, bars=5, seed=3))
    assert isinstance(events[-1], Done)
    for row in range(2):
        bars = [e.bar for e in events[:-1] if e.row == row]
        assert bars == list(range(5))
        piece = events[-1].compositions[row]
        notes = sum(len(e.notes) for e in events[:-1] if e.row == row)
        assert notes == len(piece.midi.instruments[0].notes)
    assert all(isinstance(e, BarDone) for e in events[:-1])


def test_stopping_keeps_the_bars_made(tiny):
    model, tokenizer = tiny
    full = compose(model, tokenizer, bars=8, seed=4)
    seen = []
    stopped = compose(model, tokenizer, bars=8, seed=4, on_bar=lambda done, total: seen.append(done) or done < 3)
    assert stopped.stopped_early and stopped.bars == 3 and seen == [1, 2, 3]
    assert np.array_equal(stopped.words, first_bars(full.words, 3))


def test_from_bar_keeps_the_first_bars_note_for_note(tiny):
    model, tokenizer = tiny
    take = compose(model, tokenizer, bars=8, seed=6)
    redo = compose(model, tokenizer, primer=take.words, primer_bars=32, from_bar=5, bars=3, seed=7)
    kept = first_bars(take.words, 5)
    assert np.array_equal(redo.words[:len(kept)], kept)
    key = lambda n: (n.start, n.pitch, n.end, n.velocity)  # noqa: E731
    bar_ticks = 4 * tokenizer.config.ticks_per_beat
    old = sorted(key(n) for n in take.midi.instruments[0].notes if n.start < 5 * bar_ticks)
    new = sorted(key(n) for n in redo.midi.instruments[0].notes if n.start < 5 * bar_ticks)
    assert old == new and redo.bars == 3


def test_max_seconds_cuts_each_row(tiny):
    model, tokenizer = tiny
    pieces = compose_variations(model, tokenizer, variations=2, bars=64, max_seconds=6.0, seed=1)
    assert all(p.stopped_early and p.bars < 64 and p.seconds <= 6.0 + 12 for p in pieces)


# ---------------------------------------------------------------- the fast paths (decoder.py, sampling.py, grammar.py)


def test_noise_made_in_blocks_equals_noise_made_per_word():
    from cwcompose.sampling import gumbel_block, gumbel_noise, row_keys
    keys, columns = row_keys(torch.tensor([3, 4, 99])), torch.arange(425)
    block = gumbel_block(keys, 64, 32, columns)
    for i in (0, 7, 31):
        assert torch.equal(block[i], gumbel_noise(keys, 64 + i, columns))


def test_padded_grammar_equals_the_per_field_rules():
    from cwcompose.grammar import PaddedGrammar, WordState, allowed
    tokenizer = CPTokenizer()
    sizes = tokenizer.vocab_sizes
    g = torch.Generator().manual_seed(0)
    n = 512
    r = lambda lo, hi: torch.randint(lo, hi, (n,), generator=g)  # noqa: E731
    current = torch.full((n, len(FIELDS)), 1)
    current[:, 0] = r(1, 5)
    state = WordState(current=current, bar=r(-1, 20), position=r(-1, 32), notes_in_bar=r(0, 40),
                      notes_at_onset=r(0, 20), done=r(0, 2).bool(), previous=r(0, 8), bar_open=r(0, 2).bool(),
                      have_tempo=r(0, 2).bool(), have_chord=r(0, 2).bool(), bar_limit=r(0, 24), vocab_sizes=sizes)
    width = max(sizes.values())
    padded = PaddedGrammar(sizes, width).allowed(state)
    for i, field in enumerate(FIELDS[1:]):
        assert torch.equal(padded[:, i, :sizes[field]], allowed(state, field).expand(n, -1)), field


def test_constraints_that_change_nothing_change_no_word(tiny):
    """With a user constraint the sampler draws bar_pos before the other fields (a
    constraint may read it); the words are those of the one-pass draw."""
    model, tokenizer = tiny
    seen = set()

    def watch(state, field, logits):
        seen.add(field)
        return logits

    plain = compose_variations(model, tokenizer, variations=2, bars=4, seed=3, sampling=WILD)
    watched = compose_variations(model, tokenizer, variations=2, bars=4, seed=3, sampling=WILD, constraints=[watch])
    assert all(np.array_equal(a.words, b.words) for a, b in zip(plain, watched))
    assert seen == set(FIELDS)
