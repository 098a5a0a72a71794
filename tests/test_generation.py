"""Generation: KV cache == recomputation, determinism, grammar, primers, stopping."""

from __future__ import annotations

import miditoolkit
import numpy as np
import pytest
import torch

from cwcompose.checkpoints import save_checkpoint
from cwcompose.cli import main as cli_main
from cwcompose.generation import (COL, Grammar, IncrementalDecoder, compose, count_bars, primer_words,
                                  sample_word)
from cwcompose.model import CPTransformer, ModelConfig
from cwcompose.sampling import DEFAULT_SAMPLING, SamplingConfig
from cwcompose.tokenizer import FIELDS, CPTokenizer


def tiny_model(max_relative_distance: int = 64, seed: int = 0) -> tuple[CPTransformer, CPTokenizer]:
    tokenizer = CPTokenizer()
    torch.manual_seed(seed)
    config = ModelConfig(vocab_sizes=tokenizer.vocab_sizes, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                         dropout=0.0, max_relative_distance=max_relative_distance)
    return CPTransformer(config).eval(), tokenizer


@pytest.fixture(scope="module")
def song_words(pop909) -> np.ndarray:
    return CPTokenizer().encode(pop909 / "003" / "003.mid")


def test_cached_logits_equal_recomputation_across_the_sliding_window(song_words):
    model, _ = tiny_model(max_relative_distance=64)
    decoder = IncrementalDecoder(model)
    words = song_words[:301]
    with torch.inference_mode():
        h = decoder.prefill(words[:1])
        restarts, worst = 0, 0.0
        for t in range(1, 301):
            start_before = decoder.window_start
            h = decoder.step(words[t])
            restarts += decoder.window_start != start_before
            window = torch.as_tensor(words[decoder.window_start:t + 1])[None]
            full = model.hidden(window)[0, -1]
            family = torch.tensor(3)
            cached_logits = model.field_logits(h, family, FIELDS[1:])
            full_logits = model.field_logits(full, family, FIELDS[1:])
            worst = max(worst, (model.family_logits(h) - model.family_logits(full)).abs().max().item(),
                        *[(cached_logits[f] - full_logits[f]).abs().max().item() for f in FIELDS[1:]])
    assert restarts >= 4, "the test must cross the sliding-window boundary several times"
    assert worst < 1e-4


def test_same_seed_same_words_other_seed_other_words():
    model, tokenizer = tiny_model()
    a = compose(model, tokenizer, bars=4, seed=11)
    b = compose(model, tokenizer, bars=4, seed=11)
    c = compose(model, tokenizer, bars=4, seed=12)
    assert np.array_equal(a.words, b.words)
    assert not np.array_equal(a.words, c.words)


def test_extreme_sampling_still_decodes_to_valid_midi(tmp_path):
    model, tokenizer = tiny_model()
    wild = SamplingConfig(temperature={f: 5.0 for f in FIELDS}, top_p={f: 1.0 for f in FIELDS})
    grammar, generator = Grammar(tokenizer.vocab_sizes), torch.Generator().manual_seed(0)
    decoder = IncrementalDecoder(model)
    words = [np.array([2, 2, 1, 1, 1, 1, 1, 1])]
    grammar.update(words[0])
    with torch.inference_mode():
        h = decoder.prefill(np.stack(words))
        while len(words) < 1000:
            word = sample_word(model, h, grammar, wild, generator)
            words.append(word)
            grammar.update(word)
            h = decoder.step(word)
    words = np.stack(words)
    midi = tokenizer.decode(words)
    midi.dump(str(tmp_path / "wild.mid"))
    notes = miditoolkit.MidiFile(str(tmp_path / "wild.mid")).instruments[0].notes
    assert len(notes) == int(np.sum(words[:, 0] == 3)), "every sampled note word must decode to a note"
    onsets = [n.start for n in tokenizer.decode(words).instruments[0].notes]
    assert onsets == sorted(onsets)
    assert all(21 <= n.pitch <= 108 and n.end > n.start for n in notes)


