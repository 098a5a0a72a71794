"""Small untrained CP Transformers for engine tests: fast, seeded, with a short context so
windows slide often."""

from __future__ import annotations

import torch

from cwcompose.model import CPTransformer, ModelConfig
from cwcompose.tokenizer import CPTokenizer


def tiny_model(context: int = 64, max_relative_distance: int = 48, seed: int = 0) -> tuple[CPTransformer, CPTokenizer]:
    tokenizer = CPTokenizer()
    torch.manual_seed(seed)
    config = ModelConfig(vocab_sizes=tokenizer.vocab_sizes, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                         dropout=0.0, max_relative_distance=max_relative_distance, context=context)
    return CPTransformer(config).eval(), tokenizer
