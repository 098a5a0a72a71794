"""Generation speed on this machine, batch 1: KV cache vs. full recomputation.

    .venv/bin/python bench/generate.py [--checkpoint STEP_OR_PATH] [--words 1000] [--long 10000]

Prints words/s with the cache and with recomputation of the whole window at every
word (and their ratio) at ``--words``; seconds of music per second of compute for a
16-bar piece; the time per word around word 1k and around word ``--long`` (flat cost
means unlimited length is affordable); and peak RSS. Without a checkpoint it uses a
randomly initialised model of the default config (same cost per word).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from cwcompose.checkpoints import CheckpointError, load_checkpoint
from cwcompose.generation import Grammar, IncrementalDecoder, compose, sample_word
from cwcompose.model import CPTransformer, ModelConfig
from cwcompose.sampling import DEFAULT_SAMPLING
from cwcompose.tokenizer import BAR, FAMILY_METRIC, FIELDS, IGNORE, CPTokenizer


def load(name: str | None) -> tuple[CPTransformer, CPTokenizer, str]:
    if name:
        try:
            model, tokenizer = load_checkpoint(name, device="cpu")
            return model, tokenizer, f"checkpoint {name}"
        except CheckpointError as err:
            print(f"({err}; using a random model)")
    tokenizer = CPTokenizer()
    model = CPTransformer(ModelConfig(vocab_sizes=tokenizer.vocab_sizes)).eval()
    return model, tokenizer, "random default-config model"


@torch.inference_mode()
def run_words(model, tokenizer, n_words: int, recompute: str | None = None, seed: int = 0) -> list[float]:
    """Generate ``n_words`` words; returns the wall time (s) at which each word was done.

    ``recompute``: None uses the KV cache; "window" re-runs the model over the cache's
    window at every word; "prefix" over every word so far (what a cacheless sampler does).
    """
    grammar, generator = Grammar(tokenizer.vocab_sizes), torch.Generator().manual_seed(seed)
    start = np.array([FAMILY_METRIC, BAR] + [IGNORE] * (len(FIELDS) - 2))
    grammar.update(start)
    decoder = IncrementalDecoder(model)
    h = decoder.prefill(start[None])
    history, stamps, t0 = [start], [], time.perf_counter()
    for _ in range(n_words):
        word = sample_word(model, h, grammar, DEFAULT_SAMPLING, generator)
        grammar.update(word)
        history.append(word)
        if recompute:
            window = torch.as_tensor(np.stack(history[-decoder.capacity:] if recompute == "window" else history))[None]
            h = model.hidden(window)[0, -1]
        else:
            h = decoder.step(word)
        stamps.append(time.perf_counter() - t0)
    return stamps


def per_word_ms(stamps: list[float], around: int, span: int = 500) -> float:
    lo, hi = max(around - span, 1), min(around + span, len(stamps)) - 1
    return (stamps[hi] - stamps[lo]) / (hi - lo) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--words", type=int, default=1000)
    parser.add_argument("--long", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, what = load(args.checkpoint)
    print(f"model: {what}, {model.num_parameters() / 1e6:.2f} M parameters, window {model.config.max_relative_distance} "
          f"words, {torch.get_num_threads()} threads, device cpu")
    run_words(model, tokenizer, 50)  # warm-up
    cached = run_words(model, tokenizer, args.words)[-1]
    window = run_words(model, tokenizer, args.words, recompute="window")[-1]
    prefix = run_words(model, tokenizer, args.words, recompute="prefix")[-1]
    print(f"{args.words} words: cached {args.words / cached:.0f} words/s; recomputing the "
          f"{model.config.max_relative_distance}-word window {args.words / window:.1f} words/s ({window / cached:.1f}x slower); "
          f"recomputing the whole prefix {args.words / prefix:.1f} words/s ({prefix / cached:.1f}x slower)")
    t0 = time.perf_counter()
    piece = compose(model, tokenizer, bars=16, seed=0)
    elapsed = time.perf_counter() - t0
    print(f"16 bars: {len(piece.words)} words, {piece.seconds:.1f} s of music in {elapsed:.2f} s "
          f"= {piece.seconds / elapsed:.1f} s of music per s of compute")
    stamps = run_words(model, tokenizer, args.long)
    at_1k, at_long = per_word_ms(stamps, 1000), per_word_ms(stamps, args.long - 500)
    print(f"per-word time: {at_1k:.2f} ms around word 1000, {at_long:.2f} ms around word {args.long - 500} "
          f"(ratio {at_long / at_1k:.2f})")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
