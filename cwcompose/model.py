"""The Compound Word Transformer with Music-Transformer relative self-attention.

Each word is one token per field; per-field embeddings (of different widths) are
concatenated and projected to ``d_model``. Decoder blocks attend causally with a
learned embedding per relative distance (Huang et al. 2018, "skewing"), and no
absolute position encoding, so the model runs on windows longer than it saw in
training. The family of the next word is predicted from the hidden state ``h``;
every other field from ``concat(h, embedding(family))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cwcompose.attention import SkewScratch, causal_relative_attention
from cwcompose.jsonconfig import JsonConfig
from cwcompose.tokenizer import FIELDS, IGNORE, PAD

DEFAULT_EMBED_WIDTHS = {
    "family": 32, "bar_pos": 64, "tempo": 64, "chord": 64, "rest": 64,
    "pitch": 256, "duration": 128, "velocity": 128,
}


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """Shape of a CP Transformer; ``vocab_sizes`` comes from the tokenizer."""

    vocab_sizes: dict[str, int] = field(default_factory=dict)
    embed_widths: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EMBED_WIDTHS))
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1  # on embeddings and residual branches
    attention_dropout: float = 0.0  # on attention weights: costs a (B, H, L, L) mask per layer
    context: int = 1024  # words the model sees: the training window and the decoder's cache
    max_relative_distance: int = 512  # distances beyond share the last embedding

    def __post_init__(self) -> None:
        problems = []
        if set(self.vocab_sizes) != set(FIELDS):
            problems.append(f"vocab_sizes must name the fields {FIELDS}")
        if set(self.embed_widths) != set(FIELDS):
            problems.append(f"embed_widths must name the fields {FIELDS}")
        if any(v < 3 for v in self.vocab_sizes.values()) or any(w < 1 for w in self.embed_widths.values()):
            problems.append("vocab sizes must be >= 3 and widths >= 1")
        if self.d_model < 1 or self.n_heads < 1 or self.d_model % self.n_heads:
            problems.append("d_model must be a positive multiple of n_heads")
        if self.n_layers < 1 or self.d_ff < 1 or self.max_relative_distance < 1:
            problems.append("n_layers, d_ff and max_relative_distance must be >= 1")
        if self.context < 2:
            problems.append("context must be >= 2 words")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.attention_dropout < 1.0:
            problems.append("dropout and attention_dropout must be in [0, 1)")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Configs written before ``context`` existed (the 256-word v1 models) saw exactly
        ``max_relative_distance`` words and dropped attention weights at ``dropout``."""
        data = dict(data)
        if "context" not in data:
            data["context"] = data.get("max_relative_distance", 256)
            data.setdefault("attention_dropout", data.get("dropout", 0.1))
        return super().from_dict(data)


def skew(relative_logits: torch.Tensor) -> torch.Tensor:
    """Music Transformer's skewing: (..., Lq, Lk) logits indexed by relative distance
    (column c <-> distance Lk-1-c) -> logits indexed by key position. Queries are the
    last Lq of the Lk positions; entries above the causal diagonal are garbage."""
    *batch, lq, lk = relative_logits.shape
    padded = F.pad(relative_logits, (1, 0))
    return padded.reshape(*batch, lq * (lk + 1))[..., lq:].reshape(*batch, lq, lk)


