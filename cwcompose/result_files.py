"""Result files on disk: WAV files written whole (never served half-written), streamed
chunks joined into one take's audio, and old files pruned from a cache folder."""

from __future__ import annotations

import os
import time
import wave
from pathlib import Path

import numpy as np


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """float32 (n, 2) samples in -1..1 -> a 16-bit stereo WAV at ``sample_rate`` Hz, at a fixed
    scale (the chunks of one stream must join sample-exactly)."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    return _write_frames(path, pcm.tobytes(), sample_rate)


def join_wavs(chunks: list[Path], path: Path, sample_rate: int) -> Path:
    """The WAV files ``chunks`` (written by :func:`write_wav`) one after another in ``path``."""
    frames = []
    for chunk in chunks:
        with wave.open(str(chunk)) as wav:
            frames.append(wav.readframes(wav.getnframes()))
    return _write_frames(path, b"".join(frames), sample_rate)


def _write_frames(path: Path, frames: bytes, sample_rate: int) -> Path:
    part = path.with_name(path.name + ".part")  # written whole, then renamed
    try:
        with wave.open(str(part), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(sample_rate)
            out.writeframes(frames)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)
    return path


def prune_old_files(folder: str | Path, age_seconds: float) -> int:
    """Delete the files under ``folder`` last changed more than ``age_seconds`` ago, and the
    folders that leaves empty; returns how many files went. Gradio's own cache cleaner works on
    the same folder, so any file or folder may vanish mid-walk: one that cannot be listed or
    removed any more is skipped, never an error."""
    cutoff, removed = time.time() - age_seconds, 0
    # bottom-up: a folder's files go before the folder is tried
    for parent, folders, files in os.walk(folder, topdown=False, onerror=lambda err: None):
        for name in files:
            path = os.path.join(parent, name)
            try:
                if os.lstat(path).st_ctime < cutoff:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
        for name in folders:
            try:
                os.rmdir(os.path.join(parent, name))  # only an empty folder goes
            except OSError:
                continue
    return removed
