"""Odd and malformed uploads, and bad argument values, through the real /compose endpoint.

One in-process app on tiny stand-in checkpoints serves every case (module-scoped); each
case must come back as a continuation or as an error whose message names the problem,
within a hang guard, and the server must still compose normally afterwards. The same
catalogue also goes straight through the tokenizer and the primer cutter, where the
only exception allowed out is MidiReadError, whose message names the specific problem,
says what to do, and never shows a Python exception name.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import miditoolkit
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from cwcompose.generation import count_bars, primer_words
from cwcompose.midi_file import MAX_FILE_BYTES, read_midi
from cwcompose.request import ComposeRequest, Limits, RequestError
from cwcompose.studio import Studio, stream_compose
from cwcompose.tokenizer import CPTokenizer, MidiReadError
from odd_midi import EXCEPTION_NAME, OddMidi, catalogue, huge_upload, message_faults, piano_file
import app as app_module
from app_harness import make_tiny_checkpoints

CASES = catalogue()
UNREADABLE = [c for c in CASES if not c.ok and c.stage == "midi"]  # refused for what the bytes hold
ROOT = Path(__file__).resolve().parents[1]
PRIMER_BARS = 4  # more than most catalogue files hold: "keep the last N bars" must still hold
BARS = 1
HANG_GUARD_SECONDS = 120  # a request that takes longer than this is hung, not slow


@dataclass
class App:
    client: Client
    studio: Studio
    url: str
    upload_dir: Path


def launch(studio: Studio):
    """app.py's demo around ``studio``, started in this process with the app's own launch options."""
    return app_module.launch(studio, prevent_thread_lock=True, quiet=True)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app on tiny checkpoints, with Gradio's upload/cache folder in a temp dir of its own."""
    upload_dir = tmp_path_factory.mktemp("gradio-cache")
    with pytest.MonkeyPatch.context() as patch:  # Gradio reads it at launch and at every upload
        patch.setenv("GRADIO_TEMP_DIR", str(upload_dir))
        studio = Studio(make_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints")))
        demo = launch(studio)
        yield App(Client(demo.local_url, verbose=False), studio, demo.local_url, upload_dir)
        demo.close()
        studio.close()


def upload_named(app: App, name: str, data: bytes) -> str:
    """Upload ``data`` under the exact file name ``name`` (raw multipart) -> the server-side path."""
    response = httpx.post(app.url + "gradio_api/upload", files={"files": (name, data)}, timeout=60)
    response.raise_for_status()
    (path,) = response.json()
    return path


def local_copy(tmp_path: Path, name: str, data: bytes) -> Path:
    """``data`` in a file called ``name`` (which must be a plain file name) under ``tmp_path``."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


def compose(app: App, primer, primer_bars: int = PRIMER_BARS, bars: int = BARS, seed: int = 1, **sliders):
    """One /compose request with a hang guard -> (audio, midi, piano_roll, numbers, seed)."""
    job = app.client.submit(checkpoint=28500, primer=primer, primer_bars=primer_bars, bars=bars, seed=seed,
                            random_seed=False, **sliders, api_name="/compose")
    return job.result(timeout=HANG_GUARD_SECONDS)


def shown_numbers(numbers: dict) -> dict[str, str]:
    """The numbers table as the page shows it: measure -> value (text)."""
    return {name: value for name, value in numbers["data"]}


def check_continuation(outputs, limits: Limits, primer_bars: int = PRIMER_BARS, bars: int = BARS) -> None:
    """A continuation: a MIDI file with notes, the primer's last bars at most, the bars asked for."""
    audio, midi, piano_roll, numbers, seed = outputs
    assert Path(audio).is_file() and "<svg" in piano_roll
    assert miditoolkit.MidiFile(midi).instruments[0].notes, "the result has notes"
    shown = shown_numbers(numbers)
    assert 1 <= int(shown["primer bars"]) <= primer_bars, "keep only the primer's last N bars"
    assert int(shown["bars generated"]) == bars and shown["stopped early"] == "False"
    assert float(shown["length (seconds)"]) <= limits.max_music_seconds


# ---------------------------------------------------------------- the catalogue through the app


def test_the_catalogue_is_big_and_varied():
    assert len(CASES) >= 60
    assert sum(c.ok for c in CASES) >= 20 and sum(not c.ok for c in CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_odd_upload_gives_a_continuation_or_a_clear_message(app, case: OddMidi, tmp_path):
    data = case.make()
    if "/" in case.filename:  # not a possible local file name: send it as the multipart name
        server_path = Path(upload_named(app, case.filename, data))
        assert server_path.resolve().is_relative_to(app.upload_dir.resolve()), "uploads stay in the cache"
        assert ".." not in server_path.parts and server_path.name == Path(case.filename).name
        primer = handle_file(str(server_path))
    else:
        primer = handle_file(str(local_copy(tmp_path, case.filename, data)))
    if case.ok:
        check_continuation(compose(app, primer), app.studio.limits)
    else:
        with pytest.raises((AppError, ValueError), match=case.message) as raised:
            compose(app, primer)
        if case.stage == "midi":
            assert not message_faults(str(raised.value)), str(raised.value)


def test_the_server_is_healthy_after_the_catalogue(app, pop909):
    """Runs after the catalogue (file order): a normal request still works, and gives what it gave before."""
    primer = handle_file(str(pop909 / "003" / "003.mid"))
    first = compose(app, primer, primer_bars=2, bars=2, seed=5)
    check_continuation(first, app.studio.limits, primer_bars=2, bars=2)
    again = compose(app, primer, primer_bars=2, bars=2, seed=5)
    assert Path(first[1]).read_bytes() == Path(again[1]).read_bytes(), "same request, same seed, same piece"


# ---------------------------------------------------------------- the catalogue through the tokenizer


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tokenizer_reads_the_catalogue_or_raises_midi_read_error(case: OddMidi):
    tokenizer, data = CPTokenizer(), case.make()
    if case.encodes:
        words = tokenizer.encode(data)
        assert len(words) >= 3  # a bar, a position and a note at least
        kept = primer_words(tokenizer, words, PRIMER_BARS)  # the words, not the bytes again: half the time
        assert 1 <= count_bars(kept) <= PRIMER_BARS, "the primer keeps its last N bars, silence included"
    else:
        with pytest.raises(MidiReadError, match=case.message):
            tokenizer.encode(data)
        with pytest.raises(MidiReadError, match=case.message):
            primer_words(tokenizer, data, PRIMER_BARS)


@pytest.mark.parametrize("case", UNREADABLE, ids=[c.name for c in UNREADABLE])
def test_every_unreadable_file_names_its_problem_and_a_remedy(case: OddMidi):
    """The message names this case's specific problem (its catalogue words), says what to
    do, shows no exception class name or traceback, and is never the catch-all."""
    with pytest.raises(MidiReadError) as raised:
        CPTokenizer().encode(case.make())
    message = str(raised.value)
    assert re.search(case.message, message), f"should name {case.message!r}: {message}"
    assert not message_faults(message), f"{message_faults(message)}: {message}"
    assert "cannot pin down" not in message, f"the catch-all answered: {message}"


def test_no_catalogue_case_settles_for_a_generic_word():
    generic = {"damaged", "not a MIDI file", "error"}
    assert not [c.name for c in UNREADABLE if c.message in generic]


def test_a_file_over_the_readers_cap_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "huge.mid"
    huge_upload(big, size_mb=MAX_FILE_BYTES // 2**20 + 1)  # sparse: reading it would take the memory
    with pytest.raises(MidiReadError, match=r"too large: 65\.0 MB, and at most 64 MB") as raised:
        read_midi(big)
    assert not message_faults(str(raised.value))


def test_a_missing_file_says_what_to_check(tmp_path):
    with pytest.raises(MidiReadError, match="cannot read gone.mid: No such file or directory") as raised:
        read_midi(tmp_path / "gone.mid")
    assert not message_faults(str(raised.value))


# ---------------------------------------------------------------- limits


def test_every_cap_lives_in_limits():
    names = {f for f in Limits.__dataclass_fields__}
    assert {"upload_mb", "max_primer_bars", "max_bars", "max_music_seconds", "request_seconds", "queue_size",
            "concurrency", "kept_results", "cache_seconds"} <= names
    with pytest.raises(ValueError, match="positive"):
        Limits(max_bars=0)


@pytest.mark.parametrize("bad", [dict(concurrency=1.5), dict(queue_size=True), dict(upload_mb=float("inf")),
                                 dict(kept_results="64")])
def test_limits_refuse_what_is_not_a_positive_count_or_amount(bad):
    with pytest.raises(ValueError, match="whole one for counts"):
        Limits(**bad)


def test_limits_round_trip_through_json_and_take_whole_floats_as_counts():
    limits = Limits(concurrency=2.0, upload_mb=0.5)
    assert limits.concurrency == 2 and isinstance(limits.concurrency, int)
    assert Limits.from_json(limits.to_json()) == limits


def test_a_100_mb_upload_is_refused_by_size(tmp_path):
    big = tmp_path / "huge.mid"
    huge_upload(big, size_mb=100)
    with pytest.raises(RequestError, match="100.0 MB; the limit is 1 MB"):
        ComposeRequest(primer=big, primer_bars=2, bars=1, seed=1).check(Limits())


def test_a_100_mb_upload_is_refused_by_the_server(app, tmp_path):
    big = tmp_path / "huge.mid"
    huge_upload(big, size_mb=100)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):  # gradio_client checks
        compose(app, handle_file(str(big)))
    response = httpx.post(app.url + "gradio_api/upload", files={"files": ("huge.mid", big.read_bytes())}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size of 1048576 bytes" in response.text  # and the server


# ---------------------------------------------------------------- argument validation


BAD_VALUES = [  # (keyword overrides, words the message must contain)
    ({"temperature_pitch": -1}, "less than minimum value 0"),
    ({"temperature_pitch": 11}, "greater than maximum value"),
    ({"temperature_pitch": "abc"}, "temperature: must be a number, got 'abc'. Send a number from 0 to 3"),
    ({"top_p_duration": 0}, "less than minimum value 0.05"),
    ({"top_p_duration": 1.5}, "greater than maximum value 1"),
    ({"bars": 0}, "less than minimum value 1"),
    ({"bars": 10**6}, "greater than maximum value 64"),
    ({"bars": "abc"}, r"Bars \(1–64\): must be a number, got 'abc'. Send a number from 1 to 64"),
    ({"primer_bars": 0}, "less than minimum value 1"),
    ({"primer_bars": 33}, "greater than maximum value 32"),
    ({"seed": -1}, "Value -1 is less than minimum value 0"),
    ({"seed": 2**80}, "is greater than maximum value 4294967295"),
    ({"seed": "x"}, "Seed: must be a number, got 'x'. Send a number from 0 to 4294967295"),
    ({"checkpoint": 12345}, r"not in the list of choices: \[10000, 28500, 80000\]"),
    ({"checkpoint": None}, "checkpoint must be one of 10000, 28500, 80000"),
]
GOOD = dict(checkpoint=28500, primer=None, primer_bars=2, bars=1, seed=1, random_seed=False)


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[f"{k}={v!r}"[:40] for (o, _) in BAD_VALUES
                                                                 for k, v in o.items()])
def test_bad_argument_gives_a_clear_message(app, override, message):
    kwargs = {**GOOD, **override}
    with pytest.raises(AppError, match=message) as raised:
        app.client.submit(**kwargs, api_name="/compose").result(timeout=HANG_GUARD_SECONDS)
    assert not EXCEPTION_NAME.search(str(raised.value)) and "Traceback" not in str(raised.value), str(raised.value)


def raw_call(app: App, values: dict) -> str:
    """/compose over plain HTTP with a JSON body gradio_client cannot send (NaN) -> the SSE reply text."""
    params = app.client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compose"]["parameters"]
    data = {p["parameter_name"]: p["parameter_default"] for p in params} | GOOD | values
    body = json.dumps({"data": [data[p["parameter_name"]] for p in params]})  # NaN -> the literal NaN
    start = httpx.post(app.url + "gradio_api/call/compose", content=body,
                       headers={"content-type": "application/json"}, timeout=60)
    start.raise_for_status()
    return httpx.get(app.url + f"gradio_api/call/compose/{start.json()['event_id']}",
                     timeout=HANG_GUARD_SECONDS).text


@pytest.mark.parametrize("values, message", [
    ({"temperature_pitch": float("nan")}, "temperature for pitch must be a number from 0 to 10, got nan"),
    ({"top_p_velocity": float("nan")}, "top-p for velocity must be a number above 0 and at most 1, got nan"),
    ({"primer_bars": float("nan")}, "primer bars to keep must be a whole number of at least 1, got nan"),
    ({"bars": float("nan")}, "must be a number, got nan. Send a number from 1 to 64"),
])
def test_nan_sent_over_raw_http_gives_a_clear_message(app, values, message):
    reply = raw_call(app, values)
    assert "event: error" in reply and message in reply
    assert not EXCEPTION_NAME.search(reply), reply


def test_a_server_path_that_was_not_uploaded_is_refused(app, tmp_path):
    """The primer's path comes from the client: one outside Gradio's upload folder is never opened."""
    secret = local_copy(tmp_path, "secret.mid", piano_file())
    reply = raw_call(app, {"primer": {"path": str(secret), "meta": {"_type": "gradio.FileData"}}})
    assert "event: error" in reply and "event: complete" not in reply


# ---------------------------------------------------------------- files


def test_result_folders_are_capped_and_removed_on_close(tmp_path):
    """The Studio keeps at most ``kept_results`` result folders, and close() removes its work dir."""
    studio = Studio(make_tiny_checkpoints(tmp_path / "ckpt", steps=(28500,)), limits=Limits(kept_results=2))
    primer = local_copy(tmp_path, "p.mid", piano_file())
    paths = [list(stream_compose(studio, ComposeRequest(checkpoint=28500, primer=primer, primer_bars=1, bars=1,
                                                        seed=s)))[-1][0].midi_path for s in range(4)]
    workdir = paths[0].parents[1]
    assert [p.exists() for p in paths] == [False, False, True, True]
    assert len(list(workdir.iterdir())) == 2
    studio.close()
    assert not workdir.exists()


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_uploads_and_served_files_are_deleted_after_cache_seconds(tmp_path, monkeypatch):
    """Gradio's copies of uploads and of every served audio/MIDI file go once older than cache_seconds."""
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    studio = Studio(make_tiny_checkpoints(tmp_path / "ckpt", steps=(28500,)), limits=Limits(cache_seconds=1))
    demo = launch(studio)
    try:
        client = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "downloads"))
        primer = handle_file(str(local_copy(tmp_path, "p.mid", piano_file())))
        client.predict(checkpoint=28500, primer=primer, primer_bars=1, bars=1, seed=1, random_seed=False,
                       api_name="/compose")
        served = [p for p in files_in(cache) if p.stat().st_size]  # Gradio leaves a 0-byte temp file per upload
        assert sorted(p.name for p in served) == ["cwcompose-28500-seed1.mid", "cwcompose-28500-seed1.wav", "p.mid"]
        deadline = time.monotonic() + 30
        while any(p.exists() for p in served) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [p for p in served if p.exists()]
    finally:
        demo.close()
        studio.close()


