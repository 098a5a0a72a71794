"""Compound-word (CP) tokenizer: piano MIDI <-> an array of words x fields.

A song becomes a sequence of *words*; each word is one integer per field:

==========  ==========================================================
family      Metric (a bar line, rest or onset position), Note, End
bar_pos     Bar, Rest, or Pos_0..Pos_31 (1/8 beat steps in a 4-beat bar)
tempo       32 log-spaced BPM classes, or Conti (no change)
chord       root x quality, N (no chord), or Conti (no change)
rest        Rest_1..Rest_10: whole empty bars jumped over
pitch       MIDI 21..108 (the 88 piano keys)
duration    64 classes: 1/8 beat steps to 4 beats, 1/4 beat steps to 12
velocity    64 classes (bins of 2 MIDI velocity units)
==========  ==========================================================

Every field starts with ``Pad`` (0) and ``Ignore`` (1); a field that does not
apply to a word's family holds ``Ignore``. Bars are always 4 beats long: a
file in 3/4 or 6/8 is re-cut every 4 beats, which keeps every onset's timing
but not its bar lines. Tracks are merged into one piano part, drums dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import miditoolkit
import numpy as np

from cwcompose.midi_file import MidiReadError, read_midi  # noqa: F401 (re-exported: the one MIDI reader)
from cwcompose.midi_input import score_from_midi
from cwcompose.words import (  # noqa: F401 (the word layout, re-exported)
    BAR, CHORD0, CHORD_NONE, COL, CONTI, FAMILY_END, FAMILY_METRIC, FAMILY_NOTE, FIELDS, IGNORE, METRIC_FIELDS,
    NOTE_FIELDS, PAD, POS0, REST, TEMPO0, VALUE0, changes, note_table,
)
from cwcompose.vocab import (  # noqa: F401 (re-exported: the representation)
    CHORD_QUALITIES, PITCH_CLASSES, SPECIALS, Score, ScoreNote, TokenizerConfig, build_vocabularies,
    chord_token_of, chord_token_of_label, duration_classes, quantise_durations, quantise_tempo,
    quantise_velocities, tempo_classes_bpm, velocity_class_values,
)


class CPTokenizer:
    """Encode MIDI files to compound words and back.

    >>> tok = CPTokenizer()
    >>> words = tok.encode("song.mid")      # np.ndarray (n_words, 8)
    >>> midi = tok.decode(words)            # miditoolkit.MidiFile
    """

    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config or TokenizerConfig()
        self.vocab = build_vocabularies(self.config)
        self._ids = {field: {name: i for i, name in enumerate(names)} for field, names in self.vocab.items()}

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {field: len(names) for field, names in self.vocab.items()}

    # ------------------------------------------------------------ token names

    def token_name(self, field: str, token: int) -> str:
        return self.vocab[field][int(token)]

    def token_id(self, field: str, name: str) -> int:
        try:
            return self._ids[field][name]
        except KeyError:
            raise KeyError(f"{name!r} is not a token of field {field!r}") from None

    def word_to_str(self, word: Sequence[int]) -> str:
        """A word as readable text, skipping Ignore fields, e.g. ``Note Pitch_60 Dur_1b Vel_81``."""
        parts = [self.token_name(f, t) for f, t in zip(FIELDS, word) if t != IGNORE]
        return " ".join(parts)

    def words_to_str(self, words: np.ndarray) -> str:
        return "\n".join(self.word_to_str(w) for w in words)

    def chord_token(self, label: str) -> int:
        """A chord label (``C:maj``, ``Gb:min7/b3``, ``N``) -> chord token id."""
        return chord_token_of_label(label, self.config)

    # ------------------------------------------------------------ encode

    def encode(self, midi: str | Path | bytes | miditoolkit.MidiFile, *, end: bool = True) -> np.ndarray:
        """A MIDI file (path, bytes or ``MidiFile``) -> words, ``int64`` array of shape (n, 8).

        Raises :class:`MidiReadError` for anything that is not a readable MIDI file with notes.
        """
        return self.encode_score(score_from_midi(read_midi(midi), self.config), end=end)

    def encode_score(self, score: Score, *, end: bool = True) -> np.ndarray:
        """A :class:`Score` on the grid -> words."""
        ppbar = self.config.positions_per_bar
        events: dict[int, list[ScoreNote]] = {}
        for note in score.notes:
            events.setdefault(note.onset, []).append(note)
        positions = sorted(set(events) | set(score.tempo_at) | set(score.chord_at))
        words: list[list[int]] = []
        current_bar, current_tempo, current_chord = -1, None, None
        for onset in positions:
            bar, pos = divmod(onset, ppbar)
            if bar != current_bar:
                self._append_bar_words(words, bar - current_bar - 1)
                current_bar = bar
            tempo = score.tempo_at.get(onset, current_tempo)
            chord = score.chord_at.get(onset, current_chord)
            words.append(self._metric_word(
                POS0 + pos,
                tempo=CONTI if tempo == current_tempo else TEMPO0 + tempo,
                chord=CONTI if chord == current_chord or chord is None else chord,
            ))
            current_tempo, current_chord = tempo, chord
            for note in sorted(events.get(onset, []), key=lambda n: (n.pitch, n.duration_class, n.velocity_class)):
                words.append(self._note_word(note))
        if end:
            words.append([FAMILY_END] + [IGNORE] * (len(FIELDS) - 1))
        return np.asarray(words, dtype=np.int64).reshape(-1, len(FIELDS))

    def _append_bar_words(self, words: list[list[int]], empty_bars: int) -> None:
        while empty_bars > 0:
            jump = min(empty_bars, self.config.max_rest_bars)
            words.append(self._metric_word(REST, rest=VALUE0 + jump - 1))
            empty_bars -= jump
        words.append(self._metric_word(BAR))

    @staticmethod
    def _metric_word(bar_pos: int, tempo: int = IGNORE, chord: int = IGNORE, rest: int = IGNORE) -> list[int]:
        return [FAMILY_METRIC, bar_pos, tempo, chord, rest, IGNORE, IGNORE, IGNORE]

    def _note_word(self, note: ScoreNote) -> list[int]:
        pitch = VALUE0 + note.pitch - self.config.pitch_min
        return [FAMILY_NOTE, IGNORE, IGNORE, IGNORE, IGNORE, pitch,
                VALUE0 + note.duration_class, VALUE0 + note.velocity_class]

    # ------------------------------------------------------------ decode

    def decode_score(self, words: np.ndarray) -> Score:
        """Words -> :class:`Score` (read by :func:`cwcompose.words.read_words`). Words that
        break the grammar are skipped, never fatal."""
        table = note_table(words, self.config)
        tempo_at, chord_at = changes(words, self.config)
        notes = [ScoreNote(onset=o, pitch=p, duration_class=d, velocity_class=v) for o, p, d, v in zip(
            table.onset.tolist(), table.pitch.tolist(), table.duration_class.tolist(), table.velocity_class.tolist())]
        return Score(notes=notes, tempo_at=tempo_at, chord_at=chord_at)

    def decode(self, words: np.ndarray) -> miditoolkit.MidiFile:
        """Words -> a one-track piano ``MidiFile`` at ``config.ticks_per_beat``, chords as markers."""
        return self.score_to_midi(self.decode_score(words))

    def score_to_midi(self, score: Score) -> miditoolkit.MidiFile:
        cfg = self.config
        tpp = cfg.ticks_per_beat // cfg.positions_per_beat  # ticks per position
        midi = miditoolkit.MidiFile(ticks_per_beat=cfg.ticks_per_beat)
        piano = miditoolkit.Instrument(program=0, is_drum=False, name="Piano")
        durations = duration_classes(cfg)
        velocities = velocity_class_values(cfg)
        for n in score.notes:
            start = n.onset * tpp
            piano.notes.append(miditoolkit.Note(
                velocity=int(velocities[n.velocity_class]), pitch=n.pitch,
                start=start, end=start + int(durations[n.duration_class]) * tpp))
        midi.instruments.append(piano)
        bpm = tempo_classes_bpm(cfg)
        tempi = sorted(score.tempo_at.items()) or [(0, quantise_tempo(120.0, cfg))]
        midi.tempo_changes = [miditoolkit.TempoChange(float(bpm[t]), 0 if i == 0 else onset * tpp)
                              for i, (onset, t) in enumerate(tempi)]
        midi.time_signature_changes = [miditoolkit.TimeSignature(cfg.beats_per_bar, 4, 0)]
        midi.markers = [miditoolkit.Marker(f"Chord_{self.vocab['chord'][c]}", onset * tpp)
                        for onset, c in sorted(score.chord_at.items())]
        events = [n.end for n in piano.notes] + [t.time for t in midi.tempo_changes] + [m.time for m in midi.markers]
        midi.max_tick = max(events, default=0)
        return midi
