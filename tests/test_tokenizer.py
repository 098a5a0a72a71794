"""CPTokenizer: its config, its token names, the errors it raises on bad input, and
generic (non-POP909) MIDI files built here with miditoolkit."""

from __future__ import annotations

import io
import re
import struct

import miditoolkit
import numpy as np
import pytest

from cwcompose.midi_input import score_from_pop909
from cwcompose.tokenizer import (FAMILY_END, FIELDS, CPTokenizer, MidiReadError, TokenizerConfig,
                                 quantise_tempo)

TPB = 480


def midi_file(notes, tempi=((0, 120.0),), time_signature=(4, 4), ticks_per_beat=TPB,
              is_drum=False) -> miditoolkit.MidiFile:
    """One track of (start_tick, pitch, length_ticks) notes; tempi are (tick, bpm) pairs."""
    midi = miditoolkit.MidiFile(ticks_per_beat=ticks_per_beat)
    track = miditoolkit.Instrument(program=0, is_drum=is_drum)
    track.notes = [miditoolkit.Note(velocity=80, pitch=p, start=s, end=s + n) for s, p, n in notes]
    midi.instruments.append(track)
    midi.tempo_changes = [miditoolkit.TempoChange(bpm, tick) for tick, bpm in tempi]
    midi.time_signature_changes = [miditoolkit.TimeSignature(*time_signature, 0)]
    return midi


def midi_bytes(midi: miditoolkit.MidiFile) -> bytes:
    """A MidiFile as the bytes of a standard MIDI file, as a user would upload it."""
    buffer = io.BytesIO()
    midi.dump(file=buffer)
    return buffer.getvalue()


def onsets_in_beats(midi: miditoolkit.MidiFile) -> list[tuple[float, int]]:
    """(onset in beats, pitch) of every note of every track, sorted."""
    return sorted((n.start / midi.ticks_per_beat, n.pitch) for i in midi.instruments for n in i.notes)


@pytest.fixture(scope="module")
def tokenizer() -> CPTokenizer:
    return CPTokenizer()


# ---------------------------------------------------------------- config


def test_config_round_trips_through_json_and_files(tmp_path):
    config = TokenizerConfig(pitch_min=24, pitch_max=96, n_velocity=32, tempo_max_bpm=200.0,
                             chord_qualities=("maj", "min", "7"))
    assert TokenizerConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "tokenizer.json")
    loaded = TokenizerConfig.load(tmp_path / "tokenizer.json")
    assert loaded == config
    assert CPTokenizer(loaded).vocab == CPTokenizer(config).vocab
    assert CPTokenizer(loaded).vocab_sizes["pitch"] == 2 + 96 - 24 + 1


@pytest.mark.parametrize("overrides, failed_check", [
    ({"pitch_min": 90, "pitch_max": 80}, "pitch_min <= pitch_max"),
    ({"pitch_max": 128}, "pitch_max <= 127"),
    ({"n_tempo": 1}, "n_tempo"),
    ({"tempo_min_bpm": 300.0}, "tempo_min_bpm < tempo_max_bpm"),
    ({"n_velocity": 0}, "n_velocity"),
    ({"fine_duration_beats": 12}, "fine_duration_beats < coarse_duration_beats"),
    ({"coarse_steps_per_beat": 3}, "coarse_steps_per_beat divides"),
    ({"chord_qualities": ("maj", "power")}, "chord_qualities"),
    ({"ticks_per_beat": 100}, "ticks_per_beat"),
])
def test_invalid_config_raises_naming_the_check(overrides, failed_check):
    with pytest.raises(ValueError, match=re.escape(failed_check)):
        TokenizerConfig(**overrides)
    with pytest.raises(ValueError, match=re.escape(failed_check)):
        TokenizerConfig.from_dict({**TokenizerConfig().to_dict(), **overrides})


def test_unknown_json_key_raises():
    with pytest.raises(ValueError, match="pitch_mx"):
        TokenizerConfig.from_json('{"pitch_min": 21, "pitch_mx": 108}')


