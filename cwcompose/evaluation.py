"""``cwcompose evaluate``: compare checkpoints by held-out loss and by the music they write.

For every checkpoint: the per-field negative log-likelihood of held-out (test-split)
songs, and the metrics of :mod:`cwcompose.metrics` on pieces composed with fixed
seeds, both from nothing and continuing the first bars of held-out songs, beside the
same metrics on excerpts of those songs. How differently the pieces of different
seeds come out (their variety) is measured on the pieces from nothing. Coherence:
continuations of the primers of the first ``pieces`` held-out songs measured against their
primer (its key, its phrases, its density) beside the real continuations of the same songs,
and one long piece per checkpoint measured chunk by chunk. The same checkpoints, data and
seeds give the same numbers; :mod:`cwcompose.report` writes them up.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import miditoolkit
import numpy as np
import torch

from cwcompose.checkpoints import (
    OLDER_GENERATIONS, SHIPPED_DIR, load_checkpoint, read_checkpoint_info, resolve_checkpoint, shipped_names,
)
from cwcompose.data import TokenDataset
from cwcompose.generation import compose
from cwcompose.jsonconfig import JsonConfig
from cwcompose.metrics import (
    COHERENCE_LABELS, LONG_FORM_LABELS, METRIC_LABELS, VARIETY_HISTOGRAMS, VARIETY_LABELS, GridNotes, PieceMetrics,
    SpanIndex, build_span_index, coherence_metrics, excerpt, grid_notes_from_words, long_form_chunks,
    occupied_bars, piece_metrics, variety,
)
from cwcompose.model import CPTransformer
from cwcompose.sampling import DEFAULT_SAMPLING
from cwcompose.tokenizer import FIELDS, IGNORE, PAD, CPTokenizer, Score

CONDITIONS = {"unconditioned": "from nothing", "primed": "continuing a held-out primer"}
SEM_MARGIN = 2.0  # a difference counts as real beyond this many standard errors
BOOTSTRAP_RESAMPLES = 1000
CLOSEST_SHARE = 0.95  # "closest to real songs" counts when it holds in this share of resamples


class EvaluationError(ValueError):
    """The dataset cannot be evaluated on (missing, or without songs in a split)."""


@dataclass(frozen=True)
class EvalConfig(JsonConfig):
    """What to measure: ``seeds`` pieces of ``bars`` bars per condition and checkpoint;
    primers are the first ``primer_bars`` bars of held-out songs; NLL on ``nll_windows`` windows.
    Coherence: the primers of the first ``pieces`` held-out songs, each continued with every
    seed; long form: one piece of ``long_form_bars`` bars (0: none) measured in chunks of
    ``long_form_chunk`` bars."""

    seeds: int = 8
    bars: int = 16
    primer_bars: int = 8
    nll_windows: int = 64
    pieces: int = 16
    long_form_bars: int = 300
    long_form_chunk: int = 30

    def __post_init__(self) -> None:
        if min(self.seeds, self.bars, self.primer_bars, self.nll_windows, self.pieces, self.long_form_chunk) < 1:
            raise ValueError("seeds, bars, primer_bars, nll_windows, pieces and long_form_chunk must all be at least 1")
        if self.long_form_bars < 0:
            raise ValueError("long_form_bars must be at least 0 (0: no long-form piece)")


def default_checkpoints() -> list[str]:
    """Every shipped checkpoint, the new generation beside the older ones (``v1/28500``)."""
    return shipped_names()


def checkpoint_step(name_or_path) -> int | None:
    """Training step of a checkpoint: its recorded ``step``, else the digits of ``step<N>``."""
    info = read_checkpoint_info(name_or_path)
    stem = resolve_checkpoint(name_or_path).name
    if isinstance(info.get("step"), int):
        return info["step"]
    return int(stem[4:]) if stem.startswith("step") and stem[4:].isdigit() else None


def checkpoint_generation(name_or_path) -> str:
    """Which generation a checkpoint belongs to: an older shipped one's folder name (``"v1"``),
    ``""`` for the newest shipped one, else the folder that holds it."""
    folder = resolve_checkpoint(name_or_path).parent.resolve()
    if folder == SHIPPED_DIR.resolve():
        return ""
    if folder.name in OLDER_GENERATIONS and folder.parent == SHIPPED_DIR.resolve():
        return folder.name
    return str(folder)


def generation_age(generation: str) -> int:
    """0 for the newest shipped or an unshipped generation, 1 + its place in OLDER_GENERATIONS
    for an older shipped one (higher = older)."""
    return OLDER_GENERATIONS.index(generation) + 1 if generation in OLDER_GENERATIONS else 0


def checkpoint_label(name_or_path) -> str:
    """``step<N>`` (``v1/step<N>`` for an older shipped generation), or the checkpoint's name."""
    step = checkpoint_step(name_or_path)
    label = f"step{step}" if step is not None else resolve_checkpoint(name_or_path).name
    generation = checkpoint_generation(name_or_path)
    return f"{generation}/{label}" if generation in OLDER_GENERATIONS else label


