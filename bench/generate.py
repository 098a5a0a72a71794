"""Generation speed of the batched engine on this machine (1 thread by default).

    OMP_NUM_THREADS=1 .venv/bin/python bench/generate.py [--checkpoint 28500] [--words 1000] [--long 10000]
        [--compile [--compare-eager]] [--rounds 2]

Prints single-stream words/s (batch 1), 8-variation aggregate words/s (batch 8), the time
per word around word 1k and around word ``--long`` (flat cost = unlimited length), a
16-bar compose from a cold engine, and where the time goes: the model's step alone at a
steady-state context (no sampling, no grammar) beside the time it takes merely to read
the weights and the cache that step reads (the memory floor); at a short context the
step's time is the cost of its ~70 PyTorch ops, not of the data they read. Exits 1 when a target is missed: single stream >= 2,000
words/s, 8 variations >= 5,000 words/s, per-word time at 10k / at 1k <= 1.25. Measured on a
shared machine the figures are indicative only (the load average is printed beside them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from cwcompose.checkpoints import CheckpointError, load_checkpoint
from cwcompose.decoder import Decoder, WordSampler, decode_step
from cwcompose.fused import FusedWords, finish_word, warm_up, worth_compiling
from cwcompose.generation import compose
from cwcompose.grammar import WordState
from cwcompose.model import CPTransformer, ModelConfig
from cwcompose.sampling import DEFAULT_SAMPLING, sampling_processors
from cwcompose.tokenizer import BAR, FAMILY_METRIC, FIELDS, IGNORE, CPTokenizer

TARGETS = {"single": 2000.0, "batch8": 5000.0, "flatness": 1.25}


def load(name: str | None) -> tuple[CPTransformer, CPTokenizer, str]:
    if name:
        try:
            model, tokenizer = load_checkpoint(name, device="cpu")
            return model, tokenizer, f"checkpoint {name}"
        except CheckpointError as err:
            print(f"({err}; using a random model)")
    tokenizer = CPTokenizer()
    return CPTransformer(ModelConfig(vocab_sizes=tokenizer.vocab_sizes)).eval(), tokenizer, "random default model"


@torch.inference_mode()
def run_words(model: CPTransformer, batch: int, n_words: int, seed: int = 0, compile: bool = False) -> list[float]:
    """Draw ``n_words`` words per row (no bar limit), eagerly or (``compile``, where
    iter_compose would) one compiled call per word; wall time (s) at which each was done."""
    opening = np.array([[FAMILY_METRIC, BAR] + [IGNORE] * (len(FIELDS) - 2)])
    state = WordState.start(opening, batch=batch, bars=10**9, from_primer=False, vocab_sizes=model.config.vocab_sizes)
    decoder = Decoder(model, batch)
    sampler = WordSampler(model, [seed + i for i in range(batch)], sampling_processors(DEFAULT_SAMPLING))
    fused = FusedWords(decoder, sampler) if compile and worth_compiling(sampler, batch) else None
    family = sampler.family(decoder.prefill(opening), state, 0)
    stamps, t0 = [], time.perf_counter()
    for index in range(n_words):
        _, lengths = torch.stack([family, decoder.lengths]).tolist()  # the one sync per word
        decoder.slide(decoder.full_rows(lengths, [False] * batch))
        family = finish_word(decoder, sampler, fused, state, index)
        stamps.append(time.perf_counter() - t0)
    return stamps


def timed_ms(fn, repeats: int = 300) -> float:
    for _ in range(20):
        fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1000


@torch.inference_mode()
def step_floor(model: CPTransformer, batch: int, context: int = 900) -> tuple[float, float]:
    """The eager model step alone for ``batch`` rows of ``context`` cached words, and the
    time to read the weights and that cache once (ms): what a word costs before sampling."""
    decoder = Decoder(model, batch)
    decoder.lengths.fill_(context)
    word = torch.zeros((batch, len(FIELDS)), dtype=torch.long)
    tables, weights, max_distance = decoder.step_constants()
    step = timed_ms(lambda: decode_step(word, decoder.lengths, decoder.kv, tables, weights, max_distance, context + 1))
    cache = decoder.kv[..., :context, :].contiguous()
    flat = torch.cat([w.flatten() for layer in weights for w in layer])
    return step, timed_ms(lambda: (cache.sum(), flat.sum()))


def per_word_ms(stamps: list[float], around: int, span: int = 500) -> float:
    lo, hi = max(around - span, 1), min(around + span, len(stamps)) - 1
    return (stamps[hi] - stamps[lo]) / (hi - lo) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="28500")
    parser.add_argument("--words", type=int, default=1000)
    parser.add_argument("--long", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true",
                        help="one compiled graph per word for one stream (cwcompose.fused; compile time printed)")
    parser.add_argument("--compare-eager", action="store_true", help="with --compile: also the eager step, interleaved")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the throughput runs (best kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, what = load(args.checkpoint)
    print(f"model: {what}, {model.num_parameters() / 1e6:.2f} M parameters, context {model.config.context} words, "
          f"{torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.2f} "
          f"(a loaded machine: figures indicative only)")
    if args.compile:
        print(f"compile (one row; 8 variations stay eager): {warm_up(model):.1f} s", flush=True)
    variants = [("compiled" if args.compile else "eager", args.compile)]
    if args.compile and args.compare_eager:
        variants.append(("eager", False))
    results = {name: {} for name, _ in variants}
    for name, compiled in variants:
        run_words(model, 1, 50, compile=compiled)  # warm-up
    for round_ in range(args.rounds):  # interleaved A/B: the machine's load drifts
        for name, compiled in variants:
            r = results[name]
            r.setdefault("single", []).append(args.words / run_words(model, 1, args.words, compile=compiled)[-1])
            r.setdefault("batch8", []).append(8 * args.words / run_words(model, 8, args.words, compile=compiled)[-1])
    for name, compiled in variants:
        r = results[name]
        stamps = run_words(model, 1, args.long, compile=compiled)
        r["at_1k"], r["at_long"] = per_word_ms(stamps, 1000), per_word_ms(stamps, args.long - 500)
    started = time.perf_counter()
    piece = compose(model, tokenizer, bars=16, seed=0)
    compose_s = time.perf_counter() - started
    for name, _ in variants:
        r = results[name]
        single, batch8 = max(r["single"]), max(r["batch8"])
        r["single"], r["batch8"] = single, batch8
        print(f"[{name}] single stream: {single:,.0f} words/s (target >= {TARGETS['single']:,.0f}); "
              f"8 variations: {batch8:,.0f} words/s aggregate (target >= {TARGETS['batch8']:,.0f}); best of {args.rounds}")
        print(f"[{name}] per-word time: {r['at_1k']:.3f} ms around word 1000, {r['at_long']:.3f} ms around word "
              f"{args.long - 500} (ratio {r['at_long'] / r['at_1k']:.2f}, target <= {TARGETS['flatness']})")
    if len(variants) == 2:
        c, e = results["compiled"], results["eager"]
        print(f"compiled / eager: single {c['single'] / e['single']:.2f}x, 8 variations {c['batch8'] / e['batch8']:.2f}x")
    print(f"compose 16 bars (the CLI's eager path, engine built cold): {len(piece.words)} words in {compose_s:.2f} s; "
          f"load average now {os.getloadavg()[0]:.2f}")
    for batch, context in ((1, 100), (1, 900), (8, 900)):
        step, floor = step_floor(model, batch, context)
        print(f"where a word's time goes, {batch} row(s) at context {context}: the model's step alone {step:.3f} ms "
              f"(<= {batch * 1000 / step:,.0f} words/s with free sampling); reading its weights and cache "
              f"{floor:.3f} ms (<= {batch * 1000 / floor:,.0f} words/s)")
    single, batch8, at_1k, at_long = (results[variants[0][0]][k] for k in ("single", "batch8", "at_1k", "at_long"))
    missed = [name for name, ok in (("single", single >= TARGETS["single"]), ("batch8", batch8 >= TARGETS["batch8"]),
                                     ("flatness", at_long / at_1k <= TARGETS["flatness"])) if not ok]
    if missed:
        print(f"missed targets: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
