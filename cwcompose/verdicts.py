"""The sentences ``cwcompose evaluate`` writes from its numbers: the author's observation
about each step (10000 "too light, off-key", 28500 "just right", 80000 "lacking variation")
re-tested per generation of checkpoints, and, across generations, whether a new checkpoint
is closer to the real continuations than the old one of the same step, or NOT.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from cwcompose.coherence import COHERENCE_LABELS
from cwcompose.evaluation import CONDITIONS, generation_age
from cwcompose.metrics import METRIC_LABELS, VARIETY_LABELS
from cwcompose.tokenizer import FIELDS

SEM_MARGIN = 2.0  # a difference counts as real beyond this many standard errors
BOOTSTRAP_RESAMPLES = 1000
CLOSEST_SHARE = 0.95  # "closest to real songs" counts when it holds in this share of resamples

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

