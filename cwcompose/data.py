"""Token datasets: ``cwcompose prepare`` (a folder of MIDI -> token arrays) and the
window sampler that training reads from.

A prepared dataset is a folder holding ``tokens.npy`` (all songs' words, concatenated,
``int16``, shape (words, fields)), ``index.json`` (each song's name, split, start and
length, the tokenizer config and a fingerprint) and ``summary.json`` (statistics).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cwcompose.midi_input import is_pop909_song, score_from_midi, score_from_pop909
from cwcompose.tokenizer import CHORD0, COL, FIELDS, VALUE0, MidiReadError, CPTokenizer, TokenizerConfig
from cwcompose.words import bar_lines

SPLITS = {"train": 90, "valid": 95, "test": 100}  # cumulative percent of songs, by name hash
MIDI_SUFFIXES = (".mid", ".midi")


def split_of(name: str) -> str:
    """Deterministic split for a song name: a hash, so adding songs never moves others."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100
    return next(split for split, upper in SPLITS.items() if bucket < upper)


def find_songs(root: Path) -> list[tuple[str, Path]]:
    """(song name, path) for every POP909 song folder and every other MIDI file under root."""
    songs, pop909_files = [], set()
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()) + [root]:
        if is_pop909_song(folder):
            songs.append((str(folder.relative_to(root)), folder))
            pop909_files.add(folder / f"{folder.name}.mid")
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in MIDI_SUFFIXES and path.is_file() and path not in pop909_files:
            songs.append((str(path.relative_to(root)), path))
    return songs


def encode_song(job: tuple[str, Path, dict]) -> tuple[str, np.ndarray | None, str]:
    """Worker: (name, path, tokenizer config dict) -> (name, words or None, why skipped)."""
    name, path, config_dict = job
    tokenizer = CPTokenizer(TokenizerConfig.from_dict(config_dict))
    try:
        score = score_from_pop909(path, tokenizer.config) if path.is_dir() else score_from_midi(path, tokenizer.config)
        return name, tokenizer.encode_score(score).astype(np.int16), ""
    except MidiReadError as err:
        return name, None, str(err)


