"""A piano-roll picture of a piece: time in bars across, pitch up, velocity as shade.

Uses ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot state), so it is
safe to call from many request threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import miditoolkit
import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from cwcompose.tokenizer import PITCH_CLASSES


@dataclass(frozen=True)
class RollStyle:
    """Colours and size of the figure."""

    primer_colour: str = "#2b6cb0"  # blue
    continuation_colour: str = "#dd6b20"  # orange
    width_inches: float = 10.0
    height_inches: float = 4.0
    dpi: int = 100
    beats_per_bar: int = 4
    note_height: float = 0.8  # in semitones


def note_name(pitch: int) -> str:
    """MIDI note number -> scientific pitch name, 60 -> ``C4``."""
    return f"{PITCH_CLASSES[pitch % 12]}{pitch // 12 - 1}"


def ticks_to_bars(ticks: np.ndarray, ticks_per_beat: int, beats_per_bar: int = 4) -> np.ndarray:
    """MIDI ticks -> bars (floating point, bar 0 starts at tick 0)."""
    return np.asarray(ticks, dtype=np.float64) / (ticks_per_beat * beats_per_bar)


def velocity_shades(colour: str, velocities: np.ndarray) -> np.ndarray:
    """RGBA colours: ``colour`` blended towards white for soft notes (velocity 1..127)."""
    strength = 0.25 + 0.75 * np.clip(np.asarray(velocities, dtype=np.float64), 1, 127)[:, None] / 127
    rgb = np.asarray(to_rgb(colour))[None, :] * strength + (1.0 - strength)
    return np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1)


def note_rectangles(notes: list[miditoolkit.Note], ticks_per_beat: int, style: RollStyle) -> list[Rectangle]:
    """One rectangle per note: x from onset to offset in bars, centred on its pitch."""
    starts = ticks_to_bars([n.start for n in notes], ticks_per_beat, style.beats_per_bar)
    ends = ticks_to_bars([n.end for n in notes], ticks_per_beat, style.beats_per_bar)
    return [Rectangle((s, n.pitch - style.note_height / 2), e - s, style.note_height)
            for s, e, n in zip(starts, ends, notes)]


def piano_roll(midi: miditoolkit.MidiFile, primer_end_tick: int = 0, title: str | None = None,
               bars: int | None = None, style: RollStyle | None = None) -> Figure:
    """A piano-roll figure of every non-drum note; notes starting before ``primer_end_tick``
    are drawn in the primer colour, the rest in the continuation colour. The time axis spans
    ``bars`` bars (default: up to the last note), so trailing empty bars still show."""
    style = style or RollStyle()
    fig = Figure(figsize=(style.width_inches, style.height_inches), dpi=style.dpi)
    ax = fig.add_subplot()
    notes = sorted((n for inst in midi.instruments if not inst.is_drum for n in inst.notes),
                   key=lambda n: (n.start, n.pitch))
    groups = {"Primer": ([n for n in notes if n.start < primer_end_tick], style.primer_colour),
              "Continuation": ([n for n in notes if n.start >= primer_end_tick], style.continuation_colour)}
    legend = []
    for label, (group, colour) in groups.items():
        if group:
            shades = velocity_shades(colour, np.array([n.velocity for n in group]))
            ax.add_collection(PatchCollection(note_rectangles(group, midi.ticks_per_beat, style),
                                              facecolors=shades, edgecolors="none", label=label))
            legend.append(Patch(facecolor=colour, label=f"{label} ({len(group)} notes)"))
    last_tick = max([n.end for n in notes] + [primer_end_tick, 1])
    n_bars = float(np.ceil(ticks_to_bars(last_tick, midi.ticks_per_beat, style.beats_per_bar)))
    draw_grid(ax, max(n_bars, bars or 0), notes)
    if primer_end_tick > 0 and (groups["Continuation"][0] or bars):
        ax.axvline(ticks_to_bars(primer_end_tick, midi.ticks_per_beat, style.beats_per_bar),
                   color="black", linewidth=1.2, linestyle="--")
    if legend:  # above the axes, right; the title goes left
        ax.legend(handles=legend, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(legend),
                  fontsize="small", frameon=False, borderaxespad=0.1)
    if title:
        ax.set_title(title, loc="left", fontsize="medium")
    fig.tight_layout()
    return fig


def draw_grid(ax, n_bars: float, notes: list[miditoolkit.Note]) -> None:
    """Axes limits, bar lines, and pitch labels at every C (plus the lowest and highest notes)."""
    pitches = [n.pitch for n in notes] or [60]
    low, high = min(pitches) - 2, max(pitches) + 2
    ax.set_xlim(0, max(n_bars, 1.0))
    ax.set_ylim(low, high)
    ax.vlines(np.arange(1, int(n_bars)), low, high, colors="#bbbbbb", linewidths=0.6, zorder=0)
    octaves = [p for p in range(low, high + 1) if p % 12 == 0]
    extremes = [p for p in (min(pitches), max(pitches)) if all(abs(p - c) > 2 for c in octaves)]
    ticks = sorted(set(octaves + extremes))
    ax.set_yticks(ticks, [note_name(p) for p in ticks])
    ax.set_xlabel("time (bars)")
    ax.set_ylabel("pitch")
    ax.grid(axis="y", color="#eeeeee", linewidth=0.6)
    ax.set_axisbelow(True)