CHURN = """
import os, shutil, sys
root, i = sys.argv[1], 0
while True:  # folders appear and vanish, as Gradio's own cache cleaner makes them vanish
    try:
        os.makedirs(os.path.join(root, f"d{i % 20}", "x", "y"), exist_ok=True)
    except OSError:
        pass
    shutil.rmtree(os.path.join(root, f"d{(i + 10) % 20}"), ignore_errors=True)
    i += 1
"""


def test_pruning_tolerates_folders_vanishing_mid_walk(tmp_path):
    import subprocess
    import sys

    from cwcompose.result_files import prune_old_files
    cache = tmp_path / "cache"
    (cache / "kept").mkdir(parents=True)
    (cache / "kept" / "new.wav").write_bytes(b"x")
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(cache)])
    try:
        time.sleep(0.3)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # unguarded, most of these walks met a vanished folder
            assert prune_old_files(cache, 3600) == 0
    finally:
        churn.kill()
        churn.wait()
    assert (cache / "kept" / "new.wav").is_file(), "a file younger than the age is kept"
    assert prune_old_files(cache, 0) == 1 and not (cache / "kept").exists()


def test_a_periodic_job_that_fails_keeps_running_and_logs_why(caplog):
    import logging
    import threading
    calls, ran_again, park = [], threading.Event(), threading.Event()

    def action():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError("a folder vanished mid-walk")
        ran_again.set()
        park.wait()  # the test is over: the daemon thread stays here, idle

    with caplog.at_level(logging.ERROR):
        app_module.every(0.01, action, "flaky-job")
        assert ran_again.wait(10), "the job ended at its first failure"
    assert "flaky-job" in caplog.text and "a folder vanished mid-walk" in caplog.text


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="needs Linux's /proc/self/mem")
def test_a_primer_that_cannot_be_read_is_reported_as_unreadable(tmp_path):
    """An input/output error while reading the primer names the primer, not the results disk."""
    studio = Studio(make_tiny_checkpoints(tmp_path / "ckpt", steps=(28500,)))
    primer = tmp_path / "p.mid"
    primer.symlink_to("/proc/self/mem")  # a regular file whose reads fail with an input/output error
    try:
        with pytest.raises(MidiReadError, match="cannot read p.mid: Input/output error") as raised:
            list(stream_compose(studio, ComposeRequest(checkpoint=28500, primer=primer, primer_bars=1, bars=1,
                                                       seed=1)))
        assert not message_faults(str(raised.value))
    finally:
        studio.close()


class PickleBomb:
    """Unpickling this touches a marker file: proof that someone ran pickle on it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_load_through_safetensors_only(tmp_path):
    """A pickle saved under the weights' name is refused, and never unpickled."""
    import torch

    from cwcompose.checkpoints import load_checkpoint

    stem = make_tiny_checkpoints(tmp_path, steps=(28500,)) / "step28500"
    marker = tmp_path / "unpickled"
    torch.save({"weights": PickleBomb(marker)}, stem.with_suffix(".safetensors"))
    with pytest.raises(Exception, match="(?i)header|safetensors|deserializ"):
        load_checkpoint(stem, device="cpu")
    assert not marker.exists()
    sources = [ROOT / "app.py", *sorted((ROOT / "cwcompose").glob("*.py"))]
    assert not [p.name for p in sources if "torch.load" in p.read_text() or "import pickle" in p.read_text()]
