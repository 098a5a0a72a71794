"""Objective metrics on hand-made pieces with known answers, and `cwcompose evaluate` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cwcompose.metrics import (
    METRIC_LABELS, build_span_index, copy_share, estimate_key, excerpt, grid_notes_from_midi, grid_notes_from_score, grid_notes_from_words, groove_similarity, longest_repeated_run, make_grid_notes, mean_pairwise_distance, note_density, onset_position_histogram, out_of_key_ratio, piece_metrics, pitch_class_entropy, pitch_class_histogram, pitch_range, polyphony, repetition_share, variety,
)
from cwcompose.tokenizer import (
    BAR, FAMILY_METRIC, FAMILY_NOTE, FIELDS, IGNORE, PAD, POS0, VALUE0, CPTokenizer, Score, ScoreNote, TokenizerConfig,
)

CONFIG = TokenizerConfig()
BAR_LEN = CONFIG.positions_per_bar
C_MAJOR_SCALE = (60, 62, 64, 65, 67, 69, 71, 72)


def piece(*bars: list[tuple[int, int, int]]):
    """GridNotes from bars given as lists of (position in bar, pitch, duration)."""
    notes = [(b * BAR_LEN + pos, pitch, dur) for b, bar in enumerate(bars) for pos, pitch, dur in bar]
    onset, pitch, duration = zip(*notes) if notes else ((), (), ())
    return make_grid_notes(onset, pitch, duration, bars=len(bars))


def melody(pitches, step: int = 4) -> list[tuple[int, int, int]]:
    """One bar: the pitches one after another, ``step`` positions apart and long."""
    return [(i * step, p, step) for i, p in enumerate(pitches)]


def distinct_bars(count: int, transpose: int = 0) -> list[list[tuple[int, int, int]]]:
    """``count`` bars that all differ from one another."""
    return [melody([60 + transpose + (b * 5 + i * 3) % 17 for i in range(4)], step=8) for b in range(count)]


# ---------------------------------------------------------------- reading pieces


def sample_score() -> Score:
    """Notes in bars 0, 1 and 5 (so the words hold a Rest), chords, a tempo, a held chord."""
    notes = [ScoreNote(0, 60, 31, 40), ScoreNote(0, 64, 7, 40), ScoreNote(9, 67, 3, 50),
             ScoreNote(BAR_LEN + 4, 72, 35, 60), ScoreNote(5 * BAR_LEN + 31, 48, 0, 20)]
    return Score(notes=notes, tempo_at={0: 12}, chord_at={0: CPTokenizer().chord_token("C:maj")})


def test_words_score_and_midi_give_the_same_grid_notes():
    tokenizer = CPTokenizer(CONFIG)
    score = sample_score()
    expected = grid_notes_from_score(score, CONFIG)
    for notes in (grid_notes_from_words(tokenizer.encode_score(score), CONFIG),
                  grid_notes_from_midi(tokenizer.score_to_midi(score), CONFIG)):
        assert notes.onset.tolist() == expected.onset.tolist() == [0, 0, 9, 36, 191]
        assert notes.pitch.tolist() == expected.pitch.tolist() == [60, 64, 67, 72, 48]
        assert notes.duration.tolist() == expected.duration.tolist() == [32, 8, 4, 40, 1]
        assert notes.bars == 6


def test_words_reader_skips_ungrammatical_notes_like_decode_score():
    tokenizer = CPTokenizer(CONFIG)
    bar = [FAMILY_METRIC, BAR] + [IGNORE] * 6
    pos = [FAMILY_METRIC, POS0 + 3] + [IGNORE] * 6
    note = [FAMILY_NOTE, IGNORE, IGNORE, IGNORE, IGNORE, VALUE0 + 39, VALUE0 + 7, VALUE0 + 30]
    broken = [FAMILY_NOTE, IGNORE, IGNORE, IGNORE, IGNORE, VALUE0 + 40, IGNORE, VALUE0 + 30]
    words = np.array([note, bar, note, pos, note, broken, bar, bar, pos, note])
    expected = grid_notes_from_score(tokenizer.decode_score(words), CONFIG)
    notes = grid_notes_from_words(words, CONFIG)
    assert notes.onset.tolist() == expected.onset.tolist() == [3, 2 * BAR_LEN + 3]
    assert notes.pitch.tolist() == [60, 60]


def test_a_given_length_cuts_or_pads_the_piece():
    tokenizer = CPTokenizer(CONFIG)
    words = tokenizer.encode_score(sample_score())
    assert grid_notes_from_words(words, CONFIG, bars=1).onset.tolist() == [0, 0, 9]
    padded = grid_notes_from_words(words, CONFIG, bars=10)
    assert padded.bars == 10 and note_density(padded) == pytest.approx(5 / 10)


def test_excerpt_moves_bars_to_the_start():
    notes = excerpt(piece(*distinct_bars(6)), first_bar=2, bars=3)
    assert notes.bars == 3 and notes.onset.min() == 0 and notes.bar.max() == 2
    assert notes.pitch.tolist() == piece(*distinct_bars(6)[2:5]).pitch.tolist()


# ---------------------------------------------------------------- pitch


def test_c_major_scale_is_in_c_major_with_nothing_out_of_key():
    scale = piece(melody(C_MAJOR_SCALE))
    assert estimate_key(scale) == (0, "major")
    assert out_of_key_ratio(scale, estimate_key(scale)) == 0.0
    with_f_sharp = piece(melody(C_MAJOR_SCALE) + [(30, 66, 2)])
    assert out_of_key_ratio(with_f_sharp, (0, "major")) == pytest.approx(1 / 9)


def test_key_follows_transposition_and_finds_minor():
    assert estimate_key(piece(melody([p + 7 for p in C_MAJOR_SCALE]))) == (7, "major")
    a_minor = piece([(0, 57, 16), (0, 60, 8), (8, 64, 8), (16, 57, 16), (16, 69, 8), (24, 64, 8)])
    assert estimate_key(a_minor) == (9, "minor")


def test_pitch_class_entropy_known_values():
    one_class = piece(melody([48, 60, 72, 60]), melody([36, 60]))
    assert pitch_class_entropy(one_class, 1) == 0.0 and pitch_class_entropy(one_class, 4) == 0.0
    twelve = piece([(i, 60 + i, 1) for i in range(12)])
    assert pitch_class_entropy(twelve, 1) == pytest.approx(math.log2(12))
    one_class_per_bar = piece(*[melody([p, p + 12]) for p in (60, 62, 64, 65)])
    assert pitch_class_entropy(one_class_per_bar, 1) == 0.0
    assert pitch_class_entropy(one_class_per_bar, 4) == pytest.approx(2.0)


def test_pitch_class_entropy_skips_windows_without_notes():
    two_classes_then_silence = piece(melody([60, 67]), [], [])
    assert pitch_class_entropy(two_classes_then_silence, 1) == pytest.approx(1.0)
    assert math.isnan(pitch_class_entropy(piece([]), 1))


def test_pitch_range_and_density():
    notes = piece(melody([48, 79, 60]), melody([50, 51]), [], melody([55, 56, 57, 58, 59]))
    assert pitch_range(notes) == 31
    assert note_density(notes) == pytest.approx(10 / 4)


# ---------------------------------------------------------------- rhythm and texture


def test_polyphony_counts_held_notes_at_each_onset():
    chord_and_melody = piece([(0, 60, 32), (0, 64, 32), (0, 67, 32), (8, 72, 4), (16, 74, 4)])
    assert polyphony(chord_and_melody) == pytest.approx((3 + 4 + 4) / 3)
    legato_line = piece(melody([60, 62, 64], step=8))  # each note ends where the next starts
    assert polyphony(legato_line) == 1.0


def test_groove_similarity_known_values():
    assert groove_similarity(piece(*[melody([60, 64, 67, 72], step=8)] * 8)) == 1.0
    four, two = melody([60] * 4, step=8), melody([60] * 2, step=16)  # onsets {0,8,16,24} and {0,16}
    assert groove_similarity(piece(four, two)) == pytest.approx(1 - 2 / 32)
    assert groove_similarity(piece(four, four, two)) == pytest.approx((1 + 2 * (1 - 2 / 32)) / 3)


# ---------------------------------------------------------------- repetition and copying


def test_one_bar_eight_times_repeats_seven_of_eight_bars():
    looped = piece(*[melody([60, 64, 67, 72])] * 8)
    assert repetition_share(looped) == pytest.approx(7 / 8)
    assert longest_repeated_run(looped) == 7


def test_repetition_of_runs_and_near_misses():
    a, b, c = distinct_bars(3)
    assert repetition_share(piece(a, b, c, a, b)) == pytest.approx(2 / 5)
    assert longest_repeated_run(piece(a, b, c, a, b)) == 2
    assert repetition_share(piece(a, [], a)) == pytest.approx(1 / 2)  # silent bars are not repetition
    changed = [(pos, pitch, dur + (i == 0)) for i, (pos, pitch, dur) in enumerate(a)]
    assert repetition_share(piece(a, changed)) == 0.0 and longest_repeated_run(piece(a, changed)) == 0


def test_copying_finds_indexed_spans_anywhere_but_not_transposed():
    tokenizer = CPTokenizer(CONFIG)
    song = piece(*distinct_bars(8))
    words = tokenizer.encode_score(Score(notes=[ScoreNote(int(o), int(p), int(d) - 1, 30) for o, p, d in
                                                zip(song.onset, song.pitch, song.duration)]))
    index = build_span_index([words, piece(*distinct_bars(6, transpose=20))], CONFIG)
    assert index.songs == 2 and len(index.hashes) == 5 + 3
    assert copy_share(song, index) == 1.0
    assert copy_share(excerpt(song, 2, 6), index) == 1.0
    assert copy_share(piece(*distinct_bars(8, transpose=1)), index) == 0.0
    half_copied = piece(*(distinct_bars(8)[:4] + distinct_bars(4, transpose=1)))
    assert copy_share(half_copied, index) == pytest.approx(1 / 5)
    assert math.isnan(copy_share(piece(*distinct_bars(3)), index))


def test_piece_metrics_bundles_every_metric():
    metrics = piece_metrics(piece(*[melody(C_MAJOR_SCALE)] * 4), CONFIG)
    values = metrics.as_dict()
    assert set(METRIC_LABELS) <= set(values)
    assert values["key"] == "C major" and values["bars"] == 4 and values["notes"] == 32
    assert values["repetition"] == pytest.approx(3 / 4) and values["longest_repeat"] == 3
    assert values["out_of_key"] == 0.0 and math.isnan(values["copying"])


def test_pieces_in_disjoint_keys_have_pitch_class_variety_one_and_copies_zero():
    c_major, f_sharp_pentatonic = piece(melody(C_MAJOR_SCALE)), piece(melody((66, 68, 70, 73, 75)))
    assert pitch_class_histogram(c_major)[[0, 2, 4, 5, 7, 9, 11]] == pytest.approx([2 / 8, *[1 / 8] * 6])
    assert variety([c_major, f_sharp_pentatonic], pitch_class_histogram)["mean"] == pytest.approx(1.0)
    copies = variety([c_major] * 5, pitch_class_histogram)
    assert copies["mean"] == 0.0 and copies["sem"] == 0.0 and copies["n"] == 5


def test_rhythm_variety_sees_onsets_not_pitches():
    on_the_beat = piece([(0, 60, 8), (8, 64, 8), (16, 67, 8), (24, 72, 8)])
    same_rhythm_other_notes = piece([(0, 50, 8), (8, 53, 8), (16, 57, 8), (24, 59, 8)])
    off_the_beat = piece([(4, 60, 4), (12, 64, 4), (20, 67, 4), (28, 72, 4)])
    assert onset_position_histogram(on_the_beat)[[0, 8, 16, 24]] == pytest.approx([0.25] * 4)
    assert variety([on_the_beat, same_rhythm_other_notes], onset_position_histogram)["mean"] == 0.0
    # pairs: (on, same) 0, (on, off) 1, (same, off) 1 -> mean 2/3
    assert variety([on_the_beat, same_rhythm_other_notes, off_the_beat],
                   onset_position_histogram)["mean"] == pytest.approx(2 / 3)


def test_variety_leaves_out_silent_pieces_and_needs_two():
    half_c_half_g = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    assert mean_pairwise_distance(half_c_half_g) == pytest.approx(0.5)
    assert math.isnan(mean_pairwise_distance(half_c_half_g[:1]))
    one_with_notes = variety([piece(melody(C_MAJOR_SCALE)), piece([])], pitch_class_histogram)
    assert one_with_notes["n"] == 1 and math.isnan(one_with_notes["mean"])


# ---------------------------------------------------------------- evaluation


def test_held_out_nll_is_the_mean_over_every_valid_token():
    from cwcompose.evaluation import held_out_nll
    from cwcompose.model import CPTransformer, ModelConfig

    tokenizer = CPTokenizer(CONFIG)
    torch.manual_seed(0)
    model = CPTransformer(ModelConfig(vocab_sizes=tokenizer.vocab_sizes, d_model=16, n_layers=1, n_heads=2,
                                      d_ff=16, dropout=0.0)).eval()
    words = torch.from_numpy(tokenizer.encode_score(sample_score()))
    windows = torch.zeros(3, len(words), len(FIELDS), dtype=torch.long)
    windows[0], windows[1, :5], windows[2, :9] = words, words[:5], words[:9]  # unequal padding
    nll = held_out_nll(model, windows, batch_size=2, min_targets=1)  # chunks of 2 and 1 windows
    with torch.no_grad():
        _, one_batch = model(windows[:, :-1], windows[:, 1:])  # one mean over all valid targets
    for f in FIELDS:
        if not torch.isnan(one_batch[f]):
            assert nll[f] == pytest.approx(one_batch[f].item(), rel=1e-5)
    assert nll["total"] == pytest.approx(np.mean([v for k, v in nll.items() if k != "total"]))

    # a field with fewer targets than the minimum is left out of the fields and of the total
    targets = {f: int(((windows[:, 1:, i] != PAD) & ((windows[:, 1:, i] != IGNORE) | (f == "family"))).sum())
               for i, f in enumerate(FIELDS)}
    threshold = sorted(set(targets.values()))[1]  # drops the fields with the fewest targets
    kept = held_out_nll(model, windows, batch_size=2, min_targets=threshold)
    assert set(kept) - {"total"} == {f for f, n in targets.items() if n >= threshold}
    assert len(kept) < len(nll)
    assert kept["total"] == pytest.approx(np.mean([nll[f] for f in kept if f != "total"]))


def test_primer_midi_holds_exactly_the_first_bars(small_dataset):
    from cwcompose.data import TokenDataset
    from cwcompose.evaluation import primer_midi

    songs = TokenDataset.load(small_dataset, "valid")  # the fixture holds no test-split song
    tokenizer = CPTokenizer(songs.tokenizer_config)
    primer = grid_notes_from_midi(primer_midi(songs.songs[0], tokenizer, 3), tokenizer.config)
    whole = excerpt(grid_notes_from_words(songs.songs[0], tokenizer.config), 0, 3)
    assert len(whole.onset) > 0
    assert primer.onset.tolist() == whole.onset.tolist() and primer.pitch.tolist() == whole.pitch.tolist()


def test_evaluate_command_writes_a_report(small_dataset, tmp_path):
    from cwcompose.checkpoints import save_checkpoint
    from cwcompose.cli import main
    from cwcompose.model import CPTransformer, ModelConfig

    torch.manual_seed(0)
    model = CPTransformer(ModelConfig(vocab_sizes=CPTokenizer().vocab_sizes, d_model=32, n_layers=2,
                                      n_heads=2, d_ff=64))
    save_checkpoint(model, CPTokenizer(), tmp_path / "ckpt" / "step10000")
    out = tmp_path / "docs"
    loss_csv = Path(__file__).resolve().parents[1] / "training" / "pop909-v1" / "loss.csv"  # a finished run, committed
    argv = ["evaluate", str(tmp_path / "ckpt" / "step10000"), "--data", str(small_dataset), "--split", "valid",
            "--seeds", "1", "--bars", "2", "--windows", "4", "--pieces", "1", "--long-form-bars", "4",
            "--long-form-chunk", "2", "--out", str(out), "--loss-csv", str(loss_csv)]
    assert main(argv) == 0
    report = (out / "EVALUATION.md").read_text()
    table_rows = [line for line in report.splitlines() if line.startswith("| step10000 |")]
    assert len(table_rows) == 11  # loss, both music tables, variety, coherence and its gaps, 5 long-form tables
    assert "real excerpts" in report and "not tested here" in report
    assert "### During training" in report and "| chord | 0." in report and (out / "loss.png").is_file()
    results = json.loads((out / "evaluation.json").read_text())
    entry = results["checkpoints"][0]
    assert entry["step"] == 10000 and len(entry["pieces"]["primed"]) == 1
    assert entry["variety"]["rhythm"]["n"] <= 1  # one seed: a variety needs two pieces, so it reads "-"
    assert results["real"]["variety"]["pitch_classes"]["n"] == len(results["real"]["pieces"])
    assert all(p["bars"] == 2 for c in ("unconditioned", "primed") for p in entry["pieces"][c])
    assert (out / "eval_metrics.png").stat().st_size > 1000 and (out / "eval_nll.png").stat().st_size > 1000
    first = (out / "evaluation.json").read_bytes()
    assert main(argv) == 0 and (out / "evaluation.json").read_bytes() == first  # same seeds, same numbers


def test_lowest_validation_finds_the_minimum_and_skips_unvalidated_fields():
    from cwcompose.report import lowest_validation

    nan = float("nan")
    rows = [{"step": step, **{f"valid_{k}": nan for k in ["total", *FIELDS]}, "valid_total": total,
             "valid_chord": chord} for step, total, chord in ((500, 2.0, 0.9), (1000, 1.5, 0.6), (1500, 1.4, 0.7))]
    lowest = lowest_validation(rows)
    assert set(lowest) == {"total", "chord"}
    assert lowest["chord"] == {"lowest": 0.6, "step": 1000, "last": 0.7, "last_step": 1500}
    assert lowest["total"]["step"] == 1500


def test_compare_needs_two_standard_errors_in_the_stated_direction():
    from cwcompose.verdicts import compare

    def stat(mean):
        return {"mean": mean, "sem": 1.0}

    assert compare(stat(10.0), stat(5.0), +1) == "supported"  # 5 > 2 * sqrt(2)
    assert compare(stat(10.0), stat(5.0), -1) == "contradicted"
    assert compare(stat(7.0), stat(5.0), +1) == "in that direction but within noise"
    assert compare(stat(4.0), stat(5.0), +1) == "no clear difference"


def test_verdict_follows_the_numbers():
    from cwcompose.verdicts import verdict

    reference = {"h1": 2.1, "h4": 2.6, "groove_similarity": 0.9, "out_of_key": 0.03, "note_density": 15.0,
                 "polyphony": 4.0, "pitch_range": 40.0, "repetition": 0.1, "longest_repeat": 1.0, "copying": 0.0}
    changes = {10000: {"note_density": 5.0, "out_of_key": 0.2}, 28500: {},
               80000: {"repetition": 0.5, "copying": 0.4, "h4": 2.0, "pitch_classes": 0.1, "rhythm": 0.2}}
    reference_variety = {"pitch_classes": 0.4, "rhythm": 0.5}

    def summary(values):
        return {m: {"mean": v, "sem": 0.01, "std": 0.1, "n": 8} for m, v in values.items() if m in reference}

    def variety_of(values):
        return {m: {"mean": values.get(m, v), "sem": 0.01, "n": 8} for m, v in reference_variety.items()}

    def pieces(values):  # 8 pieces per condition, spread +-0.01 around the means
        return [{m: v + (0.01 if i % 2 else -0.01) for m, v in values.items() if m in reference} for i in range(8)]

    nll = {10000: {"total": 1.2, "pitch": 1.6}, 28500: {"total": 1.0, "pitch": 1.5}, 80000: {"total": 1.1, "pitch": 1.4}}

    def results(changes):
        return {"config": {"seeds": 8}, "real": {"summary": summary(reference), "variety": variety_of({})},
                "checkpoints": [{"step": s, "label": f"step{s}", "nll": nll[s],
                                 "summary": {"pooled": summary({**reference, **c})}, "variety": variety_of(c),
                                 "pieces": dict.fromkeys(("unconditioned", "primed"), pieces({**reference, **c}))}
                                for s, c in changes.items()]}

    text = verdict(results(changes))
    assert "observation holds." in text and "closest in 1000 bootstrap resamples of the pieces is 0% step 10000, 100% step 28500" in text
    assert "Step 80000 is higher than step 28500 (lower in only 1 of 1 fields), as over-fitting would make it." in text
    a_hair_apart = {**changes, 80000: {"pitch_range": 40.001}}  # far less than the spread of the pieces
    assert "so, counting it only at 95%, this part is in that direction but within noise." in verdict(
        results(a_hair_apart))
    changes[80000]["repetition"] = 0.1
    text = verdict(results(changes))
    assert "holds only in part (7 of its 8 parts supported)" in text
    assert "more alike in rhythm\": rhythm variety 0.2 against 0.5 at step 28500 (real songs 0.5), supported." in text
    assert '"lacking variation: more repeated bars": repeated bars 0.1 against 0.1' in text
    del changes[80000]
    text = verdict(results(changes))
    assert text.startswith("Step 80000 was not evaluated") and "holds." in text and "lacking variation" not in text


# ---------------------------------------------------------------- coherence with a primer, long form


def test_jaccard_known_values():
    from cwcompose.coherence import jaccard

    assert jaccard(frozenset({1, 2, 3}), frozenset({2, 3, 4})) == 0.5
    assert jaccard(frozenset({1}), frozenset({1})) == 1.0
    assert jaccard(frozenset(), frozenset()) == 0.0 and jaccard(frozenset({1}), frozenset()) == 0.0


def test_a_repeated_four_bar_phrase_closely_and_exactly_repeats_in_every_repeat():
    from cwcompose.coherence import close_repeat_share, close_repeats, exact_repeat_share, exact_repeats

    phrase = distinct_bars(4)
    notes = piece(*phrase, *phrase, *phrase)
    assert close_repeats(notes).tolist() == [False] * 4 + [True] * 8
    assert exact_repeats(notes).tolist() == [False] * 4 + [True] * 8
    assert close_repeat_share(notes, first_bar=4) == 1.0 and exact_repeat_share(notes, first_bar=4) == 1.0
    assert close_repeat_share(notes) == pytest.approx(8 / 12)
    distinct = piece(*distinct_bars(12))
    assert close_repeat_share(distinct) == 0.0 and exact_repeat_share(distinct) == 0.0


def test_close_repeats_ignore_octave_and_small_changes_but_not_transposition_or_far_bars():
    from cwcompose.coherence import close_repeat_share, close_repeats, exact_repeats

    bar = melody(C_MAJOR_SCALE)  # 8 onsets
    varied = bar[:-1] + [(28, 74, 4)]  # one note of eight changed: Jaccard 7/9
    octave = [(pos, pitch + 12, dur) for pos, pitch, dur in bar]
    semitone = [(pos, pitch + 1, dur) for pos, pitch, dur in bar]
    notes = piece(bar, varied, octave, semitone)
    assert close_repeats(notes).tolist() == [False, True, True, False]
    assert exact_repeats(notes).tolist() == [False, False, False, False]
    far = piece(bar, *distinct_bars(8, transpose=30), bar)  # the repeat is 9 bars back
    assert not close_repeats(far)[-1] and close_repeats(far, lookback=9)[-1]
    assert close_repeats(notes, threshold=0.8).tolist() == [False, False, True, False]
    assert math.isnan(close_repeat_share(piece([], [])))  # no bar with notes: undefined


def test_key_adherence_against_the_primer_key():
    from cwcompose.coherence import coherence_metrics, same_key

    scale = melody(C_MAJOR_SCALE)
    c_major = piece(scale)
    assert out_of_key_ratio(c_major, (0, "major")) == 0.0
    assert out_of_key_ratio(c_major, (6, "major")) > 0.5  # only B and F (E#) are in F# major: 6 of 8 out
    f_sharp = [(pos, pitch + 6, dur) for pos, pitch, dur in scale]
    staying = coherence_metrics(piece(scale, scale, scale, scale), primer_bars=2)
    leaving = coherence_metrics(piece(scale, scale, f_sharp, f_sharp), primer_bars=2)
    assert staying.primer_key == "C major" and staying.key == "C major"
    assert staying.out_of_key_vs_primer == 0.0 and staying.same_key == 1.0
    assert leaving.key == "F# major" and leaving.out_of_key_vs_primer == 0.75 and leaving.same_key == 0.0
    assert math.isnan(same_key(piece([]), c_major))


def test_coherence_metrics_count_repeats_of_the_primer_and_relative_density():
    from cwcompose.coherence import coherence_metrics

    phrase = distinct_bars(2)
    dense = [melody(C_MAJOR_SCALE)] * 2  # 8 notes a bar against the phrase's 4
    metrics = coherence_metrics(piece(*phrase, *phrase, *dense), primer_bars=2)
    # bars 2, 3 repeat the primer, bar 5 repeats bar 4; the first dense bar repeats nothing
    assert metrics.close_repeats == 0.75 and metrics.exact_repeats == 0.75
    assert metrics.repetition == 0.25  # today's metric sees the continuation alone: bar 5 repeats bar 4
    assert metrics.density_ratio == pytest.approx((24 / 4) / 4)
    silent_primer = coherence_metrics(piece([], [], *phrase), primer_bars=2)
    assert math.isnan(silent_primer.density_ratio) and math.isnan(silent_primer.out_of_key_vs_primer)
    assert silent_primer.primer_key == "-"


def test_long_form_chunks_measure_drift_dead_bars_and_loops_per_chunk():
    from cwcompose.coherence import long_form_chunks

    scale = melody(C_MAJOR_SCALE)
    f_sharp = [(pos, pitch + 6, dur) for pos, pitch, dur in scale]
    others = distinct_bars(3, transpose=1)
    # primer 2 bars of C major; chunk 0: four repeats of the scale; chunk 1: F# major, a silent bar, new bars
    notes = piece(scale, scale, scale, scale, scale, scale, f_sharp, [], *others[:2])
    chunks = long_form_chunks(notes, primer_bars=2, chunk_bars=4)
    assert [(c["first_bar"], c["bars"]) for c in chunks] == [(0, 4), (4, 4)]
    assert chunks[0] == {"first_bar": 0, "bars": 4, "drift": 0.0, "dead_bars": 0.0, "exact_loops": 1.0,
                         "close_loops": 1.0, "note_density": 8.0}
    assert chunks[1]["dead_bars"] == 0.25 and chunks[1]["exact_loops"] == 0.0 and chunks[1]["close_loops"] == 0.0
    assert chunks[1]["drift"] > 0.5
    assert [c["bars"] for c in long_form_chunks(notes, primer_bars=2, chunk_bars=3)] == [3, 3, 2]
