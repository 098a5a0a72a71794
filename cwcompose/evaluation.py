"""``cwcompose evaluate``: compare checkpoints by held-out loss and by the music they write.

For every checkpoint: the per-field negative log-likelihood of held-out (test-split)
songs, and the metrics of :mod:`cwcompose.metrics` on pieces composed with fixed
seeds, both from nothing and continuing the first bars of held-out songs, beside the
same metrics on excerpts of those songs. Writes ``EVALUATION.md``, ``evaluation.json``
and two plots; the same checkpoints, data and seeds give the same numbers.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import miditoolkit
import numpy as np
import torch

from cwcompose.checkpoints import SHIPPED_DIR, SHIPPED_STEPS, load_checkpoint, read_checkpoint_info, resolve_checkpoint
from cwcompose.data import TokenDataset
from cwcompose.generation import compose
from cwcompose.jsonconfig import JsonConfig
from cwcompose.metrics import (
    METRIC_LABELS, GridNotes, PieceMetrics, SpanIndex, build_span_index, excerpt, grid_notes_from_words,
    piece_metrics,
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
    primers are the first ``primer_bars`` bars of held-out songs; NLL on ``nll_windows`` windows."""

    seeds: int = 8
    bars: int = 16
    primer_bars: int = 8
    nll_windows: int = 64

    def __post_init__(self) -> None:
        if min(self.seeds, self.bars, self.primer_bars, self.nll_windows) < 1:
            raise ValueError("seeds, bars, primer_bars and nll_windows must all be at least 1")


def default_checkpoints() -> list[str]:
    """The shipped steps that exist in ``checkpoints/``."""
    return [str(s) for s in SHIPPED_STEPS if (SHIPPED_DIR / f"step{s}.safetensors").is_file()]


def checkpoint_step(name_or_path) -> int | None:
    """Training step of a checkpoint: its recorded ``step``, else the digits of ``step<N>``."""
    info = read_checkpoint_info(name_or_path)
    stem = resolve_checkpoint(name_or_path).name
    if isinstance(info.get("step"), int):
        return info["step"]
    return int(stem[4:]) if stem.startswith("step") and stem[4:].isdigit() else None


def checkpoint_label(name_or_path) -> str:
    step = checkpoint_step(name_or_path)
    return f"step{step}" if step is not None else resolve_checkpoint(name_or_path).name


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
    summary = {}
    for name in METRIC_LABELS:
        values = np.array([getattr(m, name) for m in metrics], float)
        values = values[~np.isnan(values)]
        std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        summary[name] = {"mean": float(values.mean()) if len(values) else math.nan,
                         "sem": std / math.sqrt(max(len(values), 1)), "std": std, "n": len(values)}
    return summary


def measure(pieces: list[GridNotes], tokenizer: CPTokenizer, index: SpanIndex) -> list[PieceMetrics]:
    return [piece_metrics(p, tokenizer.config, index=index) for p in pieces]


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
    real = measure(real_excerpts(held_out.songs, tokenizer, cfg.primer_bars, cfg.bars), tokenizer, index)
    results = {
        "config": cfg.to_dict(), "data": str(data_dir), "split": split, "held_out_songs": len(held_out.songs),
        "index": {"songs": index.songs, "spans": int(len(index.hashes))},
        "real": {"pieces": [m.as_dict() for m in real], "summary": summarise(real)},
        "checkpoints": [],
    }
    for name in checkpoints:
        label = checkpoint_label(name)
        log(f"{label}: held-out loss")
        model, _ = load_checkpoint(name, device=device, tokenizer_config=tokenizer.config)
        windows = held_out.fixed_windows(cfg.nll_windows, nll_window_length(name, model))
        entry = {"label": label, "step": checkpoint_step(name), "nll": held_out_nll(model, windows),
                 "pieces": {}, "summary": {}}
        log(f"{label}: composing")
        for condition, pieces in composed_pieces(model, tokenizer, primers, cfg, log).items():
            metrics = measure(pieces, tokenizer, index)
            entry["pieces"][condition] = [m.as_dict() for m in metrics]
            entry["summary"][condition] = summarise(metrics)
        entry["summary"]["pooled"] = summarise([PieceMetrics(**d) for c in CONDITIONS for d in entry["pieces"][c]])
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
}
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
        wins[min(distances, key=lambda s: (math.isnan(distances[s]), distances[s]))] += 1
    return {step: count / resamples for step, count in wins.items()}


