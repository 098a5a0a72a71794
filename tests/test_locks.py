"""User constraints (cwcompose.locks): parsing, masks, processors on hand-made states."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from cwcompose.generation import on_device
from cwcompose.grammar import WordState
from cwcompose.locks import (
    Chord, ChordLock, DensityBias, KeyLock, Locks, TempoLock, forced_chord_words, key_penalty_nats, parse_chord,
    parse_key, parse_progression, scale_pitch_mask,
)
from cwcompose.tokenizer import (
    BAR, CHORD_NONE, COL, CONTI, REST, FAMILY_METRIC, FAMILY_NOTE, FIELDS, IGNORE, POS0, TEMPO0, VALUE0, CPTokenizer,
    quantise_tempo, tempo_classes_bpm,
)

TOK = CPTokenizer()

SPELLINGS = {
    "C": "C:maj", "Cmaj": "C:maj", "Cm": "C:min", "Cmin": "C:min", "C-": "C:min", "Am7": "A:min7",
    "Cmaj7": "C:maj7", "CM7": "C:maj7", "G7": "G:7", "Bdim": "B:dim", "Bdim7": "B:dim7", "Bm7b5": "B:hdim7",
    "Bhdim7": "B:hdim7", "Caug": "C:aug", "C+": "C:aug", "F#m": "F#:min", "Bb": "A#:maj", "Ebmaj7": "D#:maj7",
    "Csus2": "C:sus2", "Csus4": "C:sus4", "Dsus": "D:sus4", "Gbm7": "F#:min7", "E": "E:maj", "C/E": "C:maj",
    "N": "N", "NC": "N",
}


@pytest.mark.parametrize("name,token", SPELLINGS.items())
def test_every_accepted_spelling_maps_to_its_token(name, token):
    assert TOK.token_name("chord", parse_chord(name).token(TOK)) == token


@pytest.mark.parametrize("bad", ["Cx9", "H", "Cmaj9", "c", "C/X", "Am7b9", "CM9"])
def test_unknown_chord_names_it_and_lists_the_forms(bad):
    with pytest.raises(ValueError) as err:
        parse_progression(f"C {bad} F")
    message = str(err.value)
    assert repr(bad) in message
    for form in ("A-G", "m7b5", "sus4", "dim7", "N for no chord", "brackets"):
        assert form in message
    assert "Error" not in message and "Exception" not in message


def test_progression_bars_and_two_chord_bars():
    bars = parse_progression("  C [G Am]  F  ")
    assert [[c.token(TOK) for c in bar] for bar in bars] == [
        [TOK.token_id("chord", "C:maj")], [TOK.token_id("chord", "G:maj"), TOK.token_id("chord", "A:min")],
        [TOK.token_id("chord", "F:maj")]]


@pytest.mark.parametrize("bad,words", [("C G | Am F", "brackets"), ("[C G Am]", "one or two"),
                                       ("[C G", "bracket"), ("", "no chords"), ("[]", "one or two")])
def test_bad_progressions_say_how_to_write_them(bad, words):
    with pytest.raises(ValueError, match=words):
        parse_progression(bad)


def test_chord_tones():
    assert Chord(9, "min").pitch_classes == {9, 0, 4}
    assert parse_chord("Bm7b5").pitch_classes == {11, 2, 5, 9}
    assert Chord(None).pitch_classes == frozenset()


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("text,key", [("A minor", (9, "minor")), ("Am", (9, "minor")), ("a min", (9, "minor")),
                                      ("C major", (0, "major")), ("C", (0, "major")), ("C Major", (0, "major")),
                                      ("F# minor", (6, "minor")), ("Bb major", (10, "major")), ("Eb", (3, "major")),
                                      ("EbM", (3, "major")), ("Gbm", (6, "minor"))])
def test_key_names(text, key):
    assert parse_key(text) == key


@pytest.mark.parametrize("bad", ["H major", "A dorian", "Amm", "", "C# blues"])
def test_bad_key_names_it_and_lists_the_forms(bad):
    with pytest.raises(ValueError) as err:
        parse_key(bad)
    assert repr(bad) in str(err.value) and "minor" in str(err.value) and "from primer" in str(err.value)


def _out_of_key_midi(mask: torch.Tensor) -> set[int]:
    return {t - VALUE0 + TOK.config.pitch_min for t in torch.nonzero(mask).flatten().tolist()}


def test_key_masks_match_hand_written_scales():
    a_minor = {"A", "B", "C", "D", "E", "F", "G"}  # natural minor
    eb_major = {"D#", "F", "G", "G#", "A#", "C", "D"}  # Eb F G Ab Bb C D
    from cwcompose.tokenizer import PITCH_CLASSES

    for key, scale in (((9, "minor"), a_minor), ((3, "major"), eb_major)):
        mask = scale_pitch_mask(TOK, key)
        assert not mask[:VALUE0].any()  # Pad / Ignore untouched
        every = set(range(TOK.config.pitch_min, TOK.config.pitch_max + 1))
        outside = {p for p in every if PITCH_CLASSES[p % 12] not in scale}
        assert _out_of_key_midi(mask) == outside
    assert 68 in _out_of_key_midi(scale_pitch_mask(TOK, (9, "minor")))  # G#: harmonic minor's 7th is out


def test_key_penalty_in_nats():
    assert key_penalty_nats(0.0) == 0.0
    assert key_penalty_nats(0.5) == pytest.approx(math.log(2))
    assert key_penalty_nats(0.9) == pytest.approx(-math.log(0.1))
    assert key_penalty_nats(1 - 1e-12) == 20.0
    assert key_penalty_nats(1.0) == math.inf


# ---------------------------------------------------------------- processors on hand-made states


def make_state(rows: list[dict]) -> WordState:
    """A real WordState whose rows are given as dicts: family / bar_pos token of the word
    being drawn, bar, position, notes_in_bar, notes_at (notes at the onset), done."""
    opening = np.array([[FAMILY_METRIC, BAR] + [IGNORE] * (len(FIELDS) - 2)])
    state = WordState.start(opening, batch=len(rows), bars=16, from_primer=False, vocab_sizes=TOK.vocab_sizes)
    for i, r in enumerate(rows):
        if "family" in r:
            state.current[i, COL["family"]] = r["family"]
        if "bar_pos" in r:
            state.current[i, COL["bar_pos"]] = r["bar_pos"]
    col = lambda k, d, like: torch.tensor([r.get(k, d) for r in rows], dtype=like.dtype)  # noqa: E731
    state.bar, state.position = col("bar", 0, state.bar), col("position", -1, state.position)
    state.notes_in_bar = col("notes_in_bar", 0, state.notes_in_bar)
    state.notes_at_onset = col("notes_at", 0, state.notes_at_onset)
    state.done = col("done", False, state.done)
    return state


def pos_row(bar: int, last: int, here: int, **kw) -> dict:
    return dict(family=FAMILY_METRIC, bar_pos=POS0 + here, bar=bar, position=last, **kw)


def allowed(logits: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(torch.isfinite(row)).flatten().tolist() for row in logits]


def chord(name: str) -> int:
    return parse_chord(name).token(TOK)


def test_chord_lock_forces_first_word_of_bar_and_half_bar():
    lock = ChordLock.build(parse_progression("C [G Am] F"), TOK)
    state = make_state([
        pos_row(0, -1, 0),      # bar 0, first onset -> C
        pos_row(0, 0, 8),       # later onset -> Conti
        pos_row(1, -1, 4),      # bar 1, first onset in first half -> G
        pos_row(1, 4, 16),      # first onset at/after the half bar -> Am
        pos_row(1, 16, 24),     # after that -> Conti
        pos_row(1, -1, 20),     # bar 1 whose first onset is in the second half -> Am
        pos_row(3, -1, 0),      # bar 3 cycles to bar 0 -> C
        pos_row(2, 2, 18),      # one-chord bar: half bar -> Conti
        dict(family=FAMILY_NOTE, bar=0, position=3),  # a note row: untouched
        pos_row(-1, 3, 9),      # the primer's bar: free
        pos_row(0, -1, 0, done=True),  # finished row: untouched
    ])
    logits = torch.randn(len(state.bar), TOK.vocab_sizes["chord"])
    out = lock(state, "chord", logits)
    expected = [[chord("C")], [CONTI], [chord("G")], [chord("Am")], [CONTI], [chord("Am")], [chord("C")], [CONTI]]
    assert allowed(out)[:8] == expected
    assert torch.equal(out[8:], logits[8:])
    assert lock(state, "pitch", logits) is logits


def test_chord_lock_forces_the_chord_where_the_grammar_forbids_conti():
    lock = ChordLock.build(parse_progression("Dm"), TOK)
    logits = torch.zeros(1, TOK.vocab_sizes["chord"])
    logits[0, CONTI] = -math.inf
    assert allowed(lock(make_state([pos_row(0, 3, 9)]), "chord", logits)) == [[chord("Dm")]]


def test_key_lock_masks_and_penalises_note_rows_only():
    mask = scale_pitch_mask(TOK, (9, "minor"))
    state = make_state([dict(family=FAMILY_NOTE, position=0), pos_row(0, -1, 0)])
    logits = torch.zeros(2, TOK.vocab_sizes["pitch"])
    hard = KeyLock(mask, math.inf)(state, "pitch", logits)
    assert set(allowed(hard)[0]) == set(range(TOK.vocab_sizes["pitch"])) - set(torch.nonzero(mask).flatten().tolist())
    assert torch.equal(hard[1], logits[1])
    soft = KeyLock(mask, key_penalty_nats(0.5))(state, "pitch", logits)
    probs = torch.softmax(soft[0, VALUE0:], -1)
    out, inside = mask[VALUE0:], ~mask[VALUE0:]
    assert float(probs[out][0] / probs[inside][0]) == pytest.approx(0.5)  # strength 0.5 halves the odds
    assert torch.equal(soft[1], logits[1])


def test_tempo_lock():
    lock = TempoLock(TEMPO0 + quantise_tempo(96, TOK.config))
    want = TEMPO0 + quantise_tempo(96, TOK.config)
    state = make_state([pos_row(0, -1, 0), pos_row(0, 0, 8), pos_row(2, -1, 0), pos_row(-1, 4, 8)])
    logits = torch.randn(4, TOK.vocab_sizes["tempo"])
    assert allowed(lock(state, "tempo", logits)) == [[want], [CONTI, want], [CONTI, want], [CONTI, want]]
    no_conti = logits.clone()
    no_conti[:, CONTI] = -math.inf
    assert allowed(lock(state, "tempo", no_conti)) == [[want]] * 4


ALL_LOCKS = Locks(chords="C [G Am] F", key="A minor", key_strength=0.5, tempo_bpm=96, notes_per_bar=12)


def _meta(state: WordState) -> WordState:
    tensors = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return dataclasses.replace(state, **{k: v.to("meta") for k, v in tensors.items() if torch.is_tensor(v)})


def meta_processors() -> list:
    """Every lock's processor, moved to the meta device as ``iter_compose`` moves them."""
    return on_device(ALL_LOCKS.processors(TOK), torch.device("meta"))


