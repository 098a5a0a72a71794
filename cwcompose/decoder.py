"""Batched decoding (after gpt-fast's generate.py): prefill, decode one word, draw words.

:class:`Decoder` keeps a static KV cache of B rows x ``capacity`` words (the model's
context) with a length per row. A new word per row attends to its row's keys with the
relative bias of distance ``n_b - j`` (clipped at ``max_relative_distance - 1``) and
keys past the row's length masked. When a row's cache is full its window slides: the
newest words from a bar line (keeping at least 3/4 of the context) are re-encoded
(:mod:`cwcompose.window`), so the cost per word stays flat at any length. A step reads
the keys up to the longest row only (a host-side bound, no sync).

:class:`WordSampler` draws a word per row: the family first (for the batch), then every
field that some row needs, each through the processor pipeline (see
:mod:`cwcompose.grammar`) and drawn with counter-based Gumbel noise
(:func:`cwcompose.sampling.gumbel_noise`), so that row i equals a batch of one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cwcompose.grammar import PaddedGrammar, WordState, allowed, applies
from cwcompose.model import CPTransformer
from cwcompose.sampling import Temperature, TopP, gumbel_block, row_keys, top_p_rows
from cwcompose.window import encode_window
from cwcompose.words import COL, FAMILY_METRIC, FIELDS, IGNORE, METRIC_FIELDS, NOTE_FIELDS, as_words, bar_starts

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
        # keys and values of a layer in one tensor, so that one index_copy_ writes both; keys
        # before values so that a layer's keys (B, H, capacity, head_dim) are contiguous (a
        # matmul over a strided batch copies the whole cache first)
        shape = (cfg.n_layers, 2, batch, cfg.n_heads, self.capacity, self.head_dim)
        self.kv = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=p.device)  # words in each row's cache
        self.n_words = torch.zeros(batch, dtype=torch.long, device=p.device)  # words in each row's history
        self.history = torch.zeros((batch, 1024, len(FIELDS)), dtype=torch.long, device=p.device)
        self.window_starts = [0] * batch  # where each row's cached window starts in its history
        sizes = [cfg.vocab_sizes[f] for f in FIELDS]
        with torch.no_grad():
            self.embed_table = torch.cat([model.embed[f].weight @ w.T for f, w in zip(
                FIELDS, model.project_in.weight.split([cfg.embed_widths[f] for f in FIELDS], dim=1))])
            self.layers = [_step_weights(block, self.head_dim) for block in model.blocks]
        self.embed_offsets = torch.tensor(np.cumsum([0] + sizes[:-1]), device=p.device)
        self._arange = torch.arange(self.capacity, device=p.device)
        self._rows = torch.arange(batch, device=p.device)
        self._max_words = 0
        # row of (b, k-or-v, head) (the order of qkv's columns) in a layer's kv viewed as
        # (2 * B * H * capacity, head_dim), less the slot
        kv_b_h = torch.arange(2 * batch * cfg.n_heads, device=p.device).view(2, batch, cfg.n_heads)
        self._row_heads = kv_b_h.transpose(0, 1).reshape(batch, -1) * self.capacity
        norms = [m for block in model.blocks for m in (block.norm1, block.norm2)] + [model.norm]
        if any(n.eps != 1e-5 for n in norms):
            raise ValueError("the decode step assumes LayerNorm eps 1e-5")
        self._max_distance = cfg.max_relative_distance
        self._tables = (self.embed_table, self.embed_offsets, model.project_in.bias.detach(), self._arange,
                        self._row_heads, model.norm.weight.detach(), model.norm.bias.detach())
        self._weights = tuple(tuple(getattr(w, f.name) for f in fields(StepWeights))
                              for w in self.layers)
        self._relative = [block.attention.relative.detach() for block in model.blocks]
        self._bounds = [0] * batch  # host-side upper bounds of ``lengths`` (no sync): keys read per step
        self._layer_rows = torch.arange(cfg.n_layers, device=p.device)[:, None] * self.kv[0].numel() // self.head_dim

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
        x = self.embed_table[window + self.embed_offsets].sum(1) + self._tables[2]
        h = encode_window(x, self._weights, self._tables, self._relative, self.kv[:, :, rows[0]])
        length = window.size(0)
        if len(rows) > 1:  # the same window in every row (a prefill): copy the first row's
            self.kv[:, :, rows[1:], :, :length] = self.kv[:, :, rows[:1], :, :length]
        self.lengths[rows] = length
        for row in rows:
            self._bounds[row] = length
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
        span = min(max(self._bounds) + 1, self.capacity)  # keys past every row's length are masked: not read
        self.record(word)
        h = decode_step(word, self.lengths, self.kv, self._tables, self._weights, self._max_distance, span)
        self.n_words += keep
        self.lengths += keep
        return h

    def step_constants(self) -> tuple[tuple, tuple, int]:
        """What a decode step reads besides the cache and the lengths: the embedding and
        norm tables, each layer's :class:`StepWeights` as a tuple, the relative-distance clip."""
        return self._tables, self._weights, self._max_distance

    def record(self, word: torch.Tensor) -> None:
        """Write ``word`` (B, fields) into each row's history at its length, before the
        step that appends it (and grow the host-side bounds of the lengths)."""
        self._max_words += 1  # an upper bound of n_words, known without a host sync
        self._reserve(self._max_words + 1)
        self.history[self._rows, self.n_words] = word
        self._bounds = [min(n + 1, self.capacity) for n in self._bounds]

    def write_keys(self, rows: torch.Tensor) -> None:
        """Write the new word's keys and values, (layers, B, 2 * d) from
        :func:`decode_step_pure`, at each row's slot (before the lengths grow)."""
        flat = (self._layer_rows + (self._row_heads + self.lengths.clamp(max=self.capacity - 1)[:, None]).flatten())
        self.kv.view(-1, self.head_dim).index_copy_(0, flat.flatten(), rows.reshape(-1, self.head_dim))


