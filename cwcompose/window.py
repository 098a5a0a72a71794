"""Re-encoding a window into the decoder's cache (a slide, a prefill), for inference only.

A slide re-encodes hundreds of words and costs as much as a few hundred decode steps, so
its cost per word is a large part of generation at a long context. Two savings over
``model.hidden`` over the whole window, with the same arithmetic per query:

- queries in causal chunks: chunk ``[s, e)`` attends to keys ``[0, e)`` only, so the
  scores, softmax and weighted sum cover about half of the (L, L) square;
- the last layer computes keys and values for every word but attention and MLP for the
  last word only (the only hidden state the decoder needs).

The relative bias of a chunk is ``q @ table^T`` over distances ``e-1 .. 0`` laid out
in a buffer of width ``e + c`` (the last ``c`` columns -inf): row ``a`` viewed from
offset ``c-1-a`` with a row stride one less than the width holds distance ``s+a-j`` at
key ``j``, and -inf past the diagonal (:func:`chunk_bias`), as in
:func:`cwcompose.attention.skewed_view`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 128  # queries per chunk: smaller wastes less of the square, larger makes bigger matmuls


def chunk_bias(q: torch.Tensor, table: torch.Tensor, end: int) -> torch.Tensor:
    """(H, c, end) relative bias of the queries ``q`` (H, c, D) at positions ``end-c ..
    end-1`` over keys ``0 .. end-1``: q_i . table[i - j] for j <= i, -inf above.
    ``table`` (n, D) holds distances 0 .. n-1 (clipped beyond)."""
    c = q.size(1)
    distance = torch.arange(end - 1, -1, -1, device=q.device).clamp(max=table.size(0) - 1)
    width = end + c
    buffer = q.new_empty(q.size(0), c, width)
    buffer[..., end:] = float("-inf")
    torch.matmul(q, table[distance].T, out=buffer[..., :end])
    flat = buffer.flatten(-2)[:, c - 1:]
    return flat.as_strided((q.size(0), c, end), (flat.stride(0), width - 1, 1))


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                      first: int = 0) -> torch.Tensor:
    """(H, L - first, D) causal relative attention outputs of queries ``first ..`` of a
    window (q pre-scaled by 1/sqrt(D); k, v (H, L, D); ``table`` by distance)."""
    length = k.size(1)
    out = []
    for start in range(first, length, CHUNK):
        end = min(start + CHUNK, length)
        qc = q[:, start - first:end - first]
        scores = torch.baddbmm(chunk_bias(qc, table, end), qc, k[:, :end].transpose(1, 2))
        out.append(torch.bmm(torch.softmax(scores, -1), v[:, :end]))
    return torch.cat(out, 1) if len(out) > 1 else out[0]


def encode_window(x: torch.Tensor, weights: tuple, tables: tuple, relative: list[torch.Tensor],
                  kv_row: torch.Tensor) -> torch.Tensor:
    """Run the blocks over a window whose embeddings are ``x`` (L, d), writing each
    layer's keys and values into ``kv_row`` (layers, 2, H, capacity, D) at slots 0 ..
    L-1; returns the last word's final hidden state (d,). ``weights`` are the decoder's
    :class:`~cwcompose.decoder.StepWeights` tuples (q pre-scaled, GELU folded), ``relative`` each
    layer's relative embeddings by distance."""
    length, d = x.shape
    heads, hd = kv_row.size(2), kv_row.size(4)
    for layer, (n1w, n1b, qkv_t, qkv_b, _, out_t, out_b, n2w, n2b, up_t, up_b, down_t, down_b) in enumerate(weights):
        a = F.layer_norm(x, (d,), n1w, n1b, 1e-5)
        qkv = torch.addmm(qkv_b, a, qkv_t).view(length, 3, heads, hd).permute(1, 2, 0, 3)
        kv_row[layer, :, :, :length] = qkv[1:]
        first = length - 1 if layer == len(weights) - 1 else 0  # the last layer: the last word only
        y = chunked_attention(qkv[0, :, first:], qkv[1], qkv[2], relative[layer], first)
        x = torch.addmm(x[first:], y.transpose(0, 1).reshape(-1, d), out_t) + out_b
        m = F.layer_norm(x, (d,), n2w, n2b, 1e-5)
        u = torch.addmm(up_b, m, up_t)
        x = torch.addmm(x, torch.addcmul(u, u, torch.erf(u)), down_t) + down_b
    return F.layer_norm(x[-1], (d,), tables[5], tables[6], 1e-5)