def claim_sentence(words: str, by_step: dict, real: dict) -> tuple[str, bool]:
    """One of the author's words checked against step 28500: (sentence, supported?)."""
    step, metric, direction = CLAIMS[words]
    a, b = by_step[step]["summary"]["pooled"][metric], by_step[REFERENCE_STEP]["summary"]["pooled"][metric]
    outcome = compare(a, b, direction)
    return (f'Step {step} "{words}": {METRIC_LABELS[metric]} {a["mean"]:.3g} against {b["mean"]:.3g} at step '
            f'{REFERENCE_STEP} (real songs {real[metric]["mean"]:.3g}), {outcome}.'), outcome == "supported"


def just_right_sentence(by_step: dict, real: dict) -> tuple[str, bool]:
    """Whether step 28500 is the checkpoint closest to the real excerpts, beyond resampling
    noise: (sentence, supported?)."""
    distances = {s: distance_to_real({m: v["mean"] for m, v in e["summary"]["pooled"].items()}, real)
                 for s, e in sorted(by_step.items())}
    closest = min(distances, key=lambda s: (math.isnan(distances[s]), distances[s]))
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
    """A paragraph, from the numbers, on whether the author's observation holds."""
    by_step = {e["step"]: e for e in results["checkpoints"]}
    claims = [words for words, (step, _, _) in CLAIMS.items() if step in by_step]
    if REFERENCE_STEP not in by_step or not claims:
        evaluated = ", ".join(e["label"] for e in results["checkpoints"])
        return ("The author's observation compares steps 10000, 28500 and 80000; "
                f"this run evaluated {evaluated}, so it is not tested here.")
    real = results["real"]["summary"]
    checks = [claim_sentence(words, by_step, real) for words in claims] + [just_right_sentence(by_step, real)]
    held = sum(supported for _, supported in checks)
    overall = ("holds" if held == len(checks) else "does not hold" if held == 0
               else f"holds only in part ({held} of its {len(checks)} parts supported)")
    missing = sorted({step for step, _, _ in CLAIMS.values()} - set(by_step))
    scope = (f"Step {', '.join(map(str, missing))} was not evaluated, so only the parts about the others are "
             "tested here. ") if missing else ""
    return (f"{scope}Pooling both conditions ({2 * results['config']['seeds']} pieces per checkpoint) and calling "
            f"a difference supported only beyond {SEM_MARGIN:g} standard errors, the author's observation "
            f"{overall}. " + " ".join(sentence for sentence, _ in checks) + " " + likelihood_sentence(by_step))


# ---------------------------------------------------------------- report

DIGITS = {"h1": 2, "h4": 2, "groove_similarity": 3, "out_of_key": 3, "note_density": 1, "polyphony": 2,
          "pitch_range": 1, "repetition": 2, "longest_repeat": 1, "copying": 2}


def format_stat(stat: dict, digits: int) -> str:
    """``mean ± sem`` or ``-`` when the metric has no values."""
    if math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.{digits}f}" + ("" if math.isnan(stat["sem"]) else f" ± {stat['sem']:.{digits}f}")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def metrics_table(results: dict, condition: str) -> str:
    rows = [[e["label"]] + [format_stat(e["summary"][condition][m], DIGITS[m]) for m in METRIC_LABELS]
            for e in results["checkpoints"]]
    rows.append([f"real excerpts ({len(results['real']['pieces'])})"]
                + [format_stat(results["real"]["summary"][m], DIGITS[m]) for m in METRIC_LABELS])
    return markdown_table(["pieces"] + list(METRIC_LABELS.values()), rows)


def nll_table(results: dict) -> str:
    keys = ["total", *FIELDS]
    rows = [[e["label"]] + [f"{e['nll'][k]:.3f}" if k in e["nll"] else "-" for k in keys]
            for e in results["checkpoints"]]
    return markdown_table(["checkpoint"] + keys, rows)


