"""Per-field sampling: temperature, then nucleus (top-p), with a seeded generator.

Each musical field gets its own temperature and top-p because the fields want
different amounts of freedom: a steady grid wants a cold bar/position field, a
lively rhythm a warmer duration field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


# ---------------------------------------------------------------- logit filters


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by a temperature > 0 (higher = flatter distribution)."""
    return logits / temperature


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability sums to at least ``top_p``
    (always at least the most likely one); set the rest to -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_token(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator, allowed: torch.Tensor | None = None) -> int:
    """One token id from 1-D ``logits``; ``allowed`` (bool, same shape) masks the grammar.
    Temperature 0 is greedy."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature == 0.0:
        return int(torch.argmax(logits))
    logits = top_p_filter(apply_temperature(logits, temperature), top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
