"""`cwcompose evaluate`'s coherence measures: checkpoints across generations, and end to end on a shipped v1 model."""

from __future__ import annotations

import json
import math
import re
import shutil


from cwcompose.verdicts import generation_pairs, pair_sentence


def stat(mean: float, sem: float = 0.001) -> dict:
    return {"mean": mean, "sem": sem, "std": sem * 4, "n": 16}


def entry(label: str, step: int, generation: str, **means) -> dict:
    defaults = {"out_of_key_vs_primer": 0.05, "same_key": 0.5, "close_repeats": 0.05, "exact_repeats": 0.01,
                "repetition": 0.0, "density_ratio": 1.0}
    return {"label": label, "step": step, "generation": generation,
            "coherence": {"summary": {m: stat(v) for m, v in {**defaults, **means}.items()}}}


REAL = {m: stat(v) for m, v in {"out_of_key_vs_primer": 0.03, "same_key": 0.7, "close_repeats": 0.2,
                                "exact_repeats": 0.1, "repetition": 0.1, "density_ratio": 1.0}.items()}


def test_pairs_are_the_same_step_across_generations_older_first():
    old, new, other = entry("v1/step28500", 28500, "v1"), entry("step28500", 28500, ""), entry("step10000", 10000, "")
    assert generation_pairs([new, other, old]) == [(old, new)]
    assert generation_pairs([new, other]) == []


def test_pair_sentence_says_plainly_where_the_new_one_is_not_closer():
    old = entry("v1/step28500", 28500, "v1")
    closer_on_key = entry("step28500", 28500, "", out_of_key_vs_primer=0.035, same_key=0.65)
    text = pair_sentence(old, closer_on_key, REAL)
    assert text.startswith("step28500 against v1/step28500: closer to the real continuations on key adherence, "
                           "and NOT closer to the real continuations on phrase repetition.")
    assert "out-of-key vs primer key 0.035 against 0.050 (real 0.030): closer, beyond noise" in text
    half = entry("step28500", 28500, "", close_repeats=0.15, exact_repeats=0.0)
    assert "NOT closer to the real continuations on phrase repetition (closer on 1 of its 2 measures)" in pair_sentence(
        old, half, REAL)


def test_evaluate_reports_coherence_and_long_form_for_two_generations(tmp_path):
    """A shipped v1 model and the same weights as an unshipped checkpoint, with tiny settings."""
    from cwcompose.checkpoints import resolve_checkpoint
    from cwcompose.cli import main
    from tests.conftest import require_pop909

    pop909 = require_pop909()
    from cwcompose.data import prepare

    source = tmp_path / "songs"
    source.mkdir()
    for name in ("001", "002", "049", "073"):  # 049 and 073 fall in the test split
        (source / name).symlink_to(pop909 / name, target_is_directory=True)
    data = tmp_path / "data"
    prepare(source, data, workers=1, progress=False)
    v1 = resolve_checkpoint("v1/10000")
    copy = tmp_path / "ckpt" / "step10000"
    copy.parent.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(v1.with_suffix(suffix), copy.with_suffix(suffix))
    out = tmp_path / "docs"
    argv = ["evaluate", "v1/10000", str(copy), "--data", str(data), "--seeds", "1", "--pieces", "2", "--bars", "4",
            "--windows", "2", "--long-form-bars", "8", "--long-form-chunk", "4", "--out", str(out)]
    assert main(argv) == 0
    report = (out / "EVALUATION.md").read_text()
    results = json.loads((out / "evaluation.json").read_text())
    assert "## Coherence with the primer" in report and "## Long form" in report
    assert results["coherence_songs"] == ["049", "073"] and results["long_form_song"] == "049"
    assert [e["label"] for e in results["checkpoints"]] == ["v1/step10000", "step10000"]
    for e in results["checkpoints"]:
        pieces = e["coherence"]["pieces"]
        assert len(pieces) == 2 and {p["song"] for p in pieces} == {0, 1}
        for p in pieces:
            assert 0 <= p["out_of_key_vs_primer"] <= 1 and p["same_key"] in (0.0, 1.0)
            assert 0 <= p["exact_repeats"] <= p["close_repeats"] <= 1 and p["density_ratio"] > 0
        chunks = e["long_form"]["chunks"]
        assert e["long_form"]["bars"] == 8 and [(c["first_bar"], c["bars"]) for c in chunks] == [(0, 4), (4, 4)]
        assert all(0 <= c["dead_bars"] <= 1 and (c["drift"] is None or 0 <= c["drift"] <= 1) for c in chunks)
    real = results["real"]["coherence"]
    assert len(real["pieces"]) == 2 and 0 <= real["summary"]["out_of_key_vs_primer"]["mean"] <= 1
    assert len(results["real"]["long_form"]) >= 2 and results["real"]["long_form"][0]["songs"] == 2
    rows = [line for line in report.splitlines() if line.startswith("| v1/step10000 | 2 |")]
    assert len(rows) == 1 and all(re.fullmatch(r" (-|\d+\.\d+( ± \d+\.\d+)?) ", cell)
                                  for cell in rows[0].split("|")[3:-1])
    assert report.count("| real continuations | 2 |") == 1 and "| real songs |" in report
    # the same weights in two generations: equal numbers, so the newer is plainly NOT closer
    assert ("step10000 against v1/step10000: NOT closer to the real continuations on key adherence, and NOT closer "
            "to the real continuations on phrase repetition.") in report
    assert "**v1/step10000** (generation v1):" in report  # the author's observation, per generation
    assert (out / "eval_long_form.png").stat().st_size < 300_000
    assert not any(isinstance(v, float) and math.isnan(v) for v in results["config"].values())