def markdown_report(results: dict) -> str:
    cfg = results["config"]
    checkpoints = " ".join(e["label"] for e in results["checkpoints"])
    parts = [
        "# Evaluation of the checkpoints",
        f"Generated by `cwcompose evaluate` (checkpoints {checkpoints}; data `{results['data']}`, "
        f"{results['held_out_songs']} {results['split']} songs; seeds 0-{cfg['seeds'] - 1}; {cfg['bars']} bars; "
        f"primers of {cfg['primer_bars']} bars; default sampling). Do not edit by hand: rerun the command.",
        "## Held-out loss",
        f"Negative log-likelihood of the {results['split']} songs, nats per predicted token of each field "
        f"({cfg['nll_windows']} fixed windows starting at bar lines; total = mean over fields).",
        nll_table(results),
        "## Music",
        "Mean ± standard error over pieces. Metrics (`cwcompose/metrics.py`): H1/H4 pitch-class entropy "
        "over 1/4-bar windows; GS grooving-pattern similarity; out-of-key share of notes against the "
        "Krumhansl-Schmuckler key; notes per bar; polyphony (notes sounding per onset); pitch range in "
        "semitones; share of bars repeating an earlier bar exactly; longest run of bars repeating an "
        f"earlier run; share of 4-bar spans found verbatim in the {results['index']['songs']} training songs.",
    ]
    real_bars = f"bars {cfg['primer_bars'] + 1}-{cfg['primer_bars'] + cfg['bars']}"
    for condition, words in CONDITIONS.items():
        parts += [f"### {condition.capitalize()}: {cfg['seeds']} pieces {words}",
                  f"Real excerpts: {real_bars} of every {results['split']} song (the bars that follow the primers).",
                  metrics_table(results, condition)]
    parts += ["## Does the author's observation hold?", verdict(results),
              "![Metrics per checkpoint](eval_metrics.png)", "![Held-out loss per field](eval_nll.png)"]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- plots and files


def plot_metrics(results: dict, path: Path) -> None:
    """One panel per metric: a bar per checkpoint and condition (± sem), real songs dashed."""
    from matplotlib.figure import Figure

    labels = [e["label"] for e in results["checkpoints"]]
    x, width = np.arange(len(labels)), 0.8 / len(CONDITIONS)
    fig = Figure(figsize=(16, 6.5))
    axes = fig.subplots(2, (len(METRIC_LABELS) + 1) // 2)
    for ax, metric in zip(axes.flat, METRIC_LABELS):
        for k, condition in enumerate(CONDITIONS):
            stats = [e["summary"][condition][metric] for e in results["checkpoints"]]
            ax.bar(x + (k - (len(CONDITIONS) - 1) / 2) * width, [s["mean"] for s in stats], width,
                   yerr=np.nan_to_num([s["sem"] for s in stats]), capsize=3, label=condition)
        ax.axhline(results["real"]["summary"][metric]["mean"], color="black", linestyle="--", linewidth=1,
                   label="real excerpts")
        ax.set_title(METRIC_LABELS[metric], fontsize=10)
        ax.set_xticks(x, labels, fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_nll(results: dict, path: Path) -> None:
    """Held-out NLL per field, one bar per checkpoint."""
    from matplotlib.figure import Figure

    keys = ["total", *FIELDS]
    x, width = np.arange(len(keys)), 0.8 / max(len(results["checkpoints"]), 1)
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    for k, entry in enumerate(results["checkpoints"]):
        offset = (k - (len(results["checkpoints"]) - 1) / 2) * width
        ax.bar(x + offset, [entry["nll"].get(key, np.nan) for key in keys], width, label=entry["label"])
    ax.set_xticks(x, keys)
    ax.set_ylabel("nats per token")
    ax.set_title("Held-out negative log-likelihood per field")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_loss_curves(csv_path: str | Path, path: str | Path) -> None:
    """Per-field train (solid) and validation (dashed) loss against the step, from ``loss.csv``."""
    import csv

    from matplotlib.figure import Figure

    with Path(csv_path).open() as fh:
        rows = list(csv.DictReader(fh))
    steps = np.array([int(r["step"]) for r in rows])
    fig = Figure(figsize=(14, 6.5))
    axes = fig.subplots(2, (len(FIELDS) + 2) // 2)
    for ax, key in zip(axes.flat, ["total", *FIELDS]):
        for split, style in (("train", "-"), ("valid", "--")):
            values = np.array([float(r[f"{split}_{key}"]) for r in rows])
            ax.plot(steps, values, style, label=split)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
    for ax in axes.flat[len(FIELDS) + 1:]:
        ax.axis("off")
    axes.flat[0].set_ylabel("nats per token")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def jsonable(value):
    """NaN -> None, recursively, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def write_report(results: dict, out_dir: str | Path) -> Path:
    """``EVALUATION.md``, ``evaluation.json``, ``eval_metrics.png`` and ``eval_nll.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(jsonable(results), indent=1) + "\n")
    plot_metrics(results, out_dir / "eval_metrics.png")
    plot_nll(results, out_dir / "eval_nll.png")
    report = out_dir / "EVALUATION.md"
    report.write_text(markdown_report(results))
    return report
