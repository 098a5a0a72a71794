"""The word grammar while sampling: a batched state and its allowed-value masks.

Contract (what logit processors, e.g. :mod:`cwcompose.locks`, may rely on)
--------------------------------------------------------------------------
A *processor* is a plain callable ``(state: WordState, field: str, logits) -> logits``
with ``logits`` a float tensor (B, V) in nats, V the field's vocabulary size. It is
called when ``field`` is drawn for every row of the batch (fields in the order of
:data:`FIELDS`: family first, then bar_pos, tempo, chord, rest, pitch, duration,
velocity); rows for which the field does not apply (a Note row drawing bar_pos) are
drawn too and their draw thrown away. The pipeline per field is
``grammar's mask (allowed) -> user constraints (in order) -> temperature -> top-p`` and a processor
returns a new tensor, never syncs with the host (no ``.item()``), never mutates ``state``.

:class:`WordState` fields, all (B,) tensors on the model's device unless said:

- ``current`` (B, n_fields) long: the word being drawn, filled field by field;
  IGNORE in fields not drawn yet (and in fields that do not apply to its family).
- ``bar`` long: index of the bar the next word belongs to, counted from the first
  *generated* bar = 0; -1 while a continuation is still in the primer's last bar.
  Once a Bar word is drawn the next words are in that new bar.
- ``position`` long: the last onset position (0..positions_per_bar-1) in the current bar,
  -1 if none yet.
- ``notes_in_bar``, ``notes_at_onset`` long: Note words so far in this bar / at this onset.
- ``done`` bool: the row has finished (its words are complete).

The rules (those of the first engine's ``Grammar``): no Bar or Rest right after a Bar;
notes only after a position or a note, at most :data:`MAX_NOTES_PER_ONSET` per onset;
positions increase within a bar and need a bar line first (none after a Rest until the
next Bar); Conti (tempo, chord) only once a tempo / chord exists; End only when allowed;
after a primer the first word is metrical; a Rest never jumps past the last bar asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cwcompose.words import (
    BAR, CHORD_NONE, COL, CONTI, FAMILY_END, FAMILY_METRIC, FAMILY_NOTE, FIELDS, IGNORE, KIND_BAR, KIND_NOTE,
    KIND_OTHER, KIND_POS, KIND_REST, POS0, REST, TEMPO0, VALUE0, as_words, bar_jump, read_words, word_kind,
)

MAX_NOTES_PER_ONSET = 16  # a chord of more notes than fingers means the model is stuck
PREVIOUS_START, PREVIOUS_PRIMER = 6, 7  # ``previous`` beyond the word kinds: nothing yet / a primer


@dataclass
class WordState:
    """The grammar's view of B sequences being written (see the module docstring)."""

    current: torch.Tensor
    bar: torch.Tensor
    position: torch.Tensor
    notes_in_bar: torch.Tensor
    notes_at_onset: torch.Tensor
    done: torch.Tensor
    previous: torch.Tensor  # kind of the last word (KIND_*), or PREVIOUS_START / PREVIOUS_PRIMER
    bar_open: torch.Tensor  # bool: a Bar word began this bar (positions may follow)
    have_tempo: torch.Tensor
    have_chord: torch.Tensor
    bar_limit: torch.Tensor  # bars to write: the row is done when a word would start bar ``bar_limit``
    vocab_sizes: dict[str, int]
    allow_end: bool = False

    @classmethod
    def start(cls, words: np.ndarray, *, batch: int, bars: int, from_primer: bool, vocab_sizes: dict[str, int],
              device: torch.device | str = "cpu") -> "WordState":
        """The state after ``words`` (the same opening for every row). Bars are counted
        from the next bar line when ``from_primer``, else from the opening's own bar."""
        values = opening_values(as_words(words))
        values["bar"] = -1 if from_primer else values["bar"]
        values["previous"] = PREVIOUS_PRIMER if from_primer else values["previous"]
        full = {k: torch.full((batch,), v, device=device) for k, v in values.items()}
        return cls(current=torch.full((batch, len(FIELDS)), IGNORE, dtype=torch.long, device=device),
                   done=torch.zeros(batch, dtype=torch.bool, device=device),
                   bar_limit=torch.full((batch,), bars, dtype=torch.long, device=device),
                   vocab_sizes=dict(vocab_sizes), **full)

    def begin_word(self) -> None:
        """Clear ``current`` before the next word is drawn."""
        self.current = torch.full_like(self.current, IGNORE)

    def advance(self, word: torch.Tensor) -> torch.Tensor:
        """Take the drawn words (B, n_fields) into the state; returns (B,) bool: rows whose
        word is part of their piece (alive before, and the word did not end the row)."""
        kind, jump = _kind_and_jump(word, self.vocab_sizes)
        ends = ((jump > 0) & (self.bar + jump >= self.bar_limit)) | (word[:, COL["family"]] == FAMILY_END)
        keep = ~self.done & ~ends
        new_bar = jump > 0
        is_pos, is_note = kind == KIND_POS, kind == KIND_NOTE
        kept_pos, kept_note, kept_bar = keep & is_pos, keep & is_note, keep & new_bar
        self.bar = self.bar + jump * keep
        self.position = torch.where(kept_pos, word[:, COL["bar_pos"]] - POS0, self.position.masked_fill(kept_bar, -1))
        self.notes_in_bar = (self.notes_in_bar + kept_note).masked_fill(kept_bar, 0)
        self.notes_at_onset = torch.where(keep, (self.notes_at_onset + 1) * is_note, self.notes_at_onset)
        self.bar_open = torch.where(kept_bar, kind == KIND_BAR, self.bar_open)
        self.previous = torch.where(keep, kind, self.previous)
        self.have_tempo = self.have_tempo | (kept_pos & (word[:, COL["tempo"]] >= TEMPO0))
        self.have_chord = self.have_chord | (kept_pos & (word[:, COL["chord"]] >= CHORD_NONE))
        self.done = self.done | ends
        return keep