def test_processors_hold_their_tensors_on_the_device_they_were_moved_to():
    procs = meta_processors()
    assert [type(p) for p in procs] == [ChordLock, KeyLock, TempoLock, DensityBias]
    assert procs[2:] == ALL_LOCKS.processors(TOK)[2:]  # no tensors: as they were
    held = [t for p in procs for t in vars(p).values() if torch.is_tensor(t)]
    assert len(held) == 3 and all(t.device.type == "meta" for t in held)  # chord tables, key mask
    assert procs[0].first.device.type == procs[1].out_of_key.device.type == "meta"
    moved = [p.to("meta") for p in ALL_LOCKS.processors(TOK) if hasattr(p, "to")]
    assert [t.device.type for p in moved for t in vars(p).values() if torch.is_tensor(t)] == ["meta"] * 3
    assert all(p.to("meta") is p for p in procs if hasattr(p, "to"))  # already there: no copy


def test_processors_run_on_the_device_without_touching_the_host():
    """On the meta device a tensor has no data: a copy to the host, an .item() or a host
    tensor mixed in raises, so every processor running here on every field shows none."""
    state = _meta(make_state([pos_row(0, -1, 0), pos_row(1, 4, 16), dict(family=FAMILY_NOTE, position=3),
                              dict(family=IGNORE, position=5, notes_in_bar=2)]))
    for proc in meta_processors():
        for field in FIELDS:
            logits = torch.zeros(4, TOK.vocab_sizes[field], device="meta")
            assert proc(state, field, logits).device.type == "meta"


