"""Tokenizer speed and sequence length on POP909: cwcompose against MidiTok's CPWord.

    .venv/bin/python bench/tokenizer_speed.py [--limit N] [--data PATH]

Encodes every song, one process, with four tokenizers:

- cwcompose, POP909 reader: ``score_from_pop909`` + ``encode_score`` (annotated bars and chords)
- cwcompose, plain MIDI:    ``CPTokenizer.encode(path)`` (bar 1 at tick 0, estimated chords)
- MidiTok CPWord and MidiTok REMI, configured like cwcompose, tracks merged into one
  (cwcompose merges tracks too), reading the file inside the timed loop.

Prints songs/s, words/s (a word is one compound word, or one REMI token) and the ratio
of CP words to REMI tokens. For cwcompose the REMI count is a REMI-style recount of the
same words: 1 per Bar, Rest and Position, +1 per tempo change, +1 per chord change,
3 per note (pitch, duration, velocity), 1 for End. For MidiTok it is MidiTok's own REMI
on the same files. Needs the ``bench`` extra (``pip install -e .[bench]``).
"""

import os
import argparse
import time
from pathlib import Path

import miditok
import numpy as np
import symusic
from miditok.utils import merge_tracks

from cwcompose.midi_input import score_from_pop909
from cwcompose.tokenizer import (CHORD_NONE, FAMILY_NOTE, FIELDS, POS0, TEMPO0,
                                 CPTokenizer)

DATA_ROOT = Path(os.environ.get("CWCOMPOSE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
COL = {field: i for i, field in enumerate(FIELDS)}


def remi_tokens(words: np.ndarray) -> int:
    """REMI-style token count of cwcompose words (see the module docstring)."""
    family, bar_pos = words[:, COL["family"]], words[:, COL["bar_pos"]]
    position = bar_pos >= POS0
    tempo_changes = position & (words[:, COL["tempo"]] >= TEMPO0)
    chord_changes = position & (words[:, COL["chord"]] >= CHORD_NONE)
    notes = family == FAMILY_NOTE
    return int(np.sum(~notes) + np.sum(tempo_changes) + np.sum(chord_changes) + 3 * np.sum(notes))


def encode_pop909(tokenizer: CPTokenizer, folder: Path) -> np.ndarray:
    return tokenizer.encode_score(score_from_pop909(folder, tokenizer.config))


def encode_plain(tokenizer: CPTokenizer, folder: Path) -> np.ndarray:
    return tokenizer.encode(folder / f"{folder.name}.mid")


def miditok_config() -> miditok.TokenizerConfig:
    """MidiTok settings closest to cwcompose's TokenizerConfig defaults."""
    return miditok.TokenizerConfig(
        pitch_range=(21, 109), beat_res={(0, 4): 8, (4, 12): 4}, num_velocities=32,
        use_tempos=True, num_tempos=32, tempo_range=(40, 250), log_tempos=True,
        use_chords=True, use_rests=True, use_time_signatures=False)


def miditok_encoder(tokenizer):
    """A function: song folder -> token count, for a MidiTok tokenizer (tracks merged)."""
    def encode(folder: Path) -> int:
        score = symusic.Score(str(folder / f"{folder.name}.mid"))
        score.tracks = [merge_tracks(score.tracks)]
        sequences = tokenizer.encode(score)
        return sum(len(s) for s in sequences) if isinstance(sequences, list) else len(sequences)
    return encode


def timed(encode, folders: list[Path]) -> tuple[float, list]:
    """(seconds, outputs) of ``encode`` over every folder, after one untimed warm-up call."""
    encode(folders[0])
    start = time.perf_counter()
    outputs = [encode(folder) for folder in folders]
    return time.perf_counter() - start, outputs


def report(name: str, songs: int, seconds: float, words: int, remi: int) -> None:
    print(f"{name:28s} {songs:6d} {seconds:8.1f} {songs / seconds:8.1f} {words / seconds:10.0f} "
          f"{words / songs:10.0f} {remi / songs:10.0f} {words / remi:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_ROOT / "pop909", help="the POP909 folder (NNN/NNN.mid)")
    parser.add_argument("--limit", type=int, help="only the first N songs, for a quick run")
    args = parser.parse_args()
    folders = sorted(p for p in args.data.iterdir() if p.is_dir() and (p / f"{p.name}.mid").is_file())
    folders = folders[:args.limit]
    tokenizer = CPTokenizer()
    rows = []
    for name, encode in (("cwcompose POP909 reader", lambda f: encode_pop909(tokenizer, f)),
                         ("cwcompose plain MIDI", lambda f: encode_plain(tokenizer, f))):
        seconds, words = timed(encode, folders)
        rows.append((name, seconds, sum(map(len, words)), sum(map(remi_tokens, words))))
    cp_seconds, cp_words = timed(miditok_encoder(miditok.CPWord(miditok_config())), folders)
    remi_seconds, remi_words = timed(miditok_encoder(miditok.REMI(miditok_config())), folders)
    rows.append(("MidiTok CPWord", cp_seconds, sum(cp_words), sum(remi_words)))
    rows.append(("MidiTok REMI", remi_seconds, sum(remi_words), sum(remi_words)))
    print(f"{len(folders)} songs from {args.data}, one process")
    print(f"{'tokenizer':28s} {'songs':>6s} {'seconds':>8s} {'songs/s':>8s} {'words/s':>10s} "
          f"{'words/song':>10s} {'REMI/song':>10s} {'CP/REMI':>8s}")
    for name, seconds, words, remi in rows:
        report(name, len(folders), seconds, words, remi)


if __name__ == "__main__":
    main()