_KIND_JUMP: dict[tuple, tuple[torch.Tensor, tuple[int, int]]] = {}


def kind_jump_table(vocab_sizes: dict[str, int], device: torch.device) -> tuple[torch.Tensor, tuple[int, int]]:
    """The (family, bar_pos, rest) -> (kind, jump) table (KIND_*, bars) of :func:`word_kind`
    and :func:`bar_jump`, and its strides; built once per vocabulary and device (a compiled
    step builds it first, so that its graph does not)."""
    sizes = (vocab_sizes["family"], vocab_sizes["bar_pos"], vocab_sizes["rest"])
    key = (sizes, device)
    if key not in _KIND_JUMP:
        family, bar_pos, rest = (t.flatten() for t in torch.meshgrid(*(torch.arange(n) for n in sizes), indexing="ij"))
        kind = word_kind(family, bar_pos)
        table = torch.stack([kind, bar_jump(kind, rest)], 1).to(device)
        _KIND_JUMP[key] = (table, (sizes[1] * sizes[2], sizes[2]))
    return _KIND_JUMP[key]


def _kind_and_jump(word: torch.Tensor, vocab_sizes: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) kind (KIND_*) and bar jump of each word, by one lookup in :func:`kind_jump_table`."""
    table, (per_family, per_bar_pos) = kind_jump_table(vocab_sizes, word.device)
    index = word[:, COL["family"]] * per_family + word[:, COL["bar_pos"]] * per_bar_pos + word[:, COL["rest"]]
    found = table[index]
    return found[:, 0], found[:, 1]


def opening_values(words: np.ndarray) -> dict[str, int | bool]:
    """The state's values after ``words`` (n, fields), read at once."""
    reading = read_words(words, positions_per_bar=1)
    words = words[:reading.length]
    real = reading.kind != KIND_OTHER
    kinds, jumps, bar_pos = reading.kind[real], reading.jump[real], words[real, COL["bar_pos"]]
    last_jump = np.flatnonzero(jumps)[-1] if np.any(jumps) else -1
    since_kinds, since_pos = kinds[last_jump + 1:], bar_pos[last_jump + 1:]
    positions = since_pos[since_kinds == KIND_POS] - POS0
    not_notes = np.flatnonzero(kinds != KIND_NOTE)
    is_pos = reading.kind == KIND_POS
    return dict(
        bar=int(reading.bar[-1]) if reading.length else -1,
        position=int(positions[-1]) if len(positions) else -1,
        notes_in_bar=int(np.sum(since_kinds == KIND_NOTE)),
        notes_at_onset=int(len(kinds) - 1 - (not_notes[-1] if len(not_notes) else -1)),
        previous=int(kinds[-1]) if len(kinds) else PREVIOUS_START,
        bar_open=bool(last_jump >= 0 and kinds[last_jump] == KIND_BAR),
        have_tempo=bool(np.any(is_pos & (words[:, COL["tempo"]] >= TEMPO0))),
        have_chord=bool(np.any(is_pos & (words[:, COL["chord"]] >= CHORD_NONE))),
    )


