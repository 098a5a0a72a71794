"""The evaluation report: ``EVALUATION.md``, ``evaluation.json`` and the plots, all made
from the results of :func:`cwcompose.evaluation.evaluate` (nothing in them is typed by hand)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from cwcompose.evaluation import CONDITIONS, MIN_FIELD_TARGETS
from cwcompose.verdicts import generations_paragraph, verdict
from cwcompose.coherence import CLOSE_REPEAT_JACCARD, COHERENCE_LABELS, LONG_FORM_LABELS, REPEAT_LOOKBACK
from cwcompose.metrics import METRIC_LABELS, VARIETY_LABELS
from cwcompose.tokenizer import FIELDS

# ---------------------------------------------------------------- report

DIGITS = {"h1": 2, "h4": 2, "groove_similarity": 3, "out_of_key": 3, "note_density": 1, "polyphony": 2,
          "pitch_range": 1, "repetition": 2, "longest_repeat": 1, "copying": 2}
COHERENCE_DIGITS = {"out_of_key_vs_primer": 3, "same_key": 2, "close_repeats": 3, "exact_repeats": 3,
                    "repetition": 3, "density_ratio": 2}
LONG_FORM_DIGITS = {"drift": 3, "dead_bars": 2, "exact_loops": 2, "close_loops": 2, "note_density": 1}


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


def variety_table(results: dict) -> str:
    stats = [(e["label"], e["variety"]) for e in results["checkpoints"]]
    stats.append((f"real excerpts ({results['real']['variety']['rhythm']['n']} songs)", results["real"]["variety"]))
    rows = [[label] + [format_stat(v[name], 3) for name in VARIETY_LABELS] for label, v in stats]
    return markdown_table(["pieces"] + list(VARIETY_LABELS.values()), rows)


def coherence_table(results: dict) -> str:
    real = results["real"]["coherence"]
    rows = [[e["label"], str(len(e["coherence"]["pieces"]))]
            + [format_stat(e["coherence"]["summary"][m], COHERENCE_DIGITS[m]) for m in COHERENCE_LABELS]
            for e in results["checkpoints"]]
    rows.append(["real continuations", str(len(real["pieces"]))]
                + [format_stat(real["summary"][m], COHERENCE_DIGITS[m]) for m in COHERENCE_LABELS])
    return markdown_table(["pieces", "n"] + list(COHERENCE_LABELS.values()), rows)


def coherence_gap_table(results: dict) -> str:
    """Each checkpoint's mean minus the real continuations' mean, per coherence measure."""
    real = results["real"]["coherence"]["summary"]
    rows = [[e["label"]] + [f"{e['coherence']['summary'][m]['mean'] - real[m]['mean']:+.{COHERENCE_DIGITS[m]}f}"
                            if not math.isnan(e["coherence"]["summary"][m]["mean"] - real[m]["mean"]) else "-"
                            for m in COHERENCE_LABELS] for e in results["checkpoints"]]
    return markdown_table(["checkpoint − real"] + list(COHERENCE_LABELS.values()), rows)


def long_form_table(results: dict, measure: str) -> str:
    """``measure`` per chunk: a row per checkpoint's long piece, and the real songs' mean ± sem."""
    entries = [e for e in results["checkpoints"] if "long_form" in e]
    chunk = results["config"]["long_form_chunk"]
    count = max([len(e["long_form"]["chunks"]) for e in entries] + [len(results["real"]["long_form"])])
    header = [f"bars {k * chunk + 1}-{(k + 1) * chunk}" for k in range(count)]
    digits = LONG_FORM_DIGITS[measure]
    rows = []
    for e in entries:
        cells = [f"{c[measure]:.{digits}f}" if c[measure] is not None and not math.isnan(c[measure]) else "-"
                 for c in e["long_form"]["chunks"]]
        rows.append([e["label"]] + cells + [""] * (count - len(cells)))
    real = results["real"]["long_form"]
    rows.append(["real songs"] + [f"{format_stat(c[measure], digits)} ({c['songs']})" for c in real]
                + [""] * (count - len(real)))
    return markdown_table([LONG_FORM_LABELS[measure]] + header, rows)


def coherence_section(results: dict) -> list[str]:
    cfg, real = results["config"], results["real"]
    songs = len(real["coherence"]["pieces"])
    parts = [
        "## Coherence with the primer",
        f"The first {cfg['primer_bars']} bars of the first {songs} {results['split']} songs long enough "
        f"({', '.join(results['coherence_songs'])}) are continued by {cfg['bars']} bars with seeds "
        f"0-{cfg['seeds'] - 1}, beside the real continuations of the same songs (bars {cfg['primer_bars'] + 1}-"
        f"{cfg['primer_bars'] + cfg['bars']}; bars before a song's first note are left out of its primer, as a "
        "primer's words leave them out). Mean ± standard error over pieces. Measures (`cwcompose/metrics.py`, "
        "`coherence_metrics`): the continuation's out-of-key share against the key estimated from the primer; "
        "the share of continuations whose estimated key (tonic and mode) is the primer's; the share of the "
        f"continuation's bars with notes that closely repeat one of the {REPEAT_LOOKBACK} bars before them "
        f"(Jaccard similarity ≥ {CLOSE_REPEAT_JACCARD:g} of their sets of (onset position, pitch class); the primer's "
        "bars count as bars before) and that repeat one exactly (every note's position, pitch and duration); "
        "repeated bars as above (an earlier bar of the continuation alone); notes per bar of the continuation ÷ "
        "notes per bar of the primer.",
        coherence_table(results),
        "Distance of each checkpoint from the real continuations (checkpoint mean − real mean):",
        coherence_gap_table(results),
        "### Across generations",
        generations_paragraph(results),
    ]
    entries = [e for e in results["checkpoints"] if "long_form" in e]
    if entries:
        chunk = cfg["long_form_chunk"]
        lengths = ", ".join(f"{e['label']} {e['long_form']['bars']} bars" for e in entries)
        parts += [
            "## Long form",
            f"One piece of {cfg['long_form_bars']} bars per checkpoint (seed 0) continuing the primer of song "
            f"{results['long_form_song']} (written: {lengths}), measured in chunks of {chunk} bars: drift = "
            "out-of-key share against the primer's key; dead bars = share of bars without notes; loops = share of "
            f"the bars with notes that repeat one of the {REPEAT_LOOKBACK} bars before them exactly, or closely "
            f"(Jaccard ≥ {CLOSE_REPEAT_JACCARD:g} as above). One piece per checkpoint: single values, no error "
            f"bars. Real songs: the same measures on every {results['split']} song's chunks after its primer, "
            f"mean ± standard error over the songs that fill the chunk (their count in brackets); few songs "
            f"reach far. See eval_long_form.png.",
            *[long_form_table(results, m) for m in LONG_FORM_LABELS],
            "![Coherence and long form per checkpoint](eval_long_form.png)",
        ]
    return parts


def nll_table(results: dict) -> str:
    keys = ["total", *FIELDS]
    rows = [[e["label"]] + [f"{e['nll'][k]:.3f}" if k in e["nll"] else "-" for k in keys]
            for e in results["checkpoints"]]
    return markdown_table(["checkpoint"] + keys, rows)


def markdown_report(results: dict, curves: dict | None = None) -> str:
    """The whole EVALUATION.md; ``curves`` (from :func:`lowest_validation`) adds the training curves."""
    cfg = results["config"]
    checkpoints = " ".join(e["label"] for e in results["checkpoints"])
    parts = [
        "# Evaluation of the checkpoints",
        f"Generated by `cwcompose evaluate` (checkpoints {checkpoints}; data `{results['data']}`, "
        f"{results['held_out_songs']} {results['split']} songs; seeds 0-{cfg['seeds'] - 1}; {cfg['bars']} bars; "
        f"primers of {cfg['primer_bars']} bars; default sampling). Do not edit by hand: rerun the command.",
        "## Held-out loss",
        f"Negative log-likelihood of the {results['split']} songs, nats per predicted token of each field "
        f"({cfg['nll_windows']} fixed windows starting at bar lines; total = mean over fields). A field "
        f"with fewer than {MIN_FIELD_TARGETS} targets in the windows is left out (-): its mean would be a few "
        "tokens' noise (the rare Rest word), or the checkpoint has no such field.",
        nll_table(results),
        *(["### During training",
           "Validation loss logged by `cwcompose train` every 500 steps (nats per token; see loss.png).",
           curves_table(curves)] if curves else []),
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
    parts += ["### Variety across seeds",
              f"How unlike each other the {cfg['seeds']} pieces from nothing are: the mean total-variation "
              "distance between the pitch-class histograms (and the histograms of onset positions in the bar) "
              "of every pair of pieces, 0 = all alike, 1 = nothing shared; ± a leave-one-piece-out standard "
              "error. Real excerpts: every pair of different songs.",
              variety_table(results)]
    parts += coherence_section(results)
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


def plot_coherence(results: dict, path: Path) -> None:
    """Top row: each coherence measure per checkpoint (± sem), real continuations dashed.
    Bottom row: the long-form measures per chunk, a line per checkpoint, real songs dashed."""
    from matplotlib.figure import Figure

    entries = results["checkpoints"]
    labels = [e["label"] for e in entries]
    x = np.arange(len(labels))
    fig = Figure(figsize=(15, 6.5))
    top = [m for m in COHERENCE_LABELS if m != "repetition"]
    bottom = [m for m in LONG_FORM_LABELS if m != "note_density"]
    axes = fig.subplots(2, max(len(top), len(bottom)))
    real = results["real"]["coherence"]["summary"]
    for ax, metric in zip(axes[0], top):
        stats = [e["coherence"]["summary"][metric] for e in entries]
        ax.bar(x, [s["mean"] for s in stats], 0.7, yerr=np.nan_to_num([s["sem"] for s in stats]), capsize=3,
               color=[f"C{k}" for k in range(len(entries))])
        ax.axhline(real[metric]["mean"], color="black", linestyle="--", linewidth=1, label="real continuations")
        ax.set_title(COHERENCE_LABELS[metric], fontsize=10)
        ax.set_xticks(x, labels, fontsize=7, rotation=20)
    axes[0][0].legend(fontsize=7)
    chunk = results["config"]["long_form_chunk"]
    for ax, measure in zip(axes[1], bottom):
        for k, e in enumerate(entries):
            if "long_form" in e:
                chunks = e["long_form"]["chunks"]
                ax.plot([c["first_bar"] + c["bars"] / 2 for c in chunks],
                        [np.nan if c[measure] is None else c[measure] for c in chunks], "o-", color=f"C{k}",
                        markersize=3, label=e["label"])
        real_chunks = results["real"]["long_form"]
        ax.plot([c["first_bar"] + chunk / 2 for c in real_chunks], [c[measure]["mean"] for c in real_chunks],
                "k--", label="real songs")
        ax.set_title(f"long form: {LONG_FORM_LABELS[measure]}", fontsize=10)
        ax.set_xlabel("bar after the primer", fontsize=8)
    axes[1][0].legend(fontsize=7)
    for ax in list(axes[0][len(top):]) + list(axes[1][len(bottom):]):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=72)


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


def read_loss_csv(csv_path: str | Path) -> list[dict[str, float]]:
    """The rows of a training ``loss.csv`` (see ``cwcompose train``), every value a float."""
    with Path(csv_path).open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def lowest_validation(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per field (and total): the lowest validation loss in nats per token, the step it was
    logged at, and the last logged value; fields never validated are left out."""
    lowest = {}
    for key in ["total", *FIELDS]:
        logged = [(r[f"valid_{key}"], int(r["step"])) for r in rows if not math.isnan(r[f"valid_{key}"])]
        if logged:
            value, step = min(logged)
            lowest[key] = {"lowest": value, "step": step, "last": logged[-1][0], "last_step": logged[-1][1]}
    return lowest


