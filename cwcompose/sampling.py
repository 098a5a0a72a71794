"""Per-field sampling: temperature, then nucleus (top-p), with counter-based noise.

Each musical field gets its own temperature and top-p because the fields want
different amounts of freedom: a steady grid wants a cold bar/position field, a
lively rhythm a warmer duration field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from cwcompose.jsonconfig import JsonConfig
from cwcompose.tokenizer import FIELDS

MAX_TEMPERATURE = 10.0

FIELD_LABELS = {
    "family": "Word type (metre vs. note)",
    "bar_pos": "Bar & beat position (rhythmic grid)",
    "rest": "Rests (empty bars)",
    "tempo": "Tempo changes",
    "chord": "Chords (harmony)",
    "pitch": "Pitch (which notes)",
    "duration": "Duration (note lengths)",
    "velocity": "Velocity (loudness)",
}

# Chosen from the references (BRIEF §4) and by listening: a fairly cold grid, tempo
# and chords (the author's were near-greedy), pitch at 1.0 with a nucleus that cuts
# the off-key tail, warmer durations and velocities for variety.
_DEFAULT_TEMPERATURE = {"family": 0.9, "bar_pos": 0.8, "rest": 0.8, "tempo": 0.5, "chord": 0.8,
                        "pitch": 1.0, "duration": 1.1, "velocity": 1.0}
_DEFAULT_TOP_P = {"family": 0.95, "bar_pos": 0.9, "rest": 0.9, "tempo": 0.9, "chord": 0.9,
                  "pitch": 0.9, "duration": 0.95, "velocity": 0.95}


@dataclass(frozen=True)
class SamplingConfig(JsonConfig):
    """Temperature (0 = greedy, up to 10) and top-p (0 < p <= 1) for every field, by name."""

    temperature: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_TEMPERATURE))
    top_p: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_TOP_P))

    def __post_init__(self) -> None:
        for name, values in (("temperature", self.temperature), ("top_p", self.top_p)):
            missing, unknown = set(FIELDS) - set(values), set(values) - set(FIELDS)
            if missing or unknown:
                raise ValueError(f"{name} must give exactly the fields {', '.join(FIELDS)} "
                                 f"(missing {sorted(missing)}, unknown {sorted(unknown)})")
        for f in FIELDS:
            t, p = self.temperature[f], self.top_p[f]
            if not _is_number(t) or not 0.0 <= t <= MAX_TEMPERATURE:
                raise ValueError(f"temperature for {f} must be a number from 0 to {MAX_TEMPERATURE:g}, got {t!r}")
            if not _is_number(p) or not 0.0 < p <= 1.0:
                raise ValueError(f"top-p for {f} must be a number above 0 and at most 1, got {p!r}")

    def with_overrides(self, temperature: dict | None = None, top_p: dict | None = None) -> "SamplingConfig":
        """A copy with some fields' values replaced (validated like the original)."""
        for name, values in (("temperature", temperature), ("top_p", top_p)):
            unknown = set(values or {}) - set(FIELDS)
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)} for {name}; fields are {', '.join(FIELDS)}")
        return SamplingConfig(temperature={**self.temperature, **(temperature or {})},
                              top_p={**self.top_p, **(top_p or {})})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


DEFAULT_SAMPLING = SamplingConfig()
PRESETS = {
    "steady": SamplingConfig(
        temperature={"family": 0.7, "bar_pos": 0.5, "rest": 0.5, "tempo": 0.1, "chord": 0.5,
                     "pitch": 0.8, "duration": 0.8, "velocity": 0.8},
        top_p={f: 0.85 for f in FIELDS}),
    "balanced": DEFAULT_SAMPLING,
    "adventurous": SamplingConfig(
        temperature={"family": 1.1, "bar_pos": 1.2, "rest": 1.0, "tempo": 1.0, "chord": 1.3,
                     "pitch": 1.3, "duration": 1.4, "velocity": 1.3},
        top_p={f: 0.98 for f in FIELDS}),
}