def test_density_bias_pushes_notes_when_behind_and_metre_when_ahead():
    bias = DensityBias(16.0)
    state = make_state([dict(position=15, notes_in_bar=0), dict(position=15, notes_in_bar=20, notes_at=2),
                        dict(position=-1, notes_in_bar=0), dict(position=15, notes_in_bar=8)])
    logits = torch.zeros(4, TOK.vocab_sizes["family"])
    out = bias(state, "family", logits)
    assert out[0, FAMILY_NOTE] > 0 and out[1, FAMILY_NOTE] < 0  # behind / ahead of the pace
    assert out[2, FAMILY_NOTE] == 0 and out[3, FAMILY_NOTE] == 0  # at a bar's start / on pace
    assert torch.equal(out[:, FAMILY_METRIC], logits[:, FAMILY_METRIC])
    first_note = make_state([dict(position=15, notes_in_bar=20, notes_at=0)])
    assert bias(first_note, "family", logits[:1])[0, FAMILY_NOTE] == 0  # an onset keeps its first note


def test_density_bias_moves_onsets_to_where_the_pace_catches_up():
    bias = DensityBias(8.0)  # pace: (q + 1) / 4 notes by position q
    state = make_state([dict(family=FAMILY_METRIC, position=3, notes_in_bar=4),
                        dict(family=FAMILY_METRIC, position=3, notes_in_bar=8),
                        dict(family=FAMILY_NOTE, position=3, notes_in_bar=4)])
    logits = torch.zeros(3, TOK.vocab_sizes["bar_pos"])
    out = bias(state, "bar_pos", logits)
    assert out[0, POS0 + 4] == pytest.approx(-2.0 * (4 - 5 / 4))  # 2 nats per note ahead of the pace
    assert out[0, POS0 + 15] == 0 and out[0, POS0 + 31] == 0
    assert out[0, BAR] == out[0, REST] == -8.0  # 4 notes short: closing the bar costs (capped) 8 nats
    assert out[1, BAR] == 0  # the target is met: the bar may close
    assert torch.equal(out[2], logits[2])