def causal_mask(lq: int, lk: int, device: torch.device) -> torch.Tensor:
    """(Lq, Lk) bool, True where query i (the (Lk-Lq+i)-th position) may see key j."""
    query_pos = torch.arange(lk - lq, lk, device=device)[:, None]
    return torch.arange(lk, device=device)[None, :] <= query_pos


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, capacity: int,
                 device: torch.device, dtype: torch.dtype = torch.float32):
        shape = (batch, n_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.capacity, self.length = capacity, 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values for ``layer``; return all keys/values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.capacity:
            raise RuntimeError(f"KV cache full ({self.capacity} words); re-encode a shorter window")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class RelativeSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, scratch: SkewScratch | None = None):
        super().__init__()
        self.scratch = scratch or SkewScratch()  # reused while training, see SkewScratch
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.relative = nn.Parameter(torch.randn(cfg.max_relative_distance, self.head_dim) * 0.02)
        self.dropout = cfg.attention_dropout

    def relative_table(self, length: int) -> torch.Tensor:
        """(length, head_dim) embeddings for distances length-1 .. 0 (clipped at the maximum)."""
        distance = torch.arange(length - 1, -1, -1, device=self.relative.device)
        return self.relative[distance.clamp(max=self.relative.size(0) - 1)]

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, lq, d = x.shape
        q, k, v = self.qkv(x).view(b, lq, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        lk = k.size(2)
        dropout = self.dropout if self.training else 0.0
        if lq == lk and dropout == 0.0:  # a whole window (training, prefill)
            # fresh buffers without autograd: inference may run on several threads at once
            scratch = self.scratch if torch.is_grad_enabled() else None
            y = causal_relative_attention(q, k, v, self.relative_table(lk), scratch)
            return self.out(y.transpose(1, 2).reshape(b, lq, d))
        bias = q @ self.relative_table(lk).to(q.dtype).T / math.sqrt(self.head_dim)
        if lq > 1:  # new queries after cached keys (or a window with attention dropout)
            bias = skew(bias).masked_fill(~causal_mask(lq, lk, x.device), float("-inf"))
        # else: one new query sees every cached key, no skew or mask needed
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(b, lq, d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, scratch: SkewScratch | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attention = RelativeSelfAttention(cfg, scratch)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x), cache, layer))
        return x + self.drop(self.mlp(self.norm2(x)))


class CPTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.ModuleDict({f: nn.Embedding(cfg.vocab_sizes[f], cfg.embed_widths[f]) for f in FIELDS})
        self.project_in = nn.Linear(sum(cfg.embed_widths.values()), cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        scratch = SkewScratch()  # one for all layers: they run one after another
        self.blocks = nn.ModuleList(Block(cfg, scratch) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.family_head = nn.Linear(cfg.d_model, cfg.vocab_sizes["family"])
        self.project_family = nn.Linear(cfg.d_model + cfg.embed_widths["family"], cfg.d_model)
        self.heads = nn.ModuleDict({f: nn.Linear(cfg.d_model, cfg.vocab_sizes[f]) for f in FIELDS if f != "family"})

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        p = next(self.parameters())
        cfg = self.config
        return KVCache(cfg.n_layers, batch, cfg.n_heads, cfg.d_model // cfg.n_heads, capacity, p.device, p.dtype)

    def hidden(self, words: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, L, fields) token ids -> (B, L, d_model) hidden states; appends to ``cache``."""
        x = torch.cat([self.embed[f](words[..., i]) for i, f in enumerate(FIELDS)], dim=-1)
        x = self.drop(self.project_in(x))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += words.size(1)
        return self.norm(x)

    def family_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.family_head(h)

    def field_logits(self, h: torch.Tensor, family: torch.Tensor, fields: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Logits of ``fields`` of the next word, given its family (true or sampled)."""
        z = self.project_family(torch.cat([h, self.embed["family"](family)], dim=-1))
        return {f: self.heads[f](z) for f in fields}

    def forward(self, words: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits of every field of the next word at each position; with ``targets``
        (B, L, fields) also the per-field cross-entropy (Pad and Ignore masked)."""
        h = self.hidden(words)
        family = targets[..., 0] if targets is not None else self.family_logits(h).argmax(-1)
        logits = {"family": self.family_logits(h), **self.field_logits(h, family, FIELDS[1:])}
        if targets is None:
            return logits
        losses = {}
        for i, f in enumerate(FIELDS):
            target = targets[..., i]
            ignored = (target == PAD) | ((target == IGNORE) & (f != "family"))
            losses[f] = F.cross_entropy(logits[f].flatten(0, 1).float(),
                                        target.masked_fill(ignored, -100).flatten(), ignore_index=-100)
        return logits, losses


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of the per-field losses; a field with no valid target in the batch (NaN) is skipped."""
    valid = [v for v in losses.values() if not torch.isnan(v)]
    return torch.stack(valid).mean()
