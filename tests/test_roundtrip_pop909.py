"""decode(encode(song)) equals the song quantised to the grid, for every POP909 song.

The expectation is computed here independently of cwcompose.midi_input: bar 1 comes
from miditoolkit's own tick-to-time map and the beat annotations.
"""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import miditoolkit
import numpy as np

from cwcompose.midi_input import score_from_pop909
from cwcompose.tokenizer import (CPTokenizer, duration_classes, quantise_durations, quantise_tempo,
                                 quantise_velocities, velocity_class_values)


def expected_notes(folder, tokenizer):
    cfg = tokenizer.config
    midi = miditoolkit.MidiFile(str(folder / f"{folder.name}.mid"))
    tick_times = midi.get_tick_to_time_mapping()
    beats = np.loadtxt(folder / "beat_midi.txt", ndmin=2)
    first_downbeat = beats[beats[:, 2] == 1.0, 0][0]
    origin = float(np.round(np.interp(first_downbeat, tick_times, np.arange(len(tick_times)))))
    step = midi.ticks_per_beat / cfg.positions_per_beat
    notes = [n for i in midi.instruments for n in i.notes if cfg.pitch_min <= n.pitch <= cfg.pitch_max]
    first = min(n.start for n in notes)
    if first < origin:
        origin -= math.ceil((origin - first) / (step * cfg.positions_per_bar)) * step * cfg.positions_per_bar
    out_step = cfg.ticks_per_beat // cfg.positions_per_beat
    dur = duration_classes(cfg)[quantise_durations(np.array([(n.end - n.start) / step for n in notes]), cfg)]
    vel = velocity_class_values(cfg)[quantise_velocities(np.array([n.velocity for n in notes]), cfg)]
    onsets = [max(round((n.start - origin) / step), 0) * out_step for n in notes]
    expected = Counter((o, n.pitch, int(d) * out_step, int(v)) for o, n, d, v in zip(onsets, notes, dur, vel))
    return expected, midi, origin, step


def check_song(folder):
    tokenizer = CPTokenizer()
    expected, source, origin, step = expected_notes(folder, tokenizer)
    decoded = tokenizer.decode(tokenizer.encode_score(score_from_pop909(folder, tokenizer.config)))
    got = Counter((n.start, n.pitch, n.end - n.start, n.velocity) for n in decoded.instruments[0].notes)
    # tempo: the decoded class at each onset is within one class of the source tempo there
    source_tempo = sorted((t.time, t.tempo) for t in source.tempo_changes)
    decoded_tempo = sorted((t.time, t.tempo) for t in decoded.tempo_changes)
    out_step = tokenizer.config.ticks_per_beat / tokenizer.config.positions_per_beat
    worst = 0
    for onset in sorted({n.start for n in decoded.instruments[0].notes})[::25]:
        src_tick = origin + onset / out_step * step
        src = [bpm for t, bpm in source_tempo if t <= src_tick + step / 2][-1] if source_tempo else 120.0
        dec = [bpm for t, bpm in decoded_tempo if t <= onset][-1]
        worst = max(worst, abs(quantise_tempo(src, tokenizer.config) - quantise_tempo(dec, tokenizer.config)))
    return folder.name, sum(expected.values()), expected == got, worst


def test_every_pop909_song_round_trips(pop909):
    folders = sorted(p for p in pop909.iterdir() if p.is_dir())
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(check_song, folders, chunksize=16))
    mismatched = [name for name, _, same, _ in results if not same]
    tempo_off = [name for name, _, _, worst in results if worst > 1]
    compared = sum(n for _, n, _, _ in results)
    print(f"\ncompared {compared} notes in {len(results)} songs")
    assert len(results) == 909
    assert compared > 1_400_000
    assert not mismatched, f"songs whose notes changed: {mismatched[:10]}"
    assert not tempo_off, f"songs whose tempo moved by more than one class: {tempo_off[:10]}"