def test_primer_notes_come_back_unchanged(pop909):
    model, tokenizer = tiny_model()
    primer = pop909 / "001" / "001.mid"
    piece = compose(model, tokenizer, primer=primer, primer_bars=4, bars=3, seed=3)
    expected = tokenizer.decode(primer_words(tokenizer, primer, 4)).instruments[0].notes
    got = [n for n in piece.midi.instruments[0].notes if n.start < piece.primer_end_tick]
    key = lambda n: (n.start, n.pitch, n.end, n.velocity)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, expected))
    assert len(expected) > 10
    assert piece.primer_bars == 4 and piece.bars == 3
    assert count_bars(piece.continuation) == 3
    assert all(n.start >= piece.primer_end_tick for n in piece.midi.instruments[0].notes[len(expected):])


def test_primer_cut_keeps_tempo_and_chord_explicit(pop909):
    tokenizer = CPTokenizer()
    words = primer_words(tokenizer, pop909 / "002" / "002.mid", 2)
    first_position = words[words[:, COL["bar_pos"]] >= 4][0]
    assert first_position[COL["tempo"]] >= 3 and first_position[COL["chord"]] >= 3
    assert count_bars(words) == 2


def test_stops_after_seconds_and_when_cancelled():
    model, tokenizer = tiny_model()
    short = compose(model, tokenizer, bars=64, max_seconds=6.0, seed=1)
    assert short.stopped_early and short.bars < 64
    seen = []
    cancelled = compose(model, tokenizer, bars=16, seed=1, on_bar=lambda done, total: seen.append(done) or done < 3)
    assert cancelled.stopped_early and cancelled.bars == 3 and seen == [1, 2, 3]


def test_generate_command_writes_a_midi_file(tmp_path, pop909):
    model, tokenizer = tiny_model()
    save_checkpoint(model, tokenizer, tmp_path / "step7", step=7)
    out = tmp_path / "out.mid"
    code = cli_main(["generate", "--checkpoint", str(tmp_path / "step7.safetensors"), "--primer",
                     str(pop909 / "005" / "005.mid"), "--bars", "4", "--seed", "2",
                     "--temperature", "pitch=0.8", "--top-p", "duration=0.9", "-o", str(out)])
    assert code == 0
    assert miditoolkit.MidiFile(str(out)).instruments[0].notes
    with pytest.raises(SystemExit, match="temperature for pitch"):
        cli_main(["generate", "--checkpoint", str(tmp_path / "step7"), "--temperature", "pitch=-1",
                  "-o", str(out)])


def test_sampling_config_validates_and_round_trips():
    assert SamplingConfig.from_json(DEFAULT_SAMPLING.to_json()) == DEFAULT_SAMPLING
    with pytest.raises(ValueError, match="top-p for chord"):
        DEFAULT_SAMPLING.with_overrides(top_p={"chord": 0.0})
    with pytest.raises(ValueError, match="unknown field"):
        DEFAULT_SAMPLING.with_overrides(temperature={"loudness": 1.0})


def test_primer_keeps_the_last_bars_of_time_not_leading_silence():
    tokenizer = CPTokenizer()
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    piano = miditoolkit.Instrument(program=0)
    bar = 4 * 480
    for b in (40, 41, 55, 56, 57):  # notes in bars 40-41, 13 empty bars, then bars 55-57
        piano.notes.append(miditoolkit.Note(velocity=80, pitch=60, start=b * bar, end=b * bar + 480))
    midi.instruments.append(piano)
    assert count_bars(primer_words(tokenizer, midi, 2)) == 2
    assert count_bars(primer_words(tokenizer, midi, 8)) == 3, "a rest longer than what is left is not taken"
    assert count_bars(primer_words(tokenizer, midi, 100)) == 18, "leading silence before bar 40 is dropped"
