"""A composing request: its validated values and the caps the service puts on them.

:class:`ComposeRequest` checks every value it is given (a whole number in range, a known
checkpoint, a MIDI primer) and :meth:`ComposeRequest.check` checks it against
:class:`Limits`; both raise :class:`RequestError` with a message that says what is wrong and
what to do.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cwcompose.checkpoints import SHIPPED_STEPS
from cwcompose.jsonconfig import JsonConfig
from cwcompose.locks import Locks
from cwcompose.sampling import DEFAULT_SAMPLING, SamplingConfig

DEFAULT_CHECKPOINT = 28500
MAX_SEED = 2**32 - 1
MAX_VARIATIONS = 8
MIDI_SUFFIXES = (".mid", ".midi")


class RequestError(ValueError):
    """A request the service will not run: a value out of range, a primer too large or missing."""


@dataclass(frozen=True)
class Limits(JsonConfig):
    """Every cap the service enforces, in one place."""

    upload_mb: float = 1.0  # largest primer file accepted, in MiB
    max_primer_bars: int = 32  # "keep the last N bars" of a primer, at most
    max_bars: int = 64  # bars generated per request, at most
    max_music_seconds: float = 300.0  # length of a whole piece (primer + continuation), at most
    request_seconds: float = 120.0  # wall-clock budget of one request; composing stops at a bar line after it
    queue_size: int = 32  # requests waiting in the queue, at most (one per session: 32 people at once get a place)
    concurrency: int = 1  # requests composed at the same time
    kept_results: int = 64  # result folders (MIDI files) kept on disk before the oldest is deleted
    cache_seconds: int = 3600  # uploads and served audio/MIDI copies older than this are deleted (checked as often)

    def __post_init__(self) -> None:
        values = {f.name: (getattr(self, f.name), f.type) for f in dataclasses.fields(self)}
        bad = [f"{name}={value!r}" for name, (value, kind) in values.items()
               if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
               or (kind == "int" and value != int(value)) or not math.isfinite(value)]
        if bad:
            raise ValueError(f"invalid Limits: {', '.join(bad)} (every limit must be a positive number, "
                             "a whole one for counts)")
        for name, (value, kind) in values.items():
            if kind == "int":  # 2.0 from a JSON file is the count 2
                object.__setattr__(self, name, int(value))

    @property
    def upload_bytes(self) -> int:
        return int(self.upload_mb * 1024 * 1024)


def whole_number(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``low..high``; RequestError naming ``name`` otherwise (16.0 is fine, 16.5 is not)."""
    allowed = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value) or value != int(value) or value < low or (high is not None and value > high)):
        raise RequestError(f"{name} must be a whole number {allowed}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ComposeRequest:
    """One composing job. ``seed=None`` asks for a random seed (the one used comes back)."""

    checkpoint: int = DEFAULT_CHECKPOINT
    primer: str | Path | None = None  # a .mid/.midi file, or None to start from nothing
    primer_bars: int = 8  # keep this many bars from the end of the primer
    bars: int = 16  # bars to generate after the primer
    seed: int | None = None
    sampling: SamplingConfig = DEFAULT_SAMPLING
    variations: int = 1  # takes composed together in one batch, 1..MAX_VARIATIONS
    locks: Locks = Locks()  # chords, key, tempo: what the person fixed
    primer_words: np.ndarray | None = None  # a take's words as the primer (continue / rewind), else None
    from_bar: int | None = None  # rewind: keep only the primer's first N bars (then its last primer_bars)

    def __post_init__(self) -> None:
        if self.checkpoint not in SHIPPED_STEPS or isinstance(self.checkpoint, bool):
            steps = ", ".join(map(str, SHIPPED_STEPS))
            raise RequestError(f"checkpoint must be one of {steps}, got {self.checkpoint!r}")
        set_ = object.__setattr__  # normalise 16.0 -> 16 (the value is unchanged)
        set_(self, "checkpoint", int(self.checkpoint))
        set_(self, "primer_bars", whole_number("primer bars to keep", self.primer_bars, 1))
        set_(self, "bars", whole_number("bars to generate", self.bars, 1))
        if self.seed is not None:
            set_(self, "seed", whole_number("seed", self.seed, 0, MAX_SEED))
        if not isinstance(self.sampling, SamplingConfig):
            raise RequestError("sampling must be a SamplingConfig")
        set_(self, "variations", whole_number("variations", self.variations, 1, MAX_VARIATIONS))
        if self.from_bar is not None:
            set_(self, "from_bar", whole_number("bars to keep", self.from_bar, 1))
        if not isinstance(self.locks, Locks):
            raise RequestError("locks must be a cwcompose.locks.Locks")
        if self.primer is not None:
            set_(self, "primer", Path(self.primer))
            if self.primer.suffix.lower() not in MIDI_SUFFIXES:
                raise RequestError(f"the primer {self.primer.name!r} is not a MIDI file: upload a .mid or .midi file")

    def check(self, limits: Limits) -> None:
        """RequestError naming the cap and the fix when the request exceeds ``limits``."""
        if self.bars > limits.max_bars:
            raise RequestError(f"bars to generate must be from 1 to {limits.max_bars}, got {self.bars}; "
                             "generate fewer bars, or continue from the result to go longer")
        if self.primer_bars > limits.max_primer_bars and self.primer_words is None:
            raise RequestError(f"primer bars to keep must be from 1 to {limits.max_primer_bars}, "
                               f"got {self.primer_bars}")
        if self.primer is not None:
            if not self.primer.is_file():
                raise RequestError(f"the primer file {self.primer.name!r} was not received; upload it again")
            size = self.primer.stat().st_size
            if size > limits.upload_bytes:
                raise RequestError(f"the primer is {size / 2**20:.1f} MB; the limit is {limits.upload_mb:g} MB. "
                                 "Upload a shorter MIDI file (only its last bars are used anyway)")
