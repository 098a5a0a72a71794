"""A session's takes: each result with what is needed to hear, download, continue or
rewind it, and the bounded history that Undo and Keep work on (one per browser session)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cwcompose import metrics
from cwcompose.generation import Composition
from cwcompose.locks import Locks
from cwcompose.pianoroll import note_name
from cwcompose.request import ComposeRequest, RequestError


@dataclass
class Take:
    """One result in a session's history: the piece and everything needed to hear, download,
    continue or rewind it."""

    checkpoint: int
    seed: int
    request: ComposeRequest  # the settings and locks it was composed with
    composition: Composition
    midi_path: Path
    audio_path: Path | None  # None: no soundfont, MIDI and roll only
    numbers: dict
    roll: str  # piano-roll HTML
    label: str = ""

    @property
    def bars(self) -> int:
        return self.composition.primer_bars + self.composition.bars

    @property
    def roll_small(self) -> str:
        """A compact roll, for variations side by side."""
        from cwcompose.roll_view import RollNotes, roll_html
        notes = RollNotes.from_midi(self.composition.midi, self.composition.primer_end_tick, bars=self.bars)
        return roll_html(notes, compact=True, px_per_bar=18)

    @property
    def roll_static(self) -> str:
        """The full-size roll without its audio stream (for views with their own players)."""
        from cwcompose.roll_view import RollNotes, roll_html
        notes = RollNotes.from_midi(self.composition.midi, self.composition.primer_end_tick, bars=self.bars)
        return roll_html(notes, title=f"checkpoint {self.checkpoint}, seed {self.seed}")


@dataclass
class History:
    """A session's takes, newest last, at most ``limit`` (the oldest are dropped). One per
    browser session (``gr.State``), so users never share one."""

    takes: list[Take] = dataclasses.field(default_factory=list)
    variations: list[Take] = dataclasses.field(default_factory=list)  # the last click's alternatives
    limit: int = 20
    counter: int = 0

    def add(self, take: Take, variations: list[Take] = ()) -> None:
        self.counter += 1
        take.label = take.label or f"take {self.counter}"
        self.takes.append(take)
        del self.takes[:-self.limit]
        self.variations = list(variations)

    def undo(self) -> Take | None:
        self.variations = []
        return self.takes.pop() if self.takes else None

    def keep(self, index: int) -> Take:
        """Make variation ``index`` (0-based) the current take."""
        if not 0 <= index < len(self.variations):
            raise RequestError(f"there is no variation {index + 1}; this click made {len(self.variations)}")
        take = self.variations[index]
        if self.takes and self.takes[-1] in self.variations:
            self.takes[-1] = take
        else:
            self.takes.append(take)
        return take

    @property
    def current(self) -> Take | None:
        return self.takes[-1] if self.takes else None


def locks_summary(locks: Locks, config=None) -> dict:
    """The locks set, as short texts. The tempo shows the tempo class the piece is held at
    when it is not the value asked (``config``: the checkpoint's TokenizerConfig; default
    the shipped checkpoints' vocabulary)."""
    out = {}
    if locks.chords:
        out["chords"] = locks.chords
    if locks.key:
        out["key"] = f"{locks.key} (strength {locks.key_strength:g})"
    if locks.tempo_bpm:
        held, asked = locks.held_tempo_bpm(config), f"{locks.tempo_bpm:g} BPM"
        out["tempo"] = asked if abs(held - locks.tempo_bpm) < 0.05 else f"{asked} (held at {held:.1f})"
    return out


def numbers_table(numbers: dict) -> list[list[str]]:
    """A result's numbers as two-column rows for a small table."""
    return [[name, str(value)] for name, value in numbers.items()]


def piece_metrics(composition: Composition, config, checkpoint: int) -> dict:
    """Readable numbers about the generated part (not the primer) of a composition."""
    notes = metrics.excerpt(metrics.to_grid_notes(composition.words, config),
                            composition.primer_bars, composition.bars)
    key = metrics.estimate_key(notes)
    low, high = (int(notes.pitch.min()), int(notes.pitch.max())) if len(notes.pitch) else (0, 0)
    span = f"{note_name(low)}-{note_name(high)} ({high - low} semitones)" if len(notes.pitch) else "no notes"
    return {
        "checkpoint": checkpoint,
        "seed": composition.seed,
        "bars generated": composition.bars,
        "notes generated": int(len(notes.pitch)),
        "words generated": int(len(composition.continuation)),
        "note density (notes per bar)": round(metrics.note_density(notes), 2) if composition.bars else 0.0,
        "pitch range": span,
        "key (estimated)": metrics.key_name(key),
        "out-of-key notes (%)": round(100 * metrics.out_of_key_ratio(notes, key), 1) if len(notes.pitch) else 0.0,
        "primer bars": composition.primer_bars,
        "length (seconds)": round(composition.seconds, 1),
        "stopped early": composition.stopped_early,
    }