def step_inputs(word: torch.Tensor, lengths: torch.Tensor, kv: torch.Tensor, tables: tuple, max_distance: int,
                see_slot: bool, span: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What both steps start from: the new word's embedding x (B, d), each row's cache
    slot (B,), the relative-distance index (B, H, 1, span) and the key mask
    (B, 1, 1, span), -inf past the slot (and at it unless ``see_slot``: the pure step
    attends to the new key on its own); ``span`` (<= capacity) covers every row's slot."""
    embed_table, embed_offsets, embed_bias = tables[:3]
    arange = tables[3][:span]
    b, heads, cap = word.size(0), kv.size(3), span
    x = embed_table[word + embed_offsets].sum(1) + embed_bias
    slot = lengths.clamp(max=kv.size(4) - 1)
    distance = (slot[:, None] - arange).clamp(0, max_distance - 1)
    gather = distance[:, None, None, :].expand(b, heads, 1, cap)
    hidden = arange > slot[:, None] if see_slot else arange >= slot[:, None]
    mask = torch.zeros((b, 1, 1, cap), device=x.device, dtype=x.dtype).masked_fill(hidden[:, None, None, :], float("-inf"))
    return x, slot, gather, mask


def decode_step(word: torch.Tensor, lengths: torch.Tensor, kv: torch.Tensor, tables: tuple, weights: tuple,
                max_distance: int, span: int | None = None) -> torch.Tensor:
    """The model's step for one new word per row, a pure function of tensors (but for
    the new keys and values written into ``kv`` (layers, 2, B, H, capacity, head_dim) at
    each row's slot ``min(lengths, capacity - 1)``): word (B, fields) -> h (B, d).
    ``tables`` and ``weights`` are laid out by :class:`Decoder`. Attention reads the first
    ``span`` slots (all by default)."""
    row_heads, norm_w, norm_b = tables[4:]
    b, heads, cap, hd = word.size(0), kv.size(3), span or kv.size(4), kv.size(5)
    d = heads * hd
    x, slot, gather, mask = step_inputs(word, lengths, kv, tables, max_distance, see_slot=True, span=cap)
    flat = (row_heads + slot[:, None]).flatten()
    for layer, (n1w, n1b, qkv_t, qkv_b, rel_t, out_t, out_b, n2w, n2b, up_t, up_b, down_t, down_b) in enumerate(weights):
        a = F.layer_norm(x, (d,), n1w, n1b, 1e-5)
        qkv = torch.addmm(qkv_b, a, qkv_t)  # q comes scaled by 1/sqrt(head_dim)
        cache = kv[layer]
        cache.view(-1, hd).index_copy_(0, flat, qkv[:, d:].reshape(-1, hd))
        q = qkv[:, :d].reshape(b, heads, 1, hd)
        bias = torch.matmul(q, rel_t).gather(-1, gather) + mask  # (B, H, 1, span)
        keys, values = cache[0, :, :, :cap], cache[1, :, :, :cap]
        # the fused kernel: one op, and for several rows faster than matmuls over the cache
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=1.0)
        x = torch.addmm(x, y.view(b, d), out_t) + out_b
        m = F.layer_norm(x, (d,), n2w, n2b, 1e-5)
        u = torch.addmm(up_b, m, up_t)  # up(m) / sqrt(2)
        x = torch.addmm(x, torch.addcmul(u, u, torch.erf(u)), down_t) + down_b  # GELU folded in
    return F.layer_norm(x, (d,), norm_w, norm_b, 1e-5)


