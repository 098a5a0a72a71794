"""Rendering through FluidSynth, soundfont resolution, and the piano-roll figure."""

from __future__ import annotations

import threading

import matplotlib.colors
import miditoolkit
import numpy as np
import pytest

from cwcompose.pianoroll import note_name, piano_roll
from cwcompose.render import (SOUNDFONT_ENV, RenderConfig, Renderer, RenderError, find_soundfont, note_events,
                              pretty_midi_soundfont, ticks_to_seconds, to_pcm16)

SR = 44100


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def first_seconds(path, seconds: float) -> miditoolkit.MidiFile:
    """A POP909 song cut to the notes that end within its first ``seconds`` seconds."""
    midi = miditoolkit.MidiFile(str(path))
    tick_seconds = midi.get_tick_to_time_mapping()
    for inst in midi.instruments:
        inst.notes = [n for n in inst.notes if tick_seconds[min(n.end, len(tick_seconds) - 1)] <= seconds]
    return midi


def one_note(pitch: int, start_beat: float, beats: float, bpm: float = 120.0) -> miditoolkit.MidiFile:
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    piano = miditoolkit.Instrument(program=0, name="Piano")
    piano.notes.append(miditoolkit.Note(velocity=100, pitch=pitch, start=int(start_beat * 480),
                                        end=int((start_beat + beats) * 480)))
    midi.instruments.append(piano)
    midi.tempo_changes = [miditoolkit.TempoChange(bpm, 0)]
    return midi


def test_thirty_seconds_of_pop909_render_to_thirty_seconds_of_sound(renderer, pop909):
    midi = first_seconds(pop909 / "001" / "001.mid", 30.0)
    last_end = max(n.end for inst in midi.instruments for n in inst.notes)
    expected = midi.get_tick_to_time_mapping()[last_end] + renderer.config.release_seconds
    audio = renderer.render(midi)
    assert renderer.sample_rate == SR and audio.dtype == np.float32 and audio.shape[1] == 2
    assert 29.0 < expected <= 31.0
    assert abs(audio.shape[0] / SR - expected) < 0.01
    loudness = [np.sqrt(np.mean(chunk ** 2)) for chunk in np.array_split(audio[: 28 * SR], 7)]
    assert min(loudness) > 1e-3, f"every 4 s of the song should sound, got RMS {loudness}"
    assert np.abs(audio).max() < 1.0


def test_a4_sounds_at_440_hz_and_starts_on_time(renderer):
    audio = renderer.render(one_note(69, start_beat=2, beats=2))  # 120 BPM: 1.0 s to 2.0 s
    mono = audio.mean(axis=1)
    assert np.abs(mono[: int(0.99 * SR)]).max() < 1e-4, "nothing may sound before the onset"
    tone = mono[int(1.1 * SR): int(1.9 * SR)]
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(len(tone))))
    assert abs(np.fft.rfftfreq(len(tone), 1 / SR)[np.argmax(spectrum)] - 440.0) < 3.0


def test_midi_bytes_render_like_the_midi_file(renderer, pop909):
    path = pop909 / "002" / "002.mid"
    from_bytes = renderer.render(path.read_bytes())
    assert from_bytes.shape == renderer.render(miditoolkit.MidiFile(str(path))).shape


def test_tempo_map_converts_ticks_to_seconds():
    midi = one_note(60, 0, 1)
    midi.tempo_changes = [miditoolkit.TempoChange(120.0, 0), miditoolkit.TempoChange(60.0, 4 * 480)]
    seconds = ticks_to_seconds(np.array([0, 480, 4 * 480, 6 * 480]), midi)
    np.testing.assert_allclose(seconds, [0.0, 0.5, 2.0, 4.0])


def test_a_repeated_key_cuts_the_held_note_instead_of_losing_the_new_one():
    midi = one_note(60, 0, 4)
    midi.instruments[0].notes.append(miditoolkit.Note(velocity=90, pitch=60, start=480, end=960))
    events = note_events(midi, SR)  # 120 BPM: C4 0..2 s, again 0.5..1 s
    assert events.sample.tolist() == [0, SR // 2, SR // 2, SR]
    assert events.velocity.tolist() == [100, 0, 90, 0], "the first C4 stops where the second starts"


def test_two_requests_at_once_share_one_synth(pop909):
    shared = Renderer(config=RenderConfig(max_synths=1))
    midi = first_seconds(pop909 / "003" / "003.mid", 10.0)
    results = [None, None]

    def work(i):
        results[i] = shared.render(midi)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].shape == results[1].shape and np.abs(results[0]).max() > 0.01
    assert shared.synths_loaded == 1, "the pool never holds more synths than max_synths"


def test_soundfont_env_variable_wins(tmp_path):
    bundled = pretty_midi_soundfont()
    assert bundled is not None
    (tmp_path / "project.sf2").symlink_to(bundled)
    chosen = find_soundfont({SOUNDFONT_ENV: str(bundled)}, project_dir=tmp_path / "none")
    assert chosen.path == bundled and SOUNDFONT_ENV in chosen.reason
    assert find_soundfont({}, project_dir=tmp_path).path == tmp_path / "project.sf2"
    audio = Renderer(chosen).render(one_note(60, 0, 1))
    assert np.abs(audio).max() > 0.01


def test_missing_soundfont_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.sf2"
    with pytest.raises(RenderError, match=f"{SOUNDFONT_ENV}=.*nope.sf2 does not exist"):
        find_soundfont({SOUNDFONT_ENV: str(missing)})
    with pytest.raises(RenderError, match="does not exist"):
        Renderer(missing)


def test_pcm16_is_peak_normalised():
    audio = np.array([[0.1, -0.2], [0.05, 0.0]], dtype=np.float32)
    pcm = to_pcm16(audio, peak=0.5)
    assert pcm.dtype == np.int16 and np.abs(pcm).max() == round(0.5 * 32767)
    assert not to_pcm16(np.zeros((4, 2), np.float32)).any()


def test_piano_roll_draws_every_note_in_primer_and_continuation_colours(pop909):
    midi = first_seconds(pop909 / "001" / "001.mid", 20.0)
    notes = [n for inst in midi.instruments for n in inst.notes]
    primer_end = 4 * 4 * 480
    fig = piano_roll(midi, primer_end_tick=primer_end)
    ax = fig.axes[0]
    collections = {c.get_label(): c for c in ax.collections if c.get_label() in ("Primer", "Continuation")}
    assert len(collections["Primer"].get_paths()) == sum(n.start < primer_end for n in notes)
    assert len(collections["Continuation"].get_paths()) == sum(n.start >= primer_end for n in notes)
    hues = {name: matplotlib.colors.rgb_to_hsv(c.get_facecolors()[:, :3]).mean(axis=0)[0]
            for name, c in collections.items()}
    assert abs(hues["Primer"] - hues["Continuation"]) > 0.2, "primer and continuation need different colours"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("Primer") for t in legend) and any(t.startswith("Continuation") for t in legend)
    assert ax.get_xlabel() == "time (bars)" and "C4" in [t.get_text() for t in ax.get_yticklabels()]


def test_piano_roll_without_primer_has_one_colour():
    fig = piano_roll(one_note(60, 0, 4), primer_end_tick=0)
    labels = [c.get_label() for c in fig.axes[0].collections if c.get_label() in ("Primer", "Continuation")]
    assert labels == ["Continuation"]
    assert fig.axes[0].get_xlim() == (0.0, 1.0)


def test_note_names():
    assert [note_name(p) for p in (21, 60, 61, 108)] == ["A0", "C4", "C#4", "C8"]