# ---------------------------------------------------------------- logit processors on (B, V)
#
# A processor is ``(state, field, logits) -> logits`` (see cwcompose.grammar); logits are
# float (B, V) in nats. Temperature 0 is not a processor: the sampler draws greedily.


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (nats) divided by a temperature > 0 (higher = flatter distribution)."""
    return logits / temperature


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep, in every row of (B, V) logits, the smallest set of values whose probability
    sums to at least ``top_p`` (a share, 0 < p <= 1; always the likeliest value); -inf on
    the rest."""
    return logits if top_p >= 1.0 else top_p_rows(logits, torch.tensor(top_p, device=logits.device))


@dataclass(frozen=True, eq=False)
class Temperature:
    """A processor dividing each field's logits by its temperature (0 = greedy: left as
    is). The batched sampler recognises it and applies it to every field at once."""

    values: dict[str, float]

    def __call__(self, state, field: str, logits: torch.Tensor) -> torch.Tensor:
        t = self.values[field]
        return apply_temperature(logits, t) if t > 0 else logits


@dataclass(frozen=True, eq=False)
class TopP:
    """A processor keeping each field's nucleus of probability ``values[field]`` (a
    share). The batched sampler recognises it and filters every field with one sort."""

    values: dict[str, float]

    def __call__(self, state, field: str, logits: torch.Tensor) -> torch.Tensor:
        return top_p_filter(logits, self.values[field])


def temperature(values: dict[str, float]) -> Temperature:
    """A processor dividing each field's logits by its temperature (0 = greedy: left as is)."""
    return Temperature(dict(values))


def top_p(values: dict[str, float]) -> TopP:
    """A processor keeping each field's nucleus of probability ``values[field]`` (a share)."""
    return TopP(dict(values))


def top_p_rows(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The nucleus of (..., V) logits with a share per row: ``top_p`` broadcasts against
    (..., 1); a share of ``inf`` keeps the row whole. One sort for every field of every row."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop_sorted = probs.cumsum(-1) - probs >= top_p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def sampling_processors(config: SamplingConfig) -> list[Callable]:
    """The last two stages of the pipeline: temperature, then top-p."""
    return [temperature(config.temperature), top_p(config.top_p)]


# ---------------------------------------------------------------- counter-based noise
#
# Noise is a pure function of (seed, word index, column): row i of a batch draws exactly
# what a batch of one with seed i draws, on any device, whatever else is in the batch.


def _signed(constant: int) -> int:
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 tensors (wrapping arithmetic): a bijective hash."""
    z = x + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def row_keys(seeds: torch.Tensor) -> torch.Tensor:
    """(B,) int64 seeds -> (B,) keys, hashed once per piece."""
    return splitmix64(splitmix64(seeds.long()))


def gumbel_noise(keys: torch.Tensor, word_index: int, columns: torch.Tensor) -> torch.Tensor:
    """(B, C) float32 standard Gumbel noise for word ``word_index`` of every row;
    ``columns`` (C,) int64 numbers every value of every field."""
    word_keys = splitmix64(keys + word_index)
    bits = _shift_right(splitmix64(word_keys[:, None] + columns[None, :]), 11)  # 53 random bits
    uniform = (bits.double() + 0.5) * 2.0 ** -53  # in (0, 1)
    return (-torch.log(-torch.log(uniform))).float()


def gumbel_block(keys: torch.Tensor, first: int, count: int, columns: torch.Tensor) -> torch.Tensor:
    """(count, B, C) float32: :func:`gumbel_noise` of words ``first .. first+count-1``
    at once (the same values, element for element; fewer ops per word)."""
    index = torch.arange(first, first + count, dtype=torch.long, device=keys.device)
    word_keys = splitmix64(keys[None, :] + index[:, None])
    bits = _shift_right(splitmix64(word_keys[:, :, None] + columns), 11)  # 53 random bits
    uniform = (bits.double() + 0.5) * 2.0 ** -53  # in (0, 1)
    return (-torch.log(-torch.log(uniform))).float()


def draw(logits: torch.Tensor, gumbel: torch.Tensor | None) -> torch.Tensor:
    """(B,) values: argmax of ``logits + gumbel`` (a sample of softmax(logits), Gumbel-max;
    the same as gpt-fast's argmax(probs / Exponential)), or the plain argmax (greedy)
    when ``gumbel`` is None. No host sync."""
    return torch.argmax(logits if gumbel is None else logits + gumbel, dim=-1)