def _word(family: int, bar_pos: int = IGNORE, chord_: int = IGNORE, rest: int = IGNORE) -> list[int]:
    word = [family, bar_pos] + [IGNORE] * (len(FIELDS) - 2)
    word[COL["chord"]], word[COL["rest"]] = chord_, rest
    return word


def test_forced_chord_words_counts_bars_as_the_word_reader_does():
    c, g, am, f = chord("C"), chord("G"), chord("Am"), chord("F")
    note = [FAMILY_NOTE, IGNORE, IGNORE, IGNORE, IGNORE, VALUE0 + 39, VALUE0 + 3, VALUE0 + 30]
    pos = lambda p, ch=CONTI: _word(FAMILY_METRIC, POS0 + p, ch)  # noqa: E731
    words = np.array([
        _word(FAMILY_METRIC, BAR), pos(0, f), note,                            # the primer's bar
        _word(FAMILY_METRIC, BAR), pos(0, c), note, pos(20), note,             # generated bar 0: C
        _word(FAMILY_METRIC, BAR), pos(4, g), note, pos(12), pos(16, am), pos(24),  # bar 1: G, Am at the half
        _word(FAMILY_METRIC, REST, rest=VALUE0 + 1),                           # bars 2 and 3 left empty
        _word(FAMILY_METRIC, BAR), pos(20, am), note,                          # bar 4 (= bar 1): Am only
        _word(FAMILY_METRIC, BAR), pos(2, g), note,                            # bar 5 (= bar 2): F asked
    ])
    assert forced_chord_words(words, 1, parse_progression("C [G Am] F"), TOK) == [
        (0, 0, c, c), (1, 4, g, g), (1, 16, am, am), (4, 20, am, am), (5, 2, g, f)]


# ---------------------------------------------------------------- the config


