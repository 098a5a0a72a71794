"""`cwcompose prepare` end to end, through the real command line, on a folder mixing
POP909 song folders, a plain MIDI file and a broken one."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import miditoolkit
import numpy as np
import pytest

from cwcompose import cli
from cwcompose.data import SPLITS
from cwcompose.tokenizer import FAMILY_END, FAMILY_NOTE, FIELDS, CPTokenizer, TokenizerConfig

SONGS = ("001", "002", "003", "018", "044", "049")  # 018 and 044 hash to valid, 049 to test
PLAIN = "loose/plain_007.mid"  # 007.mid copied without its annotations
BROKEN = "loose/broken.mid"


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory, pop909) -> Path:
    root = tmp_path_factory.mktemp("prepare_in")
    for song in SONGS:
        (root / song).symlink_to(pop909 / song, target_is_directory=True)
    (root / "loose").mkdir()
    shutil.copy(pop909 / "007" / "007.mid", root / PLAIN)
    (root / BROKEN).write_bytes((pop909 / "008" / "008.mid").read_bytes()[:300])
    return root


def run_cli(input_dir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    """`python -m cwcompose prepare` in a child process, as a user would run it."""
    command = [sys.executable, "-m", "cwcompose", "prepare", str(input_dir), str(output_dir), "--workers", "2"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, input_dir) -> Path:
    out = tmp_path_factory.mktemp("prepare_out")
    result = run_cli(input_dir, out)
    assert "skipped 1 files" in result.stdout
    return out


def load(out: Path) -> tuple[np.ndarray, dict, dict]:
    """(tokens, index, summary) of a prepared dataset folder."""
    return (np.load(out / "tokens.npy"), json.loads((out / "index.json").read_text()),
            json.loads((out / "summary.json").read_text()))


def test_prepare_writes_tokens_index_and_summary(prepared):
    tokens, index, summary = load(prepared)
    names = [song["name"] for song in index["songs"]]
    assert names == [*SONGS, PLAIN]
    assert tokens.dtype == np.int16 and tokens.shape == (summary["words"], len(FIELDS))
    assert sum(song["length"] for song in index["songs"]) == len(tokens)
    assert TokenizerConfig.from_dict(index["tokenizer"]) == TokenizerConfig()
    assert summary["songs"] == len(names) and summary["fingerprint"] == index["fingerprint"]
    assert sum(summary["songs_per_split"].values()) == len(names)
    assert set(summary["songs_per_split"]) == set(SPLITS) and all(summary["songs_per_split"].values())


def test_broken_file_is_skipped_with_its_reason(prepared):
    _, index, summary = load(prepared)
    assert list(summary["skipped"]) == [BROKEN]
    assert "truncated" in summary["skipped"][BROKEN]
    assert BROKEN not in [song["name"] for song in index["songs"]]


def test_histograms_count_every_word_of_every_field(prepared):
    tokens, index, summary = load(prepared)
    histograms = summary["histograms"]
    assert list(histograms) == list(FIELDS)
    assert all(sum(counts.values()) == len(tokens) for counts in histograms.values())
    assert histograms["family"]["End"] == len(index["songs"])
    assert histograms["family"]["Note"] == len(tokens) - histograms["pitch"]["Ignore"]  # only notes hold a pitch
    assert "Bar" in histograms["bar_pos"] and "Pitch_60" in histograms["pitch"]


def test_every_song_decodes_to_midi(prepared, pop909):
    tokens, index, _ = load(prepared)
    tokenizer = CPTokenizer(TokenizerConfig.from_dict(index["tokenizer"]))
    notes = {}
    for song in index["songs"]:
        words = tokens[song["start"]:song["start"] + song["length"]].astype(np.int64)
        assert words[-1, 0] == FAMILY_END
        buffer = io.BytesIO()
        tokenizer.decode(words).dump(file=buffer)
        reread = miditoolkit.MidiFile(file=io.BytesIO(buffer.getvalue()))
        notes[song["name"]] = len(reread.instruments[0].notes)
        assert notes[song["name"]] == int(np.sum(words[:, 0] == FAMILY_NOTE)) > 100
    source = miditoolkit.MidiFile(str(pop909 / "007" / "007.mid"))
    assert notes[PLAIN] == sum(21 <= n.pitch <= 108 for track in source.instruments for n in track.notes)


def test_second_run_gives_the_same_dataset_and_splits(prepared, input_dir, tmp_path):
    assert cli.main(["prepare", str(input_dir), str(tmp_path), "--workers", "1"]) == 0
    tokens, index, summary = load(prepared)
    again_tokens, again_index, again_summary = load(tmp_path)
    assert again_index["fingerprint"] == index["fingerprint"] == summary["fingerprint"]
    assert np.array_equal(again_tokens, tokens)
    assert {s["name"]: s["split"] for s in again_index["songs"]} == {s["name"]: s["split"] for s in index["songs"]}


def test_split_of_a_song_does_not_depend_on_the_other_songs(prepared, input_dir, tmp_path):
    subset = tmp_path / "in"
    subset.mkdir()
    for song in SONGS[1::2]:  # one song of each split
        (subset / song).symlink_to((input_dir / song).resolve(), target_is_directory=True)
    assert cli.main(["prepare", str(subset), str(tmp_path / "out"), "--workers", "1"]) == 0
    full = {s["name"]: s["split"] for s in load(prepared)[1]["songs"]}
    for song in load(tmp_path / "out")[1]["songs"]:
        assert song["split"] == full[song["name"]]