def unique_labels(names: list[str]) -> list[str]:
    """:func:`checkpoint_label` of each, with its folder's name in front where two would read alike."""
    labels = [checkpoint_label(n) for n in names]
    return [f"{Path(checkpoint_generation(n)).name}/{label}"
            if labels.count(label) > 1 and checkpoint_generation(n) not in ("", *OLDER_GENERATIONS) else label
            for n, label in zip(names, labels)]


# ---------------------------------------------------------------- held-out loss


@torch.no_grad()
def held_out_nll(model: CPTransformer, windows: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Per-field NLL in nats per predicted token over ``windows`` (B, L + 1, fields), each
    field averaged over all its valid targets (the model's own Pad / Ignore mask), plus
    ``total``, the mean over fields (as in training)."""
    model.eval()
    sums, counts = dict.fromkeys(FIELDS, 0.0), dict.fromkeys(FIELDS, 0)
    device = next(model.parameters()).device
    for chunk in windows.to(device).split(batch_size):
        _, losses = model(chunk[:, :-1], chunk[:, 1:])
        for i, f in enumerate(FIELDS):
            target = chunk[:, 1:, i]
            n = int(((target != PAD) & ((target != IGNORE) | (f == "family"))).sum())
            if n:  # weighting by count turns per-chunk means into one mean over tokens
                sums[f] += losses[f].item() * n
                counts[f] += n
    per_field = {f: sums[f] / counts[f] for f in FIELDS if counts[f]}
    return {"total": float(np.mean(list(per_field.values()))), **per_field}


def nll_window_length(name_or_path, model: CPTransformer) -> int:
    """Words per window: the checkpoint's training ``seq_len`` when recorded, plus the target."""
    train = read_checkpoint_info(name_or_path).get("train") or {}
    return int(train.get("seq_len", model.config.max_relative_distance)) + 1


# ---------------------------------------------------------------- held-out music


def primer_midi(words: np.ndarray, tokenizer: CPTokenizer, bars: int) -> miditoolkit.MidiFile:
    """The first ``bars`` bars of a song's words, decoded to MIDI (notes, tempo, chords)."""
    score = tokenizer.decode_score(words)
    limit = bars * tokenizer.config.positions_per_bar
    return tokenizer.score_to_midi(Score(notes=[n for n in score.notes if n.onset < limit],
                                         tempo_at={p: t for p, t in score.tempo_at.items() if p < limit},
                                         chord_at={p: c for p, c in score.chord_at.items() if p < limit}))


def real_excerpts(songs: list[np.ndarray], tokenizer: CPTokenizer, first_bar: int, bars: int) -> list[GridNotes]:
    """Bars ``first_bar .. first_bar + bars - 1`` of every song long enough to hold them."""
    notes = [grid_notes_from_words(s, tokenizer.config) for s in songs]
    return [excerpt(n, first_bar, bars) for n in notes if n.bars >= first_bar + bars]


def composed_pieces(model: CPTransformer, tokenizer: CPTokenizer, primers: list, cfg: EvalConfig,
                    log=None) -> dict[str, list[GridNotes]]:
    """Pieces of ``cfg.bars`` bars for seeds 0..seeds-1 in each condition; a primed piece
    is its continuation only (bars after the primer, a bar the primer left open excluded)."""
    pieces: dict[str, list[GridNotes]] = {c: [] for c in CONDITIONS}
    for condition in CONDITIONS:
        for seed in range(cfg.seeds):
            primer = primers[seed % len(primers)] if condition == "primed" else None
            started = time.perf_counter()
            piece = compose(model, tokenizer, primer=primer, primer_bars=cfg.primer_bars, bars=cfg.bars,
                            sampling=DEFAULT_SAMPLING, seed=seed)
            notes = grid_notes_from_words(piece.words, tokenizer.config)
            pieces[condition].append(excerpt(notes, piece.primer_bars, cfg.bars))
            if log:
                words = len(piece.words) - piece.primer_length
                log(f"  {condition} seed {seed}: {words} words in {time.perf_counter() - started:.1f} s")
    return pieces


def summarise(metrics: list[PieceMetrics]) -> dict[str, dict[str, float]]:
    """Mean, standard error of the mean and count of every metric, NaNs left out."""
    return summarise_rows([m.as_dict() for m in metrics], METRIC_LABELS)


def summarise_rows(rows: list[dict], names) -> dict[str, dict[str, float]]:
    """Mean, standard error of the mean, standard deviation and count of ``rows[i][name]``
    for every name, NaNs and Nones left out."""
    summary = {}
    for name in names:
        values = np.array([np.nan if r[name] is None else r[name] for r in rows], float)
        values = values[~np.isnan(values)]
        std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        summary[name] = {"mean": float(values.mean()) if len(values) else math.nan,
                         "sem": std / math.sqrt(max(len(values), 1)), "std": std, "n": len(values)}
    return summary


def measure(pieces: list[GridNotes], tokenizer: CPTokenizer, index: SpanIndex) -> list[PieceMetrics]:
    return [piece_metrics(p, tokenizer.config, index=index) for p in pieces]


def measure_variety(pieces: list[GridNotes]) -> dict[str, dict[str, float]]:
    """Every variety of ``pieces`` (see :data:`VARIETY_LABELS`): mean pairwise distance ± sem."""
    return {name: variety(pieces, histogram) for name, histogram in VARIETY_HISTOGRAMS.items()}


# ---------------------------------------------------------------- coherence with the primer, long form


def as_primed(notes: GridNotes, primer_bars: int) -> tuple[GridNotes, int]:
    """A song as a primed piece holds it: the bars before its first note dropped (a primer's
    words start at its first bar with notes), and how many primer bars are left."""
    occupied = np.flatnonzero(occupied_bars(notes)[:primer_bars])
    first = int(occupied[0]) if len(occupied) else 0
    return excerpt(notes, first, notes.bars - first), primer_bars - first


def coherence_songs(songs: list[GridNotes], cfg: EvalConfig) -> list[int]:
    """The first ``cfg.pieces`` songs with notes in their primer and at least
    ``primer_bars + bars`` bars: their primers are continued, their real continuations measured."""
    fitting = [i for i, notes in enumerate(songs) if notes.bars >= cfg.primer_bars + cfg.bars
               and occupied_bars(notes)[:cfg.primer_bars].any()]
    return fitting[:cfg.pieces]


def real_coherence(songs: list[GridNotes], cfg: EvalConfig) -> list[dict]:
    """:func:`coherence_metrics` of each song's first ``bars`` bars after its primer."""
    rows = []
    for notes in songs:
        song, primer_bars = as_primed(notes, cfg.primer_bars)
        rows.append(coherence_metrics(excerpt(song, 0, primer_bars + cfg.bars), primer_bars, cfg.bars).as_dict())
    return rows


def composed_coherence(model: CPTransformer, tokenizer: CPTokenizer, primers: list[tuple[int, miditoolkit.MidiFile]],
                       cfg: EvalConfig, log=None) -> list[dict]:
    """Every (song, primer) continued by ``cfg.bars`` bars with seeds 0..seeds-1, each piece's
    :func:`coherence_metrics` (with its song and seed)."""
    rows = []
    for song, primer in primers:
        for seed in range(cfg.seeds):
            started = time.perf_counter()
            piece = compose(model, tokenizer, primer=primer, primer_bars=cfg.primer_bars, bars=cfg.bars,
                            sampling=DEFAULT_SAMPLING, seed=seed)
            notes = excerpt(grid_notes_from_words(piece.words, tokenizer.config), 0, piece.primer_bars + cfg.bars)
            rows.append({"song": song, "seed": seed,
                         **coherence_metrics(notes, piece.primer_bars, cfg.bars).as_dict()})
            if log:
                log(f"  coherence song {song} seed {seed}: {time.perf_counter() - started:.1f} s")
    return rows


def composed_long_form(model: CPTransformer, tokenizer: CPTokenizer, primer: miditoolkit.MidiFile,
                       cfg: EvalConfig, log=None) -> dict:
    """One piece of ``cfg.long_form_bars`` bars continuing ``primer`` (seed 0), measured in chunks."""
    started = time.perf_counter()
    piece = compose(model, tokenizer, primer=primer, primer_bars=cfg.primer_bars, bars=cfg.long_form_bars,
                    sampling=DEFAULT_SAMPLING, seed=0)
    notes = excerpt(grid_notes_from_words(piece.words, tokenizer.config), 0, piece.primer_bars + piece.bars)
    if log:
        log(f"  long form: {piece.bars} bars, {len(piece.words) - piece.primer_length} words in "
            f"{time.perf_counter() - started:.1f} s")
    return {"bars": piece.bars, "words": len(piece.words) - piece.primer_length, "music_seconds": piece.seconds,
            "chunks": long_form_chunks(notes, piece.primer_bars, cfg.long_form_chunk)}


def real_long_form(songs: list[GridNotes], cfg: EvalConfig) -> list[dict]:
    """Per chunk of ``cfg.long_form_chunk`` bars after the primer: the mean ± sem of every
    :data:`LONG_FORM_LABELS` measure over the songs long enough to fill that chunk."""
    per_chunk: list[list[dict]] = []
    for notes in songs:
        song, primer_bars = as_primed(notes, cfg.primer_bars)
        for k, chunk in enumerate(long_form_chunks(song, primer_bars, cfg.long_form_chunk)):
            if chunk["bars"] == cfg.long_form_chunk:
                per_chunk += [[] for _ in range(k + 1 - len(per_chunk))]
                per_chunk[k].append(chunk)
    return [{"first_bar": k * cfg.long_form_chunk, "bars": cfg.long_form_chunk, "songs": len(rows),
             **summarise_rows(rows, LONG_FORM_LABELS)} for k, rows in enumerate(per_chunk) if rows]


# ---------------------------------------------------------------- the whole evaluation


def load_split(data_dir: str | Path, split: str) -> TokenDataset:
    try:
        return TokenDataset.load(data_dir, split)
    except (OSError, ValueError) as err:
        raise EvaluationError(f"cannot read split {split!r} of {data_dir}: {err}") from err


def evaluate(checkpoints: list[str], data_dir: str | Path, cfg: EvalConfig, split: str = "test",
             device: str = "cpu", log=None) -> dict:
    """Measure every checkpoint and the held-out songs of ``split``; returns a JSON-able dict."""
    log = log or (lambda message: print(message, file=sys.stderr))
    held_out, train_set = load_split(data_dir, split), load_split(data_dir, "train")
    tokenizer = CPTokenizer(held_out.tokenizer_config)
    index = build_span_index(train_set.songs, tokenizer.config)
    primers = [primer_midi(s, tokenizer, cfg.primer_bars) for s in held_out.songs]
    excerpts = real_excerpts(held_out.songs, tokenizer, cfg.primer_bars, cfg.bars)
    real = measure(excerpts, tokenizer, index)
    songs = [grid_notes_from_words(s, tokenizer.config) for s in held_out.songs]
    chosen = coherence_songs(songs, cfg)
    if not chosen:
        raise EvaluationError(f"no {split} song has notes in its first {cfg.primer_bars} bars and "
                              f"{cfg.primer_bars + cfg.bars} bars in all")
    real_rows = [{"song": i, **row} for i, row in zip(chosen, real_coherence([songs[i] for i in chosen], cfg))]
    results = {
        "config": cfg.to_dict(), "data": str(data_dir), "split": split, "held_out_songs": len(held_out.songs),
        "index": {"songs": index.songs, "spans": int(len(index.hashes))},
        "coherence_songs": [held_out.names[i] for i in chosen], "long_form_song": held_out.names[chosen[0]],
        "real": {"pieces": [m.as_dict() for m in real], "summary": summarise(real),
                 "variety": measure_variety(excerpts),
                 "coherence": {"pieces": real_rows, "summary": summarise_rows(real_rows, COHERENCE_LABELS)},
                 "long_form": real_long_form(songs, cfg)},
        "checkpoints": [],
    }
    for name, label in zip(checkpoints, unique_labels(checkpoints)):
        log(f"{label}: held-out loss")
        model, _ = load_checkpoint(name, device=device, tokenizer_config=tokenizer.config)
        windows = held_out.fixed_windows(cfg.nll_windows, nll_window_length(name, model))
        entry = {"label": label, "step": checkpoint_step(name), "generation": checkpoint_generation(name),
                 "nll": held_out_nll(model, windows), "pieces": {}, "summary": {}}
        log(f"{label}: composing")
        for condition, pieces in composed_pieces(model, tokenizer, primers, cfg, log).items():
            metrics = measure(pieces, tokenizer, index)
            entry["pieces"][condition] = [m.as_dict() for m in metrics]
            entry["summary"][condition] = summarise(metrics)
            if condition == "unconditioned":  # primed pieces vary with their primers, not only their seeds
                entry["variety"] = measure_variety(pieces)
        entry["summary"]["pooled"] = summarise([PieceMetrics(**d) for c in CONDITIONS for d in entry["pieces"][c]])
        log(f"{label}: coherence with {len(chosen)} primers")
        rows = composed_coherence(model, tokenizer, [(i, primers[i]) for i in chosen], cfg, log)
        entry["coherence"] = {"pieces": rows, "summary": summarise_rows(rows, COHERENCE_LABELS)}
        if cfg.long_form_bars:
            log(f"{label}: long form")
            entry["long_form"] = composed_long_form(model, tokenizer, primers[chosen[0]], cfg, log)
        results["checkpoints"].append(entry)
    return results


# ---------------------------------------------------------------- the author's observation

# The author's words about each step -> (step, metric, direction against step 28500).
CLAIMS = {
    "too light": (10000, "note_density", -1),
    "off-key": (10000, "out_of_key", +1),
    "lacking variation: more repeated bars": (80000, "repetition", +1),
    "lacking variation: more copying from training songs": (80000, "copying", +1),
    "lacking variation: lower 4-bar pitch-class entropy": (80000, "h4", -1),
    "lacking variation: pieces of different seeds more alike in pitch classes": (80000, "pitch_classes", -1),
    "lacking variation: pieces of different seeds more alike in rhythm": (80000, "rhythm", -1),
}
LABELS = {**METRIC_LABELS, **VARIETY_LABELS}
REFERENCE_STEP = 28500


def compare(a: dict, b: dict, direction: int) -> str:
    """Whether summary ``a`` differs from ``b`` in ``direction`` (+1 higher, -1 lower):
    supported beyond SEM_MARGIN standard errors, within noise, or contradicted."""
    difference = a["mean"] - b["mean"]
    noise = math.sqrt(np.nansum([a["sem"] ** 2, b["sem"] ** 2]))
    if math.isnan(difference):
        return "undetermined (no values)"
    if difference * direction > SEM_MARGIN * noise:
        return "supported"
    if difference * direction > 0:
        return "in that direction but within noise"
    return "contradicted" if abs(difference) > SEM_MARGIN * noise else "no clear difference"


def distance_to_real(means: dict[str, float], real: dict) -> float:
    """Mean over metrics of |checkpoint mean - real mean| / spread of the real excerpts
    (in real-song standard deviations); ``means`` maps metric -> checkpoint mean."""
    gaps = [abs(means[m] - real[m]["mean"]) / real[m]["std"] for m in METRIC_LABELS
            if real[m]["std"] > 0 and not math.isnan(means[m] - real[m]["mean"])]
    return float(np.mean(gaps)) if gaps else math.nan


def pooled_values(entry: dict) -> np.ndarray:
    """A checkpoint's pieces of both conditions as an array (pieces, metrics), NaN where undefined."""
    pieces = [d for c in CONDITIONS for d in entry["pieces"][c]]
    return np.array([[piece[m] for m in METRIC_LABELS] for piece in pieces], float)


def closest_shares(by_step: dict, real: dict, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[int, float]:
    """Share of bootstrap resamples (each checkpoint's pieces drawn with replacement) in
    which each checkpoint is the one closest to the real excerpts; fixed seed."""
    rng = np.random.default_rng(0)
    values = {step: pooled_values(entry) for step, entry in sorted(by_step.items())}
    wins = dict.fromkeys(values, 0)
    for _ in range(resamples):
        distances = {}
        for step, table in values.items():
            sample = table[rng.integers(0, len(table), len(table))]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a metric undefined in every drawn piece
                means = dict(zip(METRIC_LABELS, np.nanmean(sample, axis=0)))
            distances[step] = distance_to_real(means, real)
        wins[closest_step(distances)] += 1
    return {step: count / resamples for step, count in wins.items()}


def closest_step(distances: dict[int, float]) -> int:
    """The step with the smallest distance to the real excerpts (NaN counts as farthest)."""
    return min(distances, key=lambda s: (math.isnan(distances[s]), distances[s]))


def claim_stat(summary: dict, varieties: dict, metric: str) -> dict:
    """Mean ± sem of ``metric``: a variety, or a per-piece metric from ``summary``."""
    return varieties[metric] if metric in VARIETY_LABELS else summary[metric]


def claim_sentence(words: str, by_step: dict, real: dict) -> tuple[str, bool]:
    """One of the author's words checked against step 28500: (sentence, supported?)."""
    step, metric, direction = CLAIMS[words]
    a, b = (claim_stat(by_step[s]["summary"]["pooled"], by_step[s]["variety"], metric) for s in (step, REFERENCE_STEP))
    real_mean = claim_stat(real["summary"], real["variety"], metric)["mean"]
    outcome = compare(a, b, direction)
    return (f'Step {step} "{words}": {LABELS[metric]} {a["mean"]:.3g} against {b["mean"]:.3g} at step '
            f'{REFERENCE_STEP} (real songs {real_mean:.3g}), {outcome}.'), outcome == "supported"


def just_right_sentence(by_step: dict, real: dict) -> tuple[str, bool]:
    """Whether step 28500 is the checkpoint closest to the real excerpts, beyond resampling
    noise: (sentence, supported?)."""
    distances = {s: distance_to_real({m: v["mean"] for m, v in e["summary"]["pooled"].items()}, real)
                 for s, e in sorted(by_step.items())}
    closest = closest_step(distances)
    shares = closest_shares(by_step, real)
    if shares[REFERENCE_STEP] >= CLOSEST_SHARE:
        outcome = "supported"
    elif closest == REFERENCE_STEP:
        outcome = "in that direction but within noise"
    else:
        outcome = "contradicted" if shares[closest] >= CLOSEST_SHARE else "no clear difference"
    listed = ", ".join(f"{d:.2f} at step {s}" for s, d in distances.items())
    share_list = ", ".join(f"{100 * share:.0f}% step {s}" for s, share in shares.items())
    return (f'Step {REFERENCE_STEP} "just right": the mean distance of the metrics to the real excerpts '
            f"(in real-song standard deviations) is {listed}; the closest in {BOOTSTRAP_RESAMPLES} bootstrap "
            f"resamples of the pieces is {share_list}, so, counting it only at {100 * CLOSEST_SHARE:.0f}%, "
            f"this part is {outcome}."), outcome == "supported"


def likelihood_sentence(by_step: dict) -> str:
    """Whether the held-out loss rises after step 28500, as over-fitting would make it."""
    steps = sorted(by_step)
    totals = ", ".join(f"{by_step[s]['nll']['total']:.3f} at step {s}" for s in steps)
    sentence = f"Held-out loss (nats per token, mean over fields) is {totals}."
    if REFERENCE_STEP not in by_step or steps[-1] <= REFERENCE_STEP:
        return sentence
    last, reference = by_step[steps[-1]]["nll"], by_step[REFERENCE_STEP]["nll"]
    fields = [f for f in FIELDS if f in last and f in reference]
    lower = sum(last[f] < reference[f] for f in fields)
    if last["total"] < reference["total"]:
        return (f"{sentence} Step {steps[-1]} is lower than step {REFERENCE_STEP} in {lower} of {len(fields)} "
                "fields, so by likelihood it is not over-fitted on these held-out songs.")
    if last["total"] > reference["total"]:
        return (f"{sentence} Step {steps[-1]} is higher than step {REFERENCE_STEP} (lower in only {lower} of "
                f"{len(fields)} fields), as over-fitting would make it.")
    return sentence


def verdict(results: dict) -> str:
    """From the numbers, whether the author's observation holds: one paragraph, or one per
    generation of checkpoints (oldest first) when the run holds several."""
    groups: dict[str, list[dict]] = {}
    for entry in results["checkpoints"]:
        groups.setdefault(entry.get("generation", ""), []).append(entry)
    if len(groups) <= 1:
        return generation_verdict(results)
    paragraphs = []
    for generation, entries in sorted(groups.items(), key=lambda g: -generation_age(g[0])):
        name = f"generation {generation}" if generation else "the newest generation"
        paragraphs.append(f"**{', '.join(e['label'] for e in entries)}** ({name}): "
                          + generation_verdict({**results, "checkpoints": entries}))
    return "\n\n".join(paragraphs)


def generation_verdict(results: dict) -> str:
    """A paragraph, from the numbers, on whether the author's observation holds for the
    checkpoints of ``results`` (one per step)."""
    by_step = {e["step"]: e for e in results["checkpoints"]}
    claims = [words for words, (step, _, _) in CLAIMS.items() if step in by_step]
    if REFERENCE_STEP not in by_step or not claims:
        evaluated = ", ".join(e["label"] for e in results["checkpoints"])
        return ("The author's observation compares steps 10000, 28500 and 80000; "
                f"this run evaluated {evaluated}, so it is not tested here.")
    real = results["real"]
    checks = ([claim_sentence(words, by_step, real) for words in claims]
              + [just_right_sentence(by_step, real["summary"])])
    held = sum(supported for _, supported in checks)
    overall = ("holds" if held == len(checks) else "does not hold" if held == 0
               else f"holds only in part ({held} of its {len(checks)} parts supported)")
    missing = sorted({step for step, _, _ in CLAIMS.values()} - set(by_step))
    scope = (f"Step {', '.join(map(str, missing))} was not evaluated, so only the parts about the others are "
             "tested here. ") if missing else ""
    return (f"{scope}Pooling both conditions ({2 * results['config']['seeds']} pieces per checkpoint) and calling "
            f"a difference supported only beyond {SEM_MARGIN:g} standard errors, the author's observation "
            f"{overall}. " + " ".join(sentence for sentence, _ in checks) + " " + likelihood_sentence(by_step))


# ---------------------------------------------------------------- across generations

# What "closer to the real continuations" is judged on, per aspect of coherence.
ASPECTS = {"key adherence": ("out_of_key_vs_primer", "same_key"),
           "phrase repetition": ("close_repeats", "exact_repeats")}


def generation_pairs(entries: list[dict]) -> list[tuple[dict, dict]]:
    """(older, newer) checkpoint entries with the same step from different generations: the
    older is the one of the oldest shipped generation (the first given when that does not tell)."""
    by_step: dict[int, list[dict]] = {}
    for entry in entries:
        if entry.get("step") is not None:
            by_step.setdefault(entry["step"], []).append(entry)
    pairs = []
    for step in sorted(by_step):
        group = sorted(by_step[step], key=lambda e: -generation_age(e.get("generation", "")))  # stable
        pairs += [(group[0], e) for e in group[1:] if e.get("generation") != group[0].get("generation")]
    return pairs


def closer_to_real(new: dict, old: dict, real: dict) -> tuple[bool, bool]:
    """(is ``new``'s mean nearer ``real``'s than ``old``'s is?, is the change in distance beyond
    SEM_MARGIN standard errors of the two checkpoints?)."""
    gap_new, gap_old = abs(new["mean"] - real["mean"]), abs(old["mean"] - real["mean"])
    noise = math.sqrt(np.nansum([new["sem"] ** 2, old["sem"] ** 2]))
    return bool(gap_new < gap_old), bool(abs(gap_new - gap_old) > SEM_MARGIN * noise)


def pair_sentence(old: dict, new: dict, real: dict) -> str:
    """Whether ``new`` is closer than ``old`` to the real continuations on key adherence and on
    phrase repetition, in plain words (``NOT closer`` where it is not)."""
    clauses, verdicts = [], []
    for aspect, metrics in ASPECTS.items():
        parts, closer_count = [], 0
        for m in metrics:
            a, b, r = new["coherence"]["summary"][m], old["coherence"]["summary"][m], real[m]
            if any(math.isnan(s["mean"]) for s in (a, b, r)):
                parts.append(f"{COHERENCE_LABELS[m]} undetermined (no values)")
                continue
            closer, beyond = closer_to_real(a, b, r)
            closer_count += closer
            parts.append(f"{COHERENCE_LABELS[m]} {a['mean']:.3f} against {b['mean']:.3f} (real {r['mean']:.3f}): "
                         f"{'closer' if closer else 'NOT closer'}, {'beyond' if beyond else 'within'} noise")
        clauses.append(f"{aspect}: " + "; ".join(parts))
        verdicts.append(f"{'closer' if closer_count == len(metrics) else 'NOT closer'} to the real continuations on "
                        f"{aspect}" + ("" if closer_count in (0, len(metrics))
                                       else f" (closer on {closer_count} of its {len(metrics)} measures)"))
    return (f"{new['label']} against {old['label']}: {verdicts[0]}, and {verdicts[1]}. "
            f"In numbers, {new['label']} against {old['label']}, " + ". ".join(clauses) + ".")


def generations_paragraph(results: dict) -> str:
    """One :func:`pair_sentence` per step evaluated in more than one generation, or why there is none."""
    pairs = generation_pairs(results["checkpoints"])
    if not pairs:
        return ("No step was evaluated in two generations of checkpoints (this run: "
                f"{', '.join(e['label'] for e in results['checkpoints'])}), so no pair is compared.")
    real = results["real"]["coherence"]["summary"]
    return " ".join(pair_sentence(old, new, real) for old, new in pairs)