# ---------------------------------------------------------------- token names


@pytest.mark.parametrize("config", [TokenizerConfig(), TokenizerConfig(positions_per_beat=4, n_velocity=32)],
                         ids=["default", "coarse"])
def test_every_token_name_maps_back_to_its_id(config):
    tokenizer = CPTokenizer(config)
    for field in FIELDS:
        names = [tokenizer.token_name(field, i) for i in range(tokenizer.vocab_sizes[field])]
        assert [tokenizer.token_id(field, name) for name in names] == list(range(len(names)))
    with pytest.raises(KeyError, match="Pitch_20"):
        tokenizer.token_id("pitch", "Pitch_20")


def test_words_read_as_text_on_a_pop909_song(pop909, tokenizer):
    words = tokenizer.encode_score(score_from_pop909(pop909 / "001", tokenizer.config))
    lines = tokenizer.words_to_str(words).splitlines()
    assert len(lines) == len(words)
    assert lines[0] == "Metric Bar" and lines[-1] == "End"
    notes = [line for line in lines if line.startswith("Note")]
    assert notes and all(re.fullmatch(r"Note Pitch_\d+ Dur_[\d.]+b Vel_\d+", line) for line in notes)
    positions = [line for line in lines if line.startswith("Metric Pos_")]
    assert re.fullmatch(r"Metric Pos_\d+ Tempo_[\d.]+ (N|[A-G]#?:\w+)", positions[0])
    decoded = tokenizer.decode(words).instruments[0].notes
    assert sorted(int(re.search(r"Pitch_(\d+)", line)[1]) for line in notes) == sorted(n.pitch for n in decoded)


# ---------------------------------------------------------------- bad input


def wav_bytes(seconds: float = 0.1, rate: int = 8000) -> bytes:
    """A mono 16-bit PCM WAV file of a 440 Hz tone."""
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


def smpte(data: bytes) -> bytes:
    """The same MIDI file with its division set to SMPTE (-25 frames/s, 40 ticks/frame)."""
    return data[:12] + bytes([0x100 - 25, 40]) + data[14:]