def curves_table(lowest: dict[str, dict[str, float]]) -> str:
    rows = [[key, f"{v['lowest']:.3f}", str(v["step"]), f"{v['last']:.3f} at step {v['last_step']}"]
            for key, v in lowest.items()]
    return markdown_table(["field", "lowest validation loss", "at step", "last"], rows)


def plot_loss_curves(rows: list[dict[str, float]], path: str | Path) -> None:
    """Per-field train (solid) and validation (dashed) loss against the step, from ``loss.csv`` rows."""
    from matplotlib.figure import Figure

    steps = np.array([r["step"] for r in rows])
    fig = Figure(figsize=(14, 6.5))
    axes = fig.subplots(2, (len(FIELDS) + 2) // 2)
    for ax, key in zip(axes.flat, ["total", *FIELDS]):
        for split, style in (("train", "-"), ("valid", "--")):
            ax.plot(steps, [r[f"{split}_{key}"] for r in rows], style, label=split)
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


def write_report(results: dict, out_dir: str | Path, loss_csv: str | Path | None = None) -> Path:
    """``EVALUATION.md``, ``evaluation.json``, ``eval_metrics.png``, ``eval_nll.png`` and
    ``eval_long_form.png`` (coherence and long form) in
    ``out_dir``; with a training ``loss_csv``, also ``loss.png`` and a table of its lowest points."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(jsonable(results), indent=1) + "\n")
    plot_metrics(results, out_dir / "eval_metrics.png")
    plot_nll(results, out_dir / "eval_nll.png")
    plot_coherence(results, out_dir / "eval_long_form.png")
    curves = None
    if loss_csv is not None:
        rows = read_loss_csv(loss_csv)
        plot_loss_curves(rows, out_dir / "loss.png")
        curves = lowest_validation(rows)
    report = out_dir / "EVALUATION.md"
    report.write_text(markdown_report(results, curves))
    return report
