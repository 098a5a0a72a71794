"""Batched decoding (after gpt-fast's generate.py): prefill, decode one word, draw words.

:class:`Decoder` keeps a static KV cache of B rows x ``capacity`` words (the model's
context) with a length per row. A new word per row attends to its row's keys with the
relative bias of distance ``n_b - j`` (clipped at ``max_relative_distance - 1``) and
keys past the row's length masked. When a row's cache is full its window slides: the
newest words from a bar line (keeping at least 3/4 of the context) are re-encoded in one
pass, so the cost per word stays flat at any length.

:class:`WordSampler` draws a word per row: the family first (for the batch), then every
field that some row needs, each through the processor pipeline (see
:mod:`cwcompose.grammar`) and drawn with counter-based Gumbel noise
(:func:`cwcompose.sampling.gumbel_noise`), so that row i equals a batch of one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cwcompose.grammar import WordState, applies, grammar_mask
from cwcompose.model import CPTransformer
from cwcompose.sampling import draw, gumbel_noise, row_keys
from cwcompose.words import COL, FAMILY_METRIC, FAMILY_NOTE, FIELDS, METRIC_FIELDS, NOTE_FIELDS, as_words, bar_starts

Processor = Callable[[WordState, str, torch.Tensor], torch.Tensor]
KEEP_SHARE = 0.75  # a sliding window keeps at least this share of the context


def window_start(words: np.ndarray, capacity: int) -> int:
    """Where a window over ``words`` (n, fields) starts so that it fits ``capacity`` with
    room to grow: all of it when shorter than the capacity; else from the newest bar line
    that keeps at least ``KEEP_SHARE`` of the capacity (and fits), or without a bar line."""
    n = len(words)
    if n < capacity:
        return 0
    latest = n - math.ceil(KEEP_SHARE * capacity)
    earliest = n - capacity + 1
    lines = bar_starts(words[earliest:latest + 1]) + earliest
    return int(lines[-1]) if len(lines) else latest


@dataclass(frozen=True)
class FusedHeads:
    """The output heads folded for one matmul per group of fields."""

    family_w: torch.Tensor
    family_b: torch.Tensor
    project_h: torch.Tensor  # (d, d): project_family's part that reads h
    family_table: torch.Tensor  # (V_family, d): its part that reads the family embedding, plus bias
    group_w: dict[str, torch.Tensor]  # "metric" / "note" -> (sum V, d)
    group_b: dict[str, torch.Tensor]
    sizes: dict[str, tuple[int, ...]]


def fuse_heads(model: CPTransformer) -> FusedHeads:
    d = model.config.d_model
    w = model.project_family.weight
    groups = {"metric": METRIC_FIELDS, "note": NOTE_FIELDS}
    return FusedHeads(
        family_w=model.family_head.weight, family_b=model.family_head.bias, project_h=w[:, :d],
        family_table=model.embed["family"].weight @ w[:, d:].T + model.project_family.bias,
        group_w={g: torch.cat([model.heads[f].weight for f in fs]) for g, fs in groups.items()},
        group_b={g: torch.cat([model.heads[f].bias for f in fs]) for g, fs in groups.items()},
        sizes={g: tuple(model.heads[f].out_features for f in fs) for g, fs in groups.items()})


class Decoder:
    """KV-cached forward steps for B rows with per-row lengths and sliding windows."""

    def __init__(self, model: CPTransformer, batch: int, capacity: int | None = None):
        cfg = model.config
        p = next(model.parameters())
        self.model, self.batch, self.device = model, batch, p.device
        self.capacity = capacity or cfg.context
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        shape = (cfg.n_layers, batch, cfg.n_heads, self.capacity, self.head_dim)
        self.keys = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.values = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=p.device)  # words in each row's cache
        self.n_words = torch.zeros(batch, dtype=torch.long, device=p.device)  # words in each row's history
        self.history = torch.zeros((batch, 1024, len(FIELDS)), dtype=torch.long, device=p.device)
        self.window_starts = [0] * batch  # where each row's cached window starts in its history
        sizes = [cfg.vocab_sizes[f] for f in FIELDS]
        with torch.no_grad():
            self.embed_table = torch.cat([model.embed[f].weight @ w.T for f, w in zip(
                FIELDS, model.project_in.weight.split([cfg.embed_widths[f] for f in FIELDS], dim=1))])
        self.embed_offsets = torch.tensor(np.cumsum([0] + sizes[:-1]), device=p.device)
        self._arange = torch.arange(self.capacity, device=p.device)
        self._rows = torch.arange(batch, device=p.device)
        self._max_words = 0
        self._row_heads = (torch.arange(batch, device=p.device)[:, None] * cfg.n_heads
                           + torch.arange(cfg.n_heads, device=p.device)[None, :]) * self.capacity
        self._scale = 1.0 / math.sqrt(self.head_dim)

    # ------------------------------------------------------------ windows

    @torch.inference_mode()
    def prefill(self, words: np.ndarray) -> torch.Tensor:
        """Start every row from the same ``words`` (n >= 1, fields); returns h (B, d_model)."""
        words = torch.as_tensor(as_words(words), device=self.device)
        self._reserve(len(words))
        self.history[:, :len(words)] = words
        self.n_words.fill_(len(words))
        self._max_words = len(words)
        start = window_start(words.cpu().numpy(), self.capacity)
        h = self._encode(list(range(self.batch)), words[start:])
        self.window_starts = [start] * self.batch
        return h.expand(self.batch, -1).clone()

    @torch.inference_mode()
    def slide(self, rows: list[int]) -> None:
        """Re-encode the windows of ``rows`` (their caches are full) from a bar line."""
        for row in rows:
            n = int(self.n_words[row])
            history = self.history[row, :n]
            start = window_start(history.cpu().numpy(), self.capacity)
            self._encode([row], history[start:])
            self.window_starts[row] = start

    def _encode(self, rows: list[int], window: torch.Tensor) -> torch.Tensor:
        """Run the model over ``window`` (L, fields) into the cache of ``rows``; h after it."""
        cache = self.model.new_cache(1, self.capacity)
        h = self.model.hidden(window[None], cache)[0, -1]
        length = window.size(0)
        for layer in range(len(cache.keys)):
            self.keys[layer, rows, :, :length] = cache.keys[layer][0, :, :length]
            self.values[layer, rows, :, :length] = cache.values[layer][0, :, :length]
        self.lengths[rows] = length
        return h

    def _reserve(self, n: int) -> None:
        if n > self.history.size(1):
            grown = torch.zeros((self.batch, 2 * n, len(FIELDS)), dtype=torch.long, device=self.device)
            grown[:, :self.history.size(1)] = self.history
            self.history = grown

    def full_rows(self, lengths: list[int], done: list[bool]) -> list[int]:
        """Rows (alive) whose cache is full, from host copies of ``lengths`` and ``done``."""
        return [r for r, (n, d) in enumerate(zip(lengths, done)) if n >= self.capacity and not d]

    # ------------------------------------------------------------ one step

    @torch.inference_mode()
    def step(self, word: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Append ``word`` (B, fields) to every row where ``keep`` (B,) bool; returns h
        (B, d_model) after it (rows not kept compute garbage that is overwritten later)."""
        self._max_words += 1  # an upper bound of n_words, known without a host sync
        self._reserve(self._max_words + 1)
        self.history[self._rows, self.n_words] = word
        x = self.embed_table[word + self.embed_offsets].sum(1) + self.model.project_in.bias
        h = self._forward_one(x)
        self.n_words += keep
        self.lengths += keep
        return h

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        """The model's blocks for one new word per row: x (B, d) embeddings -> h (B, d)."""
        b, d, hd, cap = x.size(0), x.size(1), self.head_dim, self.capacity
        slot = self.lengths.clamp(max=cap - 1)
        distance = (slot[:, None] - self._arange).clamp(0, self.model.config.max_relative_distance - 1)
        gather = distance[:, None, None, :].expand(b, self.n_heads, 1, cap)
        mask = torch.zeros((b, 1, 1, cap), device=x.device, dtype=x.dtype).masked_fill(
            (self._arange > slot[:, None])[:, None, None, :], float("-inf"))
        flat = (self._row_heads + slot[:, None]).flatten()
        for layer, block in enumerate(self.model.blocks):
            attn = block.attention
            a = F.layer_norm(x, (d,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
            q, k, v = F.linear(a, attn.qkv.weight, attn.qkv.bias).view(b, 3, self.n_heads, hd).unbind(1)
            keys, values = self.keys[layer], self.values[layer]
            keys.view(-1, hd).index_copy_(0, flat, k.reshape(-1, hd))
            values.view(-1, hd).index_copy_(0, flat, v.reshape(-1, hd))
            q = q[:, :, None, :]
            relative = torch.matmul(q, attn.relative.T).mul_(self._scale)  # (B, H, 1, max distance)
            bias = relative.gather(-1, gather).add_(mask)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)
            x = x + F.linear(y.reshape(b, d), attn.out.weight, attn.out.bias)
            m = F.layer_norm(x, (d,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
            up, act, down = block.mlp
            x = x + F.linear(F.gelu(F.linear(m, up.weight, up.bias)), down.weight, down.bias)
        norm = self.model.norm
        return F.layer_norm(x, (d,), norm.weight, norm.bias, norm.eps)


# ---------------------------------------------------------------- drawing words


class WordSampler:
    """Draws one word per row from hidden states h (B, d): family, then its fields.

    ``processors`` run after the grammar mask, in order (user constraints, then
    temperature and top-p); ``greedy`` names the fields drawn by argmax (temperature 0).
    Row i's noise comes from ``seeds[i]`` and the word index alone."""

    def __init__(self, model: CPTransformer, seeds: list[int], processors: list[Processor],
                 greedy: frozenset[str] = frozenset()):
        p = next(model.parameters())
        self.heads = fuse_heads(model)
        self.pipeline = [grammar_mask, *processors]
        self.greedy = greedy
        self.keys = row_keys(torch.tensor(seeds, dtype=torch.long, device=p.device))
        sizes = [model.config.vocab_sizes[f] for f in FIELDS]
        self.columns = torch.arange(sum(sizes), device=p.device)
        self.field_slices = dict(zip(FIELDS, (slice(a, a + n) for a, n in zip(np.cumsum([0] + sizes), sizes))))
        self._noise = None
        self._h = None

    def family(self, h: torch.Tensor, state: WordState, word_index: int) -> torch.Tensor:
        """Draw the family of word ``word_index`` of every row into ``state.current``; (B,)."""
        state.begin_word()
        self._noise = gumbel_noise(self.keys, word_index, self.columns)
        self._h = h
        logits = F.linear(h, self.heads.family_w, self.heads.family_b)
        return self._draw(state, "family", logits)

    def fields(self, state: WordState, families: set[int]) -> torch.Tensor:
        """Draw the other fields of the word (the families present, from the host);
        returns the finished words (B, fields)."""
        heads, h = self.heads, self._h
        z = F.linear(h, heads.project_h) + heads.family_table[state.current[:, COL["family"]]]
        for group, family in (("metric", FAMILY_METRIC), ("note", FAMILY_NOTE)):
            if family not in families:
                continue
            logits = F.linear(z, heads.group_w[group], heads.group_b[group]).split(heads.sizes[group], dim=-1)
            for name, field_logits in zip(METRIC_FIELDS if group == "metric" else NOTE_FIELDS, logits):
                self._draw(state, name, field_logits)
        return state.current

    def _draw(self, state: WordState, field: str, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        for process in self.pipeline:
            logits = process(state, field, logits)
        value = draw(logits, None if field in self.greedy else self._noise[:, self.field_slices[field]])
        column = state.current[:, COL[field]]
        state.current[:, COL[field]] = torch.where(applies(state.current, field), value, column)
        return state.current[:, COL[field]]