BAD_INPUTS = {
    "empty": (lambda song: b"", "empty"),
    "random bytes": (lambda song: np.random.default_rng(0).bytes(2000), "not a MIDI file"),
    "truncated in header": (lambda song: song[:9], "header is truncated"),
    "truncated in first track": (lambda song: song[:30], "truncated"),
    "truncated in the middle": (lambda song: song[:len(song) // 2], "truncated"),
    "truncated by one byte": (lambda song: song[:-1], "truncated"),
    "wav renamed .mid": (lambda song: wav_bytes(), "WAV"),
    "smpte division": (smpte, "SMPTE"),
    "no notes": (lambda song: midi_bytes(midi_file([])), "no notes"),
    "only drums": (lambda song: midi_bytes(midi_file([(0, 36, 240), (480, 38, 240)], is_drum=True)), "drum"),
    "outside piano range": (lambda song: midi_bytes(midi_file([(0, 12, 480), (480, 120, 480)])), "piano range"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_file_raises_midi_read_error_saying_why(case, pop909, tokenizer, tmp_path):
    make, reason = BAD_INPUTS[case]
    path = tmp_path / "upload.mid"
    path.write_bytes(make((pop909 / "001" / "001.mid").read_bytes()))
    with pytest.raises(MidiReadError, match=reason) as raised:
        tokenizer.encode(path)
    assert isinstance(raised.value, ValueError)
    with pytest.raises(MidiReadError, match=reason):
        tokenizer.encode(path.read_bytes())


def test_missing_file_raises_midi_read_error(tokenizer, tmp_path):
    with pytest.raises(MidiReadError, match="cannot read missing.mid"):
        tokenizer.encode(tmp_path / "missing.mid")


# ---------------------------------------------------------------- generic MIDI


def test_three_four_file_keeps_onsets_and_recuts_bars_every_four_beats(tokenizer):
    beats = [0, 1, 2, 3, 5, 7.5, 9.25, 13]  # 3/4 bars begin at 0, 3, 6, 9, 12
    source = midi_file([(int(b * 384), 60 + i, 384) for i, b in enumerate(beats)],
                       time_signature=(3, 4), ticks_per_beat=384)
    words = tokenizer.encode(midi_bytes(source))
    decoded = tokenizer.decode(words)
    assert onsets_in_beats(decoded) == [(b, 60 + i) for i, b in enumerate(beats)]
    bar_words = [tokenizer.word_to_str(w) for w in words].count("Metric Bar")
    assert bar_words == 4  # 4-beat bars starting at beats 0, 4, 8 and 12
    assert decoded.time_signature_changes[0].numerator == 4


def test_many_tempo_changes_are_kept_within_one_class(tokenizer):
    tempi = [(i * TPB, 55.0 + 13.7 * i) for i in range(12)]
    source = midi_file([(i * TPB, 60 + i, TPB) for i in range(12)], tempi=tempi)
    decoded = tokenizer.decode(tokenizer.encode(midi_bytes(source)))
    assert onsets_in_beats(decoded) == onsets_in_beats(source)
    decoded_tempi = sorted((t.time, t.tempo) for t in decoded.tempo_changes)
    assert len(decoded_tempi) == len(tempi)
    for (tick, bpm), (decoded_tick, decoded_bpm) in zip(tempi, decoded_tempi):
        assert decoded_tick == tick
        cfg = tokenizer.config
        assert abs(quantise_tempo(bpm, cfg) - quantise_tempo(decoded_bpm, cfg)) <= 1


def test_tracks_merge_into_one_piano_and_drums_are_dropped(tokenizer):
    source = midi_file([(0, 72, TPB), (TPB, 74, TPB), (2 * TPB, 76, TPB)])
    bass = miditoolkit.Instrument(program=33, name="Bass")
    bass.notes = [miditoolkit.Note(80, 40, t, t + 2 * TPB) for t in (0, 2 * TPB)]
    drums = miditoolkit.Instrument(program=0, is_drum=True, name="Drums")
    drums.notes = [miditoolkit.Note(100, pitch, t, t + 60) for t in range(0, 4 * TPB, TPB) for pitch in (36, 42)]
    source.instruments += [bass, drums]
    decoded = tokenizer.decode(tokenizer.encode(midi_bytes(source)))
    assert len(decoded.instruments) == 1 and not decoded.instruments[0].is_drum
    assert onsets_in_beats(decoded) == [(0.0, 40), (0.0, 72), (1.0, 74), (2.0, 40), (2.0, 76)]


def test_end_word_closes_the_sequence(pop909, tokenizer):
    words = tokenizer.encode(pop909 / "002" / "002.mid")
    families = words[:, FIELDS.index("family")]
    assert families[-1] == FAMILY_END and np.sum(families == FAMILY_END) == 1
    assert np.array_equal(tokenizer.encode(pop909 / "002" / "002.mid", end=False), words[:-1])
    extra_notes = np.repeat(words[2:3], 50, axis=0)  # words after End must be ignored
    assert words[2, 0] != FAMILY_END
    longer = tokenizer.decode(np.concatenate([words, words[:5], extra_notes]))
    assert onsets_in_beats(longer) == onsets_in_beats(tokenizer.decode(words))


def test_decode_never_raises_on_random_words(tokenizer):
    rng = np.random.default_rng(7)
    sizes = np.array([tokenizer.vocab_sizes[f] for f in FIELDS])
    notes_seen = 0
    for _ in range(200):
        words = rng.integers(0, sizes, size=(int(rng.integers(0, 300)), len(FIELDS)))
        midi = tokenizer.decode(words)
        notes_seen += len(midi.instruments[0].notes)
        assert miditoolkit.MidiFile(file=io.BytesIO(midi_bytes(midi))).ticks_per_beat == TPB
    assert notes_seen > 0  # the random words did reach the note-building code
