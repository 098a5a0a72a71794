"""Do the locks hold, and what do they do to the music? (cwcompose.locks)

    OMP_NUM_THREADS=1 .venv/bin/python bench/locks.py [--checkpoint 28500] [--data data/pop909]
                                                     [--pieces 6] [--bars 8]

Continues the first 8 bars of ``--pieces`` POP909 test-split songs (seed i for song i) by
``--bars`` bars, unlocked and under each lock, and prints:

- chords: a I V [vi iii] IV progression in each primer's key (vi-iii share bar 3),
  i VI [III VII] iv in a minor key; the share of generated notes that are chord tones of
  the chord requested at their onset, locked vs the same pieces unlocked, and the share
  of generated bars whose first position word carries the requested chord;
- key: the out-of-key share of generated notes against the primer's key (estimated,
  "from primer") at strength 0 (= unlocked), 0.5 and 1;
- tempo: the share of generated notes sounding at the locked tempo class;
- density: notes per generated bar against a few targets.

Exits 1 when the locked chord-tone share is not above the unlocked one, when strength 1
leaves any out-of-key note, or when a bar's first position word misses its chord.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cwcompose.checkpoints import load_checkpoint
from cwcompose.data import TokenDataset
from cwcompose.generation import compose
from cwcompose.locks import Locks, forced_chord_words, parse_progression, progression_chord
from cwcompose.metrics import estimate_key, grid_notes_from_words, make_grid_notes, out_of_key_ratio
from cwcompose.tokenizer import BAR, COL, FAMILY_METRIC, PITCH_CLASSES, quantise_tempo, tempo_classes_bpm

PRIMER_BARS = 8
TEMPO_BPM = 150.0  # far from most POP909 songs, so that holding it is the lock's doing
DENSITY_TARGETS = (6.0, 12.0, 24.0)


def key_progression(key: tuple[int, str]) -> str:
    """I V [vi iii] IV in a major key, i VI [III VII] iv in a minor key, as chord names."""
    tonic, mode = key
    name = lambda steps, minor: PITCH_CLASSES[(tonic + steps) % 12] + ("m" if minor else "")  # noqa: E731
    if mode == "major":
        return f"{name(0, 0)} {name(7, 0)} [{name(9, 1)} {name(4, 1)}] {name(5, 0)}"
    return f"{name(0, 1)} {name(8, 0)} [{name(3, 0)} {name(10, 0)}] {name(5, 1)}"


def primers(data: Path, pieces: int) -> list[np.ndarray]:
    """The first PRIMER_BARS bars of ``pieces`` test songs spread over the split."""
    songs = TokenDataset.load(data, "test").songs
    chosen = []
    for i in np.linspace(0, len(songs) - 1, pieces).astype(int):
        song = songs[i]
        bars = np.flatnonzero((song[:, COL["family"]] == FAMILY_METRIC) & (song[:, COL["bar_pos"]] == BAR))
        chosen.append(song[bars[0]:bars[PRIMER_BARS]] if len(bars) > PRIMER_BARS else song)
    return chosen


def compose_piece(model, tokenizer, primer: np.ndarray, seed: int, constraints: list, bars: int):
    """(words, number of primer bars) of one continuation."""
    piece = compose(model, tokenizer, primer=primer, primer_bars=PRIMER_BARS, bars=bars, seed=seed,
                    constraints=constraints)
    return piece.words, piece.primer_bars


def generated_notes(words: np.ndarray, primer_bars: int, tokenizer):
    """GridNotes of the generated bars, bar 0 = the first generated bar."""
    notes = grid_notes_from_words(words, tokenizer.config)
    keep = notes.bar >= primer_bars
    shift = primer_bars * notes.positions_per_bar
    return notes.onset[keep] - shift, notes.pitch[keep]


def chord_tone_share(onsets: np.ndarray, pitches: np.ndarray, progression, positions_per_bar: int) -> tuple[int, int]:
    """(chord tones, notes) of generated notes against the chord requested at each onset."""
    tones = total = 0
    for onset, pitch in zip(onsets, pitches):
        chord = progression_chord(progression, onset // positions_per_bar, onset % positions_per_bar,
                                  positions_per_bar)
        if chord.root is not None:
            total += 1
            tones += int(pitch % 12 in chord.pitch_classes)
    return tones, total


def tempo_share(words: np.ndarray, primer_bars: int, tokenizer, tempo_class: int) -> float:
    """Share of generated notes whose tempo in effect is ``tempo_class``."""
    score = tokenizer.decode_score(words)
    changes = sorted(score.tempo_at.items())
    start = primer_bars * tokenizer.config.positions_per_bar
    onsets = [n.onset for n in score.notes if n.onset >= start]
    at = [next((t for o, t in reversed(changes) if o <= onset), -1) for onset in onsets]
    return float(np.mean(np.array(at) == tempo_class)) if at else float("nan")


def measure_piece(model, tokenizer, primer: np.ndarray, seed: int, bars: int) -> dict:
    """One primer continued unlocked and under each lock -> the raw figures of each lock."""
    cfg, ppbar = tokenizer.config, tokenizer.config.positions_per_bar
    key = estimate_key(grid_notes_from_words(primer, cfg))
    progression_text = key_progression(key)
    progression = parse_progression(progression_text)

    def run(locks: Locks):
        words, primer_bars = compose_piece(model, tokenizer, primer, seed, locks.processors(tokenizer, primer), bars)
        return words, generated_notes(words, primer_bars, tokenizer), primer_bars

    free_words, free, primer_bars = run(Locks())
    chord_words, locked, _ = run(Locks(chords=progression_text))
    forced = forced_chord_words(chord_words, primer_bars, progression, tokenizer)
    tempo_class = quantise_tempo(TEMPO_BPM, cfg)
    tempo_words, _, _ = run(Locks(tempo_bpm=TEMPO_BPM))
    return {
        "key": key, "progression": progression_text,
        "chord_tones": (chord_tone_share(*locked, progression, ppbar), chord_tone_share(*free, progression, ppbar)),
        "forced": (sum(written == asked for _, _, written, asked in forced), len(forced)),
        "out_of_key": [out_of_key_ratio(_grid(free, ppbar), key)] + [
            out_of_key_ratio(_grid(run(Locks(key="from primer", key_strength=s))[1], ppbar), key) for s in (0.5, 1.0)],
        "tempo": (tempo_share(tempo_words, primer_bars, tokenizer, tempo_class),
                  tempo_share(free_words, primer_bars, tokenizer, tempo_class)),
        "density": [len(free[0]) / bars] + [len(run(Locks(notes_per_bar=t))[1][0]) / bars for t in DENSITY_TARGETS],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="28500")
    parser.add_argument("--data", type=Path, default=Path("data/pop909"))
    parser.add_argument("--pieces", type=int, default=6)
    parser.add_argument("--bars", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, tokenizer = load_checkpoint(args.checkpoint, device="cpu")
    started, pieces = time.perf_counter(), []
    for i, primer in enumerate(primers(args.data, args.pieces)):
        pieces.append(measure_piece(model, tokenizer, primer, i, args.bars))
        key = pieces[-1]["key"]
        print(f"piece {i}: key {PITCH_CLASSES[key[0]]} {key[1]}, chords {pieces[-1]['progression']} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return report(pieces, args, tokenizer, time.perf_counter() - started)


def report(pieces: list[dict], args, tokenizer, seconds: float) -> int:
    """Print the figures over all pieces; 1 when a lock fails its check."""
    tones = np.array([p["chord_tones"] for p in pieces])  # (pieces, locked/unlocked, tones/notes)
    locked_tones, free_tones = tones[:, 0, 0].sum() / max(tones[:, 0, 1].sum(), 1), \
        tones[:, 1, 0].sum() / max(tones[:, 1, 1].sum(), 1)
    hits, forced = np.sum([p["forced"] for p in pieces], axis=0)
    key = np.array([p["out_of_key"] for p in pieces], float)
    tempo = np.array([p["tempo"] for p in pieces], float)
    density = np.array([p["density"] for p in pieces], float)
    tempo_bpm = tempo_classes_bpm(tokenizer.config)[quantise_tempo(TEMPO_BPM, tokenizer.config)]
    print(f"\n{len(pieces)} pieces x {args.bars} bars after {PRIMER_BARS}-bar POP909 test primers, "
          f"checkpoint {args.checkpoint}, 1 thread, {seconds:.0f} s")
    print(f"chords   chord-tone share of generated notes: locked {locked_tones:.3f}, unlocked {free_tones:.3f}; "
          f"forced position words with the requested chord: {hits}/{forced}")
    print("key      out-of-key share (primer's key): " + ", ".join(
        f"strength {s:g} {np.nanmean(key[:, j]):.3f} (max {np.nanmax(key[:, j]):.3f})"
        for j, s in enumerate((0.0, 0.5, 1.0))))
    print(f"tempo    generated notes at the locked {tempo_bpm:.1f} BPM class ({TEMPO_BPM:g} asked): "
          f"locked {np.nanmean(tempo[:, 0]):.3f}, unlocked {np.nanmean(tempo[:, 1]):.3f}")
    print("density  notes per bar, mean (sd over pieces): unlocked "
          f"{density[:, 0].mean():.1f} ({density[:, 0].std():.1f}); " + "; ".join(
              f"target {t:g} -> {density[:, j + 1].mean():.1f} ({density[:, j + 1].std():.1f})"
              for j, t in enumerate(DENSITY_TARGETS)))
    failures = [message for failed, message in (
        (not locked_tones > free_tones, "the chord lock does not raise the chord-tone share"),
        (np.nanmax(key[:, 2]) > 0, "key strength 1 left out-of-key notes"),
        (hits != forced, "a forced position word misses the requested chord"),
    ) if failed]
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def _grid(notes: tuple[np.ndarray, np.ndarray], positions_per_bar: int):
    onsets, pitches = notes
    return make_grid_notes(onsets, pitches, np.ones_like(onsets), positions_per_bar=positions_per_bar)


if __name__ == "__main__":
    sys.exit(main())