def decode_step_pure(word: torch.Tensor, lengths: torch.Tensor, kv: torch.Tensor, tables: tuple, weights: tuple,
                     max_distance: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_step` without writing ``kv``: the new word's key and value enter
    the attention on their own, and come back as (layers, B, 2 * d) rows for the caller
    to write (a compiled graph that mutates a large input may copy all of it)."""
    norm_w, norm_b = tables[5:]
    b, heads, cap, hd = word.size(0), kv.size(3), kv.size(4), kv.size(5)
    d = heads * hd
    x, _, gather, mask = step_inputs(word, lengths, kv, tables, max_distance, see_slot=False, span=cap)
    rows = []
    for layer, (n1w, n1b, qkv_t, qkv_b, rel_t, out_t, out_b, n2w, n2b, up_t, up_b, down_t, down_b) in enumerate(weights):
        a = F.layer_norm(x, (d,), n1w, n1b, 1e-5)
        qkv = torch.addmm(qkv_b, a, qkv_t)
        rows.append(qkv[:, d:])
        q = qkv[:, :d].reshape(b, heads, 1, hd)
        k_new = qkv[:, d:2 * d].reshape(b, heads, 1, hd)
        v_new = qkv[:, 2 * d:].reshape(b, heads, 1, hd)
        relative = torch.matmul(q, rel_t)  # (B, H, 1, max distance)
        cache = kv[layer]
        old = torch.matmul(q, cache[0].transpose(-1, -2)) + relative.gather(-1, gather) + mask
        new = (q * k_new).sum(-1, keepdim=True) + relative[..., :1]
        p = torch.softmax(torch.cat([old, new], -1), -1)
        y = torch.matmul(p[..., :cap], cache[1]) + p[..., cap:] * v_new
        x = torch.addmm(x, y.view(b, d), out_t) + out_b
        m = F.layer_norm(x, (d,), n2w, n2b, 1e-5)
        u = torch.addmm(up_b, m, up_t)
        x = torch.addmm(x, torch.addcmul(u, u, torch.erf(u)), down_t) + down_b
    return F.layer_norm(x, (d,), norm_w, norm_b, 1e-5), torch.stack(rows)


@dataclass(frozen=True)
class StepWeights:
    """One block's weights laid out for a decode step: transposed for addmm, the
    attention's 1/sqrt(head_dim) folded into the query's columns (so the scores and the
    relative bias need no scaling op), the relative table transposed, GELU's constants
    folded into the MLP
    (gelu(v) = v/2 (1 + erf(v / sqrt 2)): up is scaled by 1/sqrt 2, down by sqrt 2 / 2)."""

    norm1_w: torch.Tensor
    norm1_b: torch.Tensor
    qkv_t: torch.Tensor
    qkv_b: torch.Tensor
    relative_t: torch.Tensor
    out_t: torch.Tensor
    out_b: torch.Tensor
    norm2_w: torch.Tensor
    norm2_b: torch.Tensor
    up_t: torch.Tensor
    up_b: torch.Tensor
    down_t: torch.Tensor
    down_b: torch.Tensor


def _step_weights(block, head_dim: int) -> StepWeights:
    attn, (up, _, down) = block.attention, block.mlp
    root = math.sqrt(0.5)
    d = attn.out.in_features
    query_scale = torch.ones(3 * d, dtype=attn.qkv.weight.dtype, device=attn.qkv.weight.device)
    query_scale[:d] = 1.0 / math.sqrt(head_dim)
    return StepWeights(
        norm1_w=block.norm1.weight, norm1_b=block.norm1.bias,
        qkv_t=(attn.qkv.weight.T * query_scale).contiguous(), qkv_b=attn.qkv.bias * query_scale,
        relative_t=attn.relative.T.contiguous(),
        out_t=attn.out.weight.T.contiguous(), out_b=attn.out.bias,
        norm2_w=block.norm2.weight, norm2_b=block.norm2.bias,
        up_t=(up.weight.T * root).contiguous(), up_b=up.bias * root,
        down_t=(down.weight.T * root).contiguous(), down_b=down.bias)


# ---------------------------------------------------------------- drawing words


class WordSampler:
    """Draws one word per row from hidden states h (B, d): family, then its fields.

    ``processors`` run after the grammar mask, in order (user constraints, then
    temperature and top-p); ``greedy`` names the fields drawn by argmax (temperature 0).
    Row i's noise comes from ``seeds[i]`` and the word index alone.

    The fields after the family are drawn together in a padded (B, 7, width) layout:
    one matmul for every head (the family's projection folded into the weights and a
    table per family value), the grammar's mask in one pass (:class:`PaddedGrammar`),
    temperature and top-p (recognised :class:`Temperature` / :class:`TopP` processors)
    for all fields with one sort, noise made ``NOISE_BLOCK`` words at a time. Other
    processors see each field's (B, V) logits as before; with any of them bar_pos is
    drawn before the other fields (a constraint may read it from ``state.current``)."""

    NOISE_BLOCK = 32

    def __init__(self, model: CPTransformer, seeds: list[int], processors: list[Processor],
                 greedy: frozenset[str] = frozenset()):
        p = next(model.parameters())
        cfg = model.config
        self.device = p.device
        self.sizes = [cfg.vocab_sizes[f] for f in FIELDS]
        self.width = width = max(self.sizes)
        n_fields = len(FIELDS)
        self.heads = fuse_heads(model)
        with torch.no_grad():
            heads, rest = self.heads, FIELDS[1:]
            d = cfg.d_model
            weight = torch.zeros((len(rest), width, d), dtype=p.dtype, device=p.device)
            table = torch.full((cfg.vocab_sizes["family"], len(rest), width), float("-inf"),
                               dtype=p.dtype, device=p.device)
            for i, f in enumerate(rest):
                head = model.heads[f]
                weight[i, :head.out_features] = head.weight @ heads.project_h
                table[:, i, :head.out_features] = heads.family_table @ head.weight.T + head.bias
            # one matmul at the family's draw gives the family logits and h's part of every field
            self.first_w = torch.cat([heads.family_w, weight.reshape(-1, d)]).contiguous()
            self.first_b = torch.cat([heads.family_b, torch.zeros(len(rest) * width, dtype=p.dtype, device=p.device)])
            self.family_table = table.reshape(table.size(0), -1).contiguous()
        self.n_family = self.sizes[0]
        self.grammar = PaddedGrammar(cfg.vocab_sizes, width, p.device)
        # which fields apply, by (family, bar_pos) drawn: (V_family * V_bar_pos, 7) bool
        family, bar_pos = torch.meshgrid(torch.arange(self.sizes[0]), torch.arange(self.sizes[1]), indexing="ij")
        current = torch.full((family.numel(), n_fields), IGNORE, dtype=torch.long)
        current[:, 0], current[:, 1] = family.flatten(), bar_pos.flatten()
        self.applies_table = torch.stack([applies(current, f) for f in rest], 1).to(p.device)
        # the pipeline: grammar, then processors; Temperature / TopP run on every field at once
        self.custom = any(not isinstance(q, (Temperature, TopP)) for q in processors)
        self.pipeline = [(q, *_stage(q, p.device)) for q in processors]
        self.greedy = greedy
        self.keys = row_keys(torch.tensor(seeds, dtype=torch.long, device=p.device))
        offsets = np.cumsum([0] + self.sizes[:-1])
        columns = np.array([offsets[i] + (v if v < n else 0) for i, n in enumerate(self.sizes) for v in range(width)])
        self.columns = torch.arange(sum(self.sizes), device=p.device)
        self.padded_columns = torch.as_tensor(columns, device=p.device)
        self.noise_scale = torch.tensor([0.0 if f in greedy else 1.0 for f in FIELDS for _ in range(width)],
                                        device=p.device)
        self._block = (-1, None)
        # from a word's family draw to its fields' draw: the word's noise, h's part of the fields' logits
        self.pending_noise: torch.Tensor | None = None
        self.pending_rest: torch.Tensor | None = None

    def noise_for(self, word_index: int) -> torch.Tensor:
        """(B, n_fields, width) Gumbel noise of word ``word_index`` (0 where greedy)."""
        first = word_index - word_index % self.NOISE_BLOCK
        if self._block[0] != first:
            noise = gumbel_block(self.keys, first, self.NOISE_BLOCK, self.columns)
            noise = noise[:, :, self.padded_columns] * self.noise_scale
            self._block = (first, noise.view(self.NOISE_BLOCK, len(self.keys), len(FIELDS), self.width))
        return self._block[1][word_index - first]

    def family(self, h: torch.Tensor, state: WordState, word_index: int) -> torch.Tensor:
        """Draw the family of word ``word_index`` of every row into ``state.current``; (B,)."""
        state.begin_word()
        self.pending_noise = self.noise_for(word_index)
        self.pending_rest = self.draw_family(h, state, self.pending_noise)
        return state.current[:, COL["family"]]

    def draw_family(self, h: torch.Tensor, state: WordState, noise: torch.Tensor) -> torch.Tensor:
        """The family draw with the word's ``noise`` (B, n_fields, width) into the begun word
        ``state.current``; returns h's part of the other fields' logits, for :meth:`draw_fields`."""
        out = F.linear(h, self.first_w, self.first_b)
        logits = out[:, None, :self.n_family].float().masked_fill(~allowed(state, "family")[:, None], float("-inf"))
        value = self._process(state, logits, 0, noise)
        state.current[:, COL["family"]] = value[:, 0]
        return out[:, self.n_family:]

    def fields(self, state: WordState) -> torch.Tensor:
        """Draw the other fields of the word (every field for every row); returns the
        finished words (B, fields)."""
        return self.draw_fields(state, self.pending_rest, self.pending_noise)

    def draw_fields(self, state: WordState, rest: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """:meth:`fields` with the family draw's ``rest`` and the word's ``noise`` given."""
        current = state.current
        family = current[:, COL["family"]]
        logits = (rest + self.family_table[family]).view(-1, len(FIELDS) - 1, self.width).float()
        logits = logits.masked_fill(~self.grammar.allowed(state), float("-inf"))
        n_bar_pos = self.sizes[1]
        if not self.custom:
            value = self._process(state, logits, 1, noise)
        else:  # bar_pos first: a constraint on a later field may read it
            bar_pos = self._process(state, logits[:, :1], 1, noise)
            current[:, COL["bar_pos"]] = torch.where(family == FAMILY_METRIC, bar_pos[:, 0], IGNORE)
            value = torch.cat([bar_pos, self._process(state, logits[:, 1:], 2, noise)], 1)
        keep = self.applies_table[family * n_bar_pos + value[:, 0]]
        current[:, 1:] = torch.where(keep, value, IGNORE)
        return current

    def _process(self, state: WordState, logits: torch.Tensor, first: int, noise: torch.Tensor) -> torch.Tensor:
        """Processors then the draw for fields ``first ..`` (logits (B, n, width), grammar
        applied) with the word's ``noise``; (B, n) values."""
        n = logits.size(1)
        copied = False
        for q, factor, cuts in self.pipeline:
            if isinstance(q, Temperature):
                logits = logits / factor[first:first + n]
            elif isinstance(q, TopP):
                if any(cuts[first:first + n]):  # else nothing to cut
                    logits = top_p_rows(logits, factor[first:first + n])
            else:
                if not copied:
                    logits, copied = logits.clone(), True
                for i in range(n):
                    size = self.sizes[first + i]
                    view = logits[:, i, :size]
                    out = q(state, FIELDS[first + i], view)
                    if out is not view:
                        view.copy_(out)
        return torch.argmax(logits + noise[:, first:first + n, :logits.size(2)], dim=-1)


def _stage(q: Processor, device: torch.device) -> tuple[torch.Tensor | None, tuple[bool, ...]]:
    """A processor's place in the pipeline: its factor per field, (n_fields, 1) float32 (a
    Temperature's divisor, 1 for temperature 0; a TopP's share, inf for 1), and whether
    each field has a nucleus to cut (a TopP below 1). Kept by position, not by ``id(q)``,
    and as tensors and flags rather than values: a compiled step guards on what it reads."""
    if isinstance(q, Temperature):
        values = [t if t > 0 else 1.0 for t in (q.values[f] for f in FIELDS)]
    elif isinstance(q, TopP):
        values = [v if v < 1.0 else float("inf") for v in (q.values[f] for f in FIELDS)]
    else:
        return None, (False,) * len(FIELDS)
    factor = torch.tensor(values, dtype=torch.float32, device=device)[:, None]
    return factor, tuple(isinstance(q, TopP) and v < float("inf") for v in values)
