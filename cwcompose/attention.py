"""Causal relative self-attention over a whole window, with a hand-written backward.

Training at 1024 words is bound by memory traffic on (B, H, L, L) tensors, not by
arithmetic: autograd through the skew (pad, reshape, slice) and through
``scaled_dot_product_attention``'s float-mask path fills, copies and scans about a
dozen such tensors per layer. Here the forward keeps only the attention weights P,
and the backward writes each gradient once:

    S  = q k^T + skew(q E^T)          (q already scaled by 1/sqrt(head_dim); -inf above the diagonal)
    P  = softmax(S)
    y  = P v
    dS = P * (dP - rowsum(dP * P)),    dP = dy v^T
    dq = dS k + unskew(dS) E,  dk = dS^T q,  dv = P^T dy,  dE = sum_bh unskew(dS)^T q

``skew`` and ``unskew`` are the same strided view of one (L, 2L) buffer per (batch,
head): row i of the key-indexed matrix starts at flat offset i*(2L-1) + L-1, so
column j of it is column L-1-i+j (distance i-j) of the distance-indexed matrix, and
the columns it reaches past L-1 (j > i) are the -inf causal padding.
"""

from __future__ import annotations

import torch


def skewed_view(buffer: torch.Tensor) -> torch.Tensor:
    """(..., L, 2L) contiguous buffer -> (..., L, L) view whose (i, j) is buffer[i, L-1-i+j]."""
    *batch, length, width = buffer.shape
    assert width == 2 * length and buffer.is_contiguous()
    flat = buffer.flatten(-2)[..., length - 1: length - 1 + length * (2 * length - 1)]
    return flat.unflatten(-1, (length, 2 * length - 1))[..., :length]


class SkewScratch:
    """The two (B, H, L, 2L) buffers of the skew, kept from one training step to the next.
    Only the forward's left half and the backward's skewed view are written per call, so the
    forward's right half stays -inf (the causal padding) and the cells of the backward's
    buffer that its view never reaches stay 0: neither is filled again. Filling them was almost
    a quarter of a 1024-word training step on the CPU (``bench/train.py``). A model's layers may
    share one: they run one after another, and each call is done with the buffer on return."""

    def __init__(self) -> None:
        self._scores: torch.Tensor | None = None
        self._gradients: torch.Tensor | None = None

    def scores(self, q: torch.Tensor) -> torch.Tensor:
        """The forward's buffer for queries ``q`` (B, H, L, D): right half -inf."""
        if not self._fits(self._scores, q):
            self._scores = self._new(q, float("-inf"))
        return self._scores

    def gradients(self, q: torch.Tensor) -> torch.Tensor:
        """The backward's buffer for queries ``q``: zero wherever its skewed view does not reach."""
        if not self._fits(self._gradients, q):
            self._gradients = self._new(q, 0.0)
        return self._gradients

    @staticmethod
    def _new(q: torch.Tensor, value: float) -> torch.Tensor:
        return q.new_full((*q.shape[:-1], 2 * q.size(-2)), value)

    @staticmethod
    def _fits(buffer: torch.Tensor | None, q: torch.Tensor) -> bool:
        return (buffer is not None and buffer.shape[:-1] == q.shape[:-1] and buffer.size(-1) == 2 * q.size(-2)
                and buffer.dtype == q.dtype and buffer.device == q.device)


class CausalRelativeAttention(torch.autograd.Function):
    """softmax(q k^T + skew(q E^T), causal) v for queries = keys = one whole window."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                scratch: SkewScratch | None) -> torch.Tensor:
        """q, k, v: (B, H, L, D), q pre-scaled; table: (L, D) embeddings of distances L-1 .. 0."""
        length = q.size(-2)
        buffer = (scratch or SkewScratch()).scores(q)
        torch.matmul(q, table.T, out=buffer[..., :length])
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores += skewed_view(buffer)
        del buffer
        weights = torch.softmax(scores, dim=-1)
        del scores
        ctx.save_for_backward(q, k, v, table, weights)
        ctx.scratch = scratch
        return weights @ v

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, table, weights = ctx.saved_tensors
        length = q.size(-2)
        grad_v = weights.transpose(-1, -2) @ grad_out
        grad_scores = grad_out @ v.transpose(-1, -2)  # dP, then dS in place
        row_dot = (grad_scores * weights).sum(-1, keepdim=True)
        grad_scores.sub_(row_dot).mul_(weights)
        del weights
        grad_q = grad_scores @ k
        grad_k = grad_scores.transpose(-1, -2) @ q
        by_distance = (ctx.scratch or SkewScratch()).gradients(q)
        skewed_view(by_distance).copy_(grad_scores)  # masked entries of dS are 0: the padding stays 0
        del grad_scores
        by_distance = by_distance[..., :length]
        grad_q += by_distance @ table
        grad_table = (by_distance.transpose(-1, -2) @ q).flatten(0, -3).sum(0)
        return grad_q, grad_k, grad_v, grad_table, None


def causal_relative_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                              scratch: SkewScratch | None = None) -> torch.Tensor:
    """(B, H, L, D) outputs of causal relative attention over a whole window; ``q`` is
    scaled by 1/sqrt(D) here. ``table`` (L, D): the relative embeddings of distances L-1 .. 0.
    ``scratch``: buffers kept from call to call (None: new ones, as concurrent callers need)."""
    return CausalRelativeAttention.apply(q * q.size(-1) ** -0.5, k, v, table.to(q.dtype), scratch)