def test_locks_json_round_trip_and_processors():
    locks = Locks(chords="C [G Am] F", key="Eb major", key_strength=0.5, tempo_bpm=96, notes_per_bar=12)
    assert Locks.from_json(locks.to_json()) == locks
    kinds = [type(p) for p in locks.processors(TOK)]
    assert kinds == [ChordLock, KeyLock, TempoLock, DensityBias]
    assert Locks().processors(TOK) == []
    assert Locks(key="C", key_strength=0).processors(TOK) == []


@pytest.mark.parametrize("kwargs,words", [
    (dict(chords="C Hm"), "'Hm'"), (dict(key="Q minor"), "'Q minor'"), (dict(key_strength=1.5), "key strength"),
    (dict(tempo_bpm=0), "beats per minute"), (dict(notes_per_bar=-1), "notes per bar"),
    (dict(key_strength=True), "key strength"),
])
def test_locks_validation(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Locks(**kwargs)


@pytest.mark.parametrize("bpm", [20, 39.9, 250.1, 400])
def test_a_tempo_outside_the_tempo_classes_is_refused_naming_the_range(bpm):
    locks = Locks(tempo_bpm=bpm)  # a number of beats per minute: the checkpoint's range is checked on building
    with pytest.raises(ValueError) as err:
        locks.processors(TOK)
    message = str(err.value)
    assert f"{bpm:g} BPM" in message and "from 40 to 250" in message and "leave the tempo unlocked" in message
    assert "Error" not in message


@pytest.mark.parametrize("bpm", [40, 150, 250])
def test_a_tempo_inside_the_tempo_classes_locks(bpm):
    (lock,) = Locks(tempo_bpm=bpm).processors(TOK)
    assert lock == TempoLock(TEMPO0 + quantise_tempo(bpm, TOK.config))


def test_locks_summary_shows_the_tempo_class_held():
    from cwcompose.takes import locks_summary

    held = float(tempo_classes_bpm(TOK.config)[quantise_tempo(150, TOK.config)])
    assert Locks(tempo_bpm=150).held_tempo_bpm(TOK.config) == held
    assert locks_summary(Locks(tempo_bpm=150)) == {"tempo": f"150 BPM (held at {held:.1f})"}
    assert locks_summary(Locks(tempo_bpm=round(held, 1))) == {"tempo": f"{held:.1f} BPM"}  # the class itself
    assert locks_summary(Locks(tempo_bpm=40), TOK.config) == {"tempo": "40 BPM"}
    assert Locks().held_tempo_bpm() is None and locks_summary(Locks()) == {}


def test_the_app_path_shows_an_unplayable_tempo_as_a_message():
    from cwcompose.request import ComposeRequest, RequestError
    from cwcompose.studio import request_opening

    with pytest.raises(RequestError, match="from 40 to 250"):
        request_opening(TOK, ComposeRequest(locks=Locks(tempo_bpm=400)))


def test_key_from_primer():
    words = TOK.encode_score(_a_minor_score(), end=False)
    lock = Locks(key="from primer").processors(TOK, primer_words=words)[0]
    assert torch.equal(lock.out_of_key, scale_pitch_mask(TOK, (9, "minor")))
    with pytest.raises(ValueError, match="needs a primer"):
        Locks(key="from primer").processors(TOK)


def _a_minor_score():
    from cwcompose.tokenizer import Score, ScoreNote

    melody = [57, 60, 64, 57, 62, 65, 69, 64, 59, 57, 52, 57]  # A minor arpeggios, tonic-heavy
    return Score(notes=[ScoreNote(onset=8 * i, pitch=p, duration_class=7, velocity_class=40)
                        for i, p in enumerate(melody)], tempo_at={0: 10}, chord_at={0: CHORD_NONE})


# ---------------------------------------------------------------- end to end, on the shipped checkpoint


@pytest.fixture(scope="module")
def shipped():
    from cwcompose.checkpoints import load_checkpoint

    torch.set_num_threads(1)
    return load_checkpoint(28500, device="cpu")


def _compose(shipped, locks: Locks, primer=None, bars: int = 8, variations: int = 2):
    from cwcompose.generation import compose_variations

    model, tok = shipped
    return compose_variations(model, tok, variations=variations, primer=primer, bars=bars, seed=11,
                              constraints=locks.processors(tok, primer))


def _generated(piece, tok):
    from cwcompose.metrics import grid_notes_from_words

    notes = grid_notes_from_words(piece.words, tok.config)
    return notes.pitch[notes.bar >= piece.primer_bars], notes.onset[notes.bar >= piece.primer_bars]


@pytest.mark.parametrize("primed", [False, True])
def test_chord_lock_holds_in_every_generated_bar(shipped, primed):
    from cwcompose.locks import forced_chord_words

    tok = shipped[1]
    primer = TOK.encode_score(_a_minor_score(), end=False) if primed else None
    progression = parse_progression("Am [F G] C Dm7 [E7 Am]")
    for piece in _compose(shipped, Locks(chords="Am [F G] C Dm7 [E7 Am]"), primer):
        forced = forced_chord_words(piece.words, piece.primer_bars, progression, tok)
        bars_with_positions = {b for b, *_ in forced}
        assert len(bars_with_positions) >= 6 and max(bars_with_positions) == piece.bars - 1
        assert [(b, h, written) for b, h, written, _ in forced] == [(b, h, asked) for b, h, _, asked in forced]


def test_key_strength_one_leaves_no_note_outside_the_scale(shipped):
    tok = shipped[1]
    for piece in _compose(shipped, Locks(key="Eb major", key_strength=1.0)):
        pitches, _ = _generated(piece, tok)
        assert len(pitches) > 20
        assert set(pitches % 12) <= {3, 5, 7, 8, 10, 0, 2}


def test_tempo_lock_holds_the_class(shipped):
    tok = shipped[1]
    want = quantise_tempo(150, tok.config)
    primer = TOK.encode_score(_a_minor_score(), end=False)  # at tempo class 10 (about 68 BPM)
    for piece in _compose(shipped, Locks(tempo_bpm=150), primer):
        score = tok.decode_score(piece.words)
        start = piece.primer_bars * tok.config.positions_per_bar
        generated_changes = {o: t for o, t in score.tempo_at.items() if o >= start}
        assert set(generated_changes.values()) == {want}
        assert min(generated_changes) < start + tok.config.positions_per_bar  # stated in the first generated bar


# ---------------------------------------------------------------- the command line


def test_generate_with_locks_writes_them_into_the_midi(tmp_path, shipped):
    import miditoolkit

    from cwcompose.cli import main

    out = tmp_path / "locked.mid"
    assert main(["generate", "--bars", "4", "--seed", "2", "--device", "cpu", "--chords", "Dm [G7 C]",
                 "--key", "C major", "--key-strength", "1", "--tempo", "150", "--density", "12", "-o", str(out)]) == 0
    midi = miditoolkit.MidiFile(str(out))
    bar = 4 * midi.ticks_per_beat
    chords = {m.time: m.text.removeprefix("Chord_") for m in midi.markers}
    assert chords[0] == "D:min" and chords.get(bar) == "G:7" and chords.get(2 * bar) == "D:min"
    assert {n.pitch % 12 for n in midi.instruments[0].notes} <= {0, 2, 4, 5, 7, 9, 11}
    assert {round(t.tempo, 1) for t in midi.tempo_changes} == {146.9}


@pytest.mark.parametrize("flags,words", [
    (["--chords", "C Hm"], "'Hm'"), (["--key", "H minor"], "'H minor'"),
    (["--key", "from primer"], "needs a primer"), (["--key", "C", "--key-strength", "2"], "key strength"),
    (["--tempo", "-5"], "beats per minute"), (["--density", "0"], "notes per bar"),
    (["--tempo", "400"], "from 40 to 250"),
])
def test_generate_rejects_bad_locks_with_a_message(tmp_path, capsys, flags, words):
    from cwcompose.cli import main

    with pytest.raises(SystemExit) as err:
        main(["generate", "--bars", "1", "--device", "cpu", *flags, "-o", str(tmp_path / "x.mid")])
    assert words in str(err.value) and "Traceback" not in str(err.value)
    assert not (tmp_path / "x.mid").exists()
