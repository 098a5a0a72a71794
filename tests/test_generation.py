"""Generation: determinism, primers, stopping, the CLI (the engine itself: test_engine.py)."""

from __future__ import annotations

import miditoolkit
import numpy as np
import pytest

from cwcompose.checkpoints import save_checkpoint
from cwcompose.cli import main as cli_main
from cwcompose.generation import COL, compose, count_bars, primer_words
from cwcompose.sampling import DEFAULT_SAMPLING, SamplingConfig
from cwcompose.tokenizer import CPTokenizer
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def song_words(pop909) -> np.ndarray:
    return CPTokenizer().encode(pop909 / "003" / "003.mid")


def test_same_seed_same_words_other_seed_other_words():
    model, tokenizer = tiny_model()
    a = compose(model, tokenizer, bars=4, seed=11)
    b = compose(model, tokenizer, bars=4, seed=11)
    c = compose(model, tokenizer, bars=4, seed=12)
    assert np.array_equal(a.words, b.words)
    assert not np.array_equal(a.words, c.words)


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


def test_generate_variations_and_from_bar_write_identical_files_for_the_same_seed(tmp_path, pop909):
    model, tokenizer = tiny_model()
    save_checkpoint(model, tokenizer, tmp_path / "step7", step=7)
    args = ["generate", "--checkpoint", str(tmp_path / "step7"), "--primer", str(pop909 / "005" / "005.mid"),
            "--from-bar", "6", "--primer-bars", "4", "--bars", "2", "--variations", "3", "--seed", "2"]
    assert cli_main(args + ["-o", str(tmp_path / "a.mid")]) == 0
    assert cli_main(args + ["-o", str(tmp_path / "b.mid")]) == 0
    for i in (1, 2, 3):
        assert (tmp_path / f"a-{i}.mid").read_bytes() == (tmp_path / f"b-{i}.mid").read_bytes()
    assert (tmp_path / "a-1.mid").read_bytes() != (tmp_path / "a-2.mid").read_bytes()
