"""From MIDI files to scores on the tokenizer's grid.

Two readers: :func:`score_from_midi` for any MIDI file (bar 1 at tick 0, the file's
own tempo map, chords estimated from the notes), and :func:`score_from_pop909` for a
POP909 song folder (bar 1 on the first annotated downbeat, annotated chords).
"""

from __future__ import annotations

import math
from pathlib import Path

import miditoolkit
import numpy as np

from cwcompose.chords import estimate_chord
from cwcompose.midi_file import MidiReadError, no_piano_notes, read_midi
from cwcompose.vocab import (
    Score, ScoreNote, TokenizerConfig, chord_token_of, chord_token_of_label,
    quantise_durations, quantise_tempo, quantise_velocities,
)


MAX_BARS = 20_000  # about 11 hours at 120 BPM; beyond, the words alone would take gigabytes


def piano_notes(midi: miditoolkit.MidiFile, config: TokenizerConfig) -> list[miditoolkit.Note]:
    """All non-drum notes inside the piano range, merged from every track, sorted by onset."""
    notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes
             if config.pitch_min <= n.pitch <= config.pitch_max]
    if not notes:
        raise MidiReadError(no_piano_notes(midi, config.pitch_min, config.pitch_max))
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def ticks_per_position(midi: miditoolkit.MidiFile, config: TokenizerConfig) -> float:
    return midi.ticks_per_beat / config.positions_per_beat


def score_from_midi(midi: miditoolkit.MidiFile | str | Path, config: TokenizerConfig,
                    origin_tick: float = 0.0,
                    chord_changes: list[tuple[float, str]] | None = None) -> Score:
    """A MIDI file -> :class:`Score`; positions count from ``origin_tick`` (moved back by
    whole bars if notes start before it). ``chord_changes`` are (tick, label) pairs;
    without them chords are estimated every half bar."""
    midi = read_midi(midi)
    notes = piano_notes(midi, config)
    step = ticks_per_position(midi, config)
    bar_ticks = step * config.positions_per_bar
    first = notes[0].start
    if first < origin_tick:
        origin_tick -= math.ceil((origin_tick - first) / bar_ticks) * bar_ticks
    starts = np.array([n.start for n in notes], float)
    onsets = np.maximum(np.round((starts - origin_tick) / step), 0).astype(int)
    span_bars = int(onsets.max()) // config.positions_per_bar + 1
    if span_bars > MAX_BARS:
        raise MidiReadError(f"the MIDI file is too long: its notes span {span_bars} bars, and at most {MAX_BARS} "
                            "bars can be read (a very long silence between notes does this too); trim it to "
                            "the part you want in your editor and upload that")
    lengths = np.array([n.end - n.start for n in notes], float) / step
    score = Score(notes=[
        ScoreNote(int(o), n.pitch, int(d), int(v)) for o, n, d, v in zip(
            onsets, notes, quantise_durations(lengths, config),
            quantise_velocities([n.velocity for n in notes], config))
    ])
    if chord_changes is None:
        score.chord_at = estimate_chords(score, config)
    else:
        score.chord_at = annotated_chords(chord_changes, origin_tick, step, config)
    positions = sorted(set(onsets.tolist()) | set(score.chord_at))
    score.tempo_at = tempo_changes_at(midi, positions, origin_tick, step, config)
    return score


def tempo_changes_at(midi: miditoolkit.MidiFile, positions: list[int], origin_tick: float,
                     step: float, config: TokenizerConfig) -> dict[int, int]:
    """Tempo class in effect at each position, kept only where it changes."""
    changes = sorted(midi.tempo_changes, key=lambda t: t.time) or [miditoolkit.TempoChange(120.0, 0)]
    change_ticks = np.array([t.time for t in changes], float)
    classes = [quantise_tempo(t.tempo, config) for t in changes]
    tempo_at, previous = {}, None
    for pos in positions:
        index = max(int(np.searchsorted(change_ticks, origin_tick + pos * step + step / 2, side="right")) - 1, 0)
        if classes[index] != previous:
            tempo_at[pos] = previous = classes[index]
    return tempo_at


def annotated_chords(chord_changes: list[tuple[float, str]], origin_tick: float, step: float,
                     config: TokenizerConfig) -> dict[int, int]:
    """(tick, label) annotations -> {position: chord token}, only where the chord changes."""
    chord_at, previous = {}, None
    for tick, label in sorted(chord_changes):
        token = chord_token_of_label(label, config)
        pos = max(int(round((tick - origin_tick) / step)), 0)
        if token != previous:
            chord_at[pos] = previous = token
    return chord_at


def estimate_chords(score: Score, config: TokenizerConfig) -> dict[int, int]:
    """Chords estimated from the notes every half bar -> {position: chord token} at changes."""
    window = config.positions_per_bar // 2
    weights: dict[int, np.ndarray] = {}  # only windows with notes: a sparse file must stay cheap
    for n in score.notes:
        weights.setdefault(n.onset // window, np.zeros(12))[n.pitch % 12] += n.duration_class + 1
    chord_at, previous = {}, None
    for w in sorted(weights):
        root, quality = estimate_chord(weights[w], config.chord_qualities)
        if root is None:
            continue
        token = chord_token_of(root, quality, config)
        if token != previous:
            chord_at[w * window] = previous = token
    return chord_at or {0: chord_token_of(None, '', config)}


# ---------------------------------------------------------------- POP909


def seconds_to_ticks(seconds: np.ndarray, midi: miditoolkit.MidiFile) -> np.ndarray:
    """Times in seconds -> ticks, through the file's tempo map (piecewise linear)."""
    changes = sorted(midi.tempo_changes, key=lambda t: t.time) or [miditoolkit.TempoChange(120.0, 0)]
    tpb = midi.ticks_per_beat
    ticks, secs = [0.0], [0.0]
    for prev, cur in zip(changes, changes[1:]):
        ticks.append(cur.time)
        secs.append(secs[-1] + (cur.time - ticks[-2]) * 60.0 / (prev.tempo * tpb))
    seconds = np.asarray(seconds, float)
    index = np.clip(np.searchsorted(secs, seconds, side="right") - 1, 0, len(changes) - 1)
    bpm = np.array([changes[i].tempo for i in index])
    return np.array(ticks)[index] + (seconds - np.array(secs)[index]) * bpm * tpb / 60.0


def is_pop909_song(folder: Path) -> bool:
    return (folder / f"{folder.name}.mid").is_file() and (folder / "beat_midi.txt").is_file()


def score_from_pop909(folder: str | Path, config: TokenizerConfig) -> Score:
    """A POP909 song folder (``NNN/NNN.mid`` + annotations) -> :class:`Score`."""
    folder = Path(folder)
    midi = read_midi(folder / f"{folder.name}.mid")
    beats = np.loadtxt(folder / "beat_midi.txt", ndmin=2)
    downbeats = beats[beats[:, 2] == 1.0, 0]
    first_downbeat = downbeats[0] if len(downbeats) else beats[0, 0]
    origin = float(np.round(seconds_to_ticks(np.array([first_downbeat]), midi)[0]))  # a whole tick
    chord_changes = None
    chord_file = folder / "chord_midi.txt"
    if chord_file.is_file():
        rows = [line.split("\t") for line in chord_file.read_text().splitlines() if line.strip()]
        ticks = seconds_to_ticks(np.array([float(r[0]) for r in rows]), midi)
        chord_changes = [(float(t), r[2].strip()) for t, r in zip(ticks, rows)]
    return score_from_midi(midi, config, origin_tick=origin, chord_changes=chord_changes)