def prepare(input_dir: str | Path, output_dir: str | Path, config: TokenizerConfig | None = None,
            workers: int = 2, progress: bool = True) -> dict:
    """Encode every song under ``input_dir`` into a dataset in ``output_dir``; returns the summary."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    tokenizer = CPTokenizer(config)
    songs = find_songs(input_dir)
    if not songs:
        raise FileNotFoundError(f"no MIDI files or POP909 song folders under {input_dir}")
    jobs = [(name, path, tokenizer.config.to_dict()) for name, path in songs]
    with ProcessPoolExecutor(max_workers=max(workers, 1)) as pool:
        results = list(tqdm(pool.map(encode_song, jobs, chunksize=8), total=len(jobs),
                            desc="prepare", unit="song", disable=not progress))
    encoded = [(name, words) for name, words, _ in results if words is not None]
    skipped = {name: why for name, words, why in results if words is None}
    tokens = np.concatenate([w for _, w in encoded]) if encoded else np.zeros((0, len(FIELDS)), np.int16)
    index, start = [], 0
    for name, words in encoded:
        index.append({"name": name, "split": split_of(name), "start": start, "length": len(words)})
        start += len(words)
    output_dir.mkdir(parents=True, exist_ok=True)
    np.save(output_dir / "tokens.npy", tokens)
    fingerprint = dataset_fingerprint(tokens, index)
    (output_dir / "index.json").write_text(json.dumps(
        {"tokenizer": tokenizer.config.to_dict(), "fingerprint": fingerprint, "songs": index}, indent=1))
    summary = summarise(tokenizer, tokens, index, skipped, fingerprint)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def dataset_fingerprint(tokens: np.ndarray, index: list[dict]) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(tokens).tobytes())
    digest.update(json.dumps(index, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def summarise(tokenizer: CPTokenizer, tokens: np.ndarray, index: list[dict], skipped: dict, fingerprint: str) -> dict:
    bars = int(np.sum(bar_lines(tokens)))
    histograms = {}
    for col, field in enumerate(FIELDS):
        counts = np.bincount(tokens[:, col].astype(np.int64), minlength=len(tokenizer.vocab[field]))
        histograms[field] = {tokenizer.token_name(field, i): int(c) for i, c in enumerate(counts) if c}
    return {
        "songs": len(index),
        "songs_per_split": {s: sum(1 for song in index if song["split"] == s) for s in SPLITS},
        "words": int(len(tokens)),
        "bars": bars,
        "words_per_bar": round(len(tokens) / max(bars, 1), 2),
        "fingerprint": fingerprint,
        "skipped": skipped,
        "histograms": histograms,
    }


@dataclass
class TokenDataset:
    """The songs of one split of a prepared dataset, with a sampler of windows starting at bars."""

    songs: list[np.ndarray]
    names: list[str]
    tokenizer_config: TokenizerConfig
    fingerprint: str

    @classmethod
    def load(cls, data_dir: str | Path, split: str) -> "TokenDataset":
        data_dir = Path(data_dir)
        meta = json.loads((data_dir / "index.json").read_text())
        tokens = np.load(data_dir / "tokens.npy").astype(np.int64)
        chosen = [s for s in meta["songs"] if s["split"] == split]
        if not chosen:
            raise ValueError(f"{data_dir} has no songs in split {split!r}")
        return cls(songs=[tokens[s["start"]:s["start"] + s["length"]] for s in chosen],
                   names=[s["name"] for s in chosen],
                   tokenizer_config=TokenizerConfig.from_dict(meta["tokenizer"]),
                   fingerprint=meta["fingerprint"])

    def __post_init__(self) -> None:
        starts = [np.flatnonzero(bar_lines(s)) for s in self.songs]  # a window starts on a Bar word
        self.bar_starts = np.concatenate([np.stack([np.full(len(b), i), b], 1) for i, b in enumerate(starts)])

    def window(self, song: int, start: int, length: int) -> torch.Tensor:
        """``length`` words from ``start``, padded with Pad (0) past the song's end."""
        words = self.songs[song][start:start + length]
        out = torch.zeros(length, words.shape[1], dtype=torch.long)
        out[:len(words)] = torch.from_numpy(words)
        return out

    def sample_batch(self, batch_size: int, length: int, generator: torch.Generator,
                     transpose: tuple[int, int] | None = None) -> torch.Tensor:
        """(batch, length, fields) windows, each starting at a random bar line; with
        ``transpose=(low, high)`` each is moved by a whole number of semitones drawn from
        ``generator`` in [low, high], limited to shifts that keep every note on the keyboard."""
        picks = torch.randint(len(self.bar_starts), (batch_size,), generator=generator).tolist()
        windows = [self.window(*self.bar_starts[p], length) for p in picks]
        if transpose is not None:
            windows = [self._transposed(w, transpose, generator) for w in windows]
        return torch.stack(windows)

    def _transposed(self, window: torch.Tensor, shifts: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        low, high = playable_shifts(window, shifts, self.tokenizer_config)
        semitones = int(torch.randint(low, high + 1, (1,), generator=generator))
        return transpose_window(window, semitones, self.tokenizer_config)

    def fixed_windows(self, count: int, length: int) -> torch.Tensor:
        """Up to ``count`` windows spread evenly over the split, for a stable validation loss."""
        picks = np.linspace(0, len(self.bar_starts) - 1, min(count, len(self.bar_starts))).astype(int)
        return torch.stack([self.window(*self.bar_starts[p], length) for p in picks])


def playable_shifts(window: torch.Tensor, shifts: tuple[int, int], config: TokenizerConfig) -> tuple[int, int]:
    """The part of [low, high] semitones that keeps every note of ``window`` within
    [pitch_min, pitch_max]: no note is ever dropped or folded by an octave."""
    pitches = window[:, COL["pitch"]]
    pitches = pitches[pitches >= VALUE0] - VALUE0  # 0 = pitch_min
    if len(pitches) == 0:
        return shifts
    top = config.pitch_max - config.pitch_min
    return max(shifts[0], -int(pitches.min())), min(shifts[1], top - int(pitches.max()))


def transpose_window(window: torch.Tensor, semitones: int, config: TokenizerConfig) -> torch.Tensor:
    """Words (L, fields) moved by ``semitones``: note pitches, and chord roots (mod 12,
    quality kept). Pad, Ignore, Conti and N (no chord) are left as they are."""
    out = window.clone()
    pitch = out[:, COL["pitch"]]
    out[:, COL["pitch"]] = torch.where(pitch >= VALUE0, pitch + semitones, pitch)
    chord = out[:, COL["chord"]]
    qualities = len(config.chord_qualities)
    root, quality = (chord - CHORD0).div(qualities, rounding_mode="floor"), (chord - CHORD0) % qualities
    moved = CHORD0 + ((root + semitones) % 12) * qualities + quality
    out[:, COL["chord"]] = torch.where(chord >= CHORD0, moved, chord)
    return out