def allowed(state: WordState, field: str) -> torch.Tensor:
    """(B, V) bool: the values of ``field`` the grammar allows in every row (all True in
    rows where the field does not apply, so that no row is left without a choice)."""
    size = state.vocab_sizes[field]
    values = torch.arange(size, device=state.bar.device)[None, :]
    if field == "family":
        note_ok = ((state.previous == KIND_POS) | (state.previous == KIND_NOTE)) & (
            state.notes_at_onset < MAX_NOTES_PER_ONSET)
        end_ok = (state.previous != PREVIOUS_START) & state.allow_end
        return (values == FAMILY_METRIC) | ((values == FAMILY_NOTE) & note_ok[:, None]) | (
            (values == FAMILY_END) & end_ok[:, None])
    if field == "bar_pos":
        line_ok = (state.previous != KIND_BAR)[:, None]
        pos_ok = (state.bar_open & (state.previous != KIND_REST))[:, None] & (
            values >= POS0 + state.position[:, None] + 1)
        rule = (((values == BAR) | (values == REST)) & line_ok) | pos_ok
        return rule | (state.current[:, COL["family"]] != FAMILY_METRIC)[:, None]
    rule = values >= VALUE0
    if field == "tempo":
        rule = (rule & (values != CONTI)) | ((values == CONTI) & state.have_tempo[:, None])
    elif field == "chord":
        rule = (rule & (values != CONTI)) | ((values == CONTI) & state.have_chord[:, None])
    elif field == "rest":
        longest = torch.clamp(state.bar_limit - 1 - state.bar, min=1)
        rule = rule & (values - VALUE0 + 1 <= longest[:, None])
    return rule


def applies(current: torch.Tensor, field: str) -> torch.Tensor:
    """(B,) bool: rows whose word (family and bar_pos drawn so far) has ``field``."""
    family, bar_pos = current[:, COL["family"]], current[:, COL["bar_pos"]]
    if field == "family":
        return torch.ones_like(family, dtype=torch.bool)
    if field == "bar_pos":
        return family == FAMILY_METRIC
    if field in ("tempo", "chord"):
        return (family == FAMILY_METRIC) & (bar_pos >= POS0)
    if field == "rest":
        return (family == FAMILY_METRIC) & (bar_pos == REST)
    return family == FAMILY_NOTE


class PaddedGrammar:
    """:func:`allowed` for all the fields after the family at once, in the batched
    sampler's padded layout: (B, 7, width), field ``FIELDS[1 + i]`` in slot i, value v
    at column v (columns past a field's vocabulary are left allowed: the sampler's
    logits are -inf there). The same rules as :func:`allowed`, in about 20 ops instead
    of 7 x 6."""

    def __init__(self, vocab_sizes: dict[str, int], width: int, device: torch.device | str = "cpu"):
        fields = FIELDS[1:]
        self.values = torch.arange(width, device=device)
        # value >= lower (per row for bar_pos), <= upper (per row for rest), or a special
        # value (Bar / Rest for bar_pos, Conti for tempo and chord) where the row allows it.
        self.lower = torch.tensor([0, TEMPO0, CHORD_NONE, VALUE0, VALUE0, VALUE0, VALUE0], device=device)
        self.is_bar_pos = torch.tensor([f == "bar_pos" for f in fields], device=device)
        self.is_rest = torch.tensor([f == "rest" for f in fields], device=device)
        special = torch.zeros((len(fields), width), dtype=torch.bool, device=device)
        special[fields.index("bar_pos"), [BAR, REST]] = True
        special[fields.index("tempo"), CONTI] = True
        special[fields.index("chord"), CONTI] = True
        self.special = special
        self.big = width + 1
        assert TEMPO0 == CHORD_NONE == CONTI + 1, "Conti is the value just below the real tempi and chords"

    def allowed(self, state: WordState) -> torch.Tensor:
        """(B, 7, width) bool, from ``state`` with the word's family drawn."""
        metric = state.current[:, COL["family"]] == FAMILY_METRIC
        pos_open = state.bar_open & (state.previous != KIND_REST)
        first_pos = torch.where(pos_open, POS0 + 1 + state.position, self.big)
        lower = torch.where(self.is_bar_pos, first_pos[:, None], self.lower)
        longest = torch.clamp(state.bar_limit - 1 - state.bar, min=1)
        upper = torch.where(self.is_rest, (longest + VALUE0 - 1)[:, None], self.big)
        zero = torch.zeros_like(metric)
        special_ok = torch.stack([state.previous != KIND_BAR, state.have_tempo, state.have_chord,
                                  zero, zero, zero, zero], 1)
        free = torch.stack([~metric, zero, zero, zero, zero, zero, zero], 1)
        values = self.values
        in_range = (values >= lower[:, :, None]) & (values <= upper[:, :, None])
        return in_range | (self.special & special_ok[:, :, None]) | free[:, :, None]
