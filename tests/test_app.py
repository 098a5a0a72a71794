"""The Gradio app over real HTTP: gradio_client against an in-process server on tiny stand-in checkpoints."""

from __future__ import annotations

import re
import threading
import wave
from pathlib import Path

import miditoolkit
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app_harness import launch_app, make_tiny_checkpoints
from cwcompose.checkpoints import SHIPPED_STEPS, load_checkpoint
from cwcompose.generation import compose
from cwcompose.render import RenderConfig, Renderer
from cwcompose.sampling import DEFAULT_SAMPLING
from cwcompose.request import ComposeRequest, Limits, RequestError
from cwcompose.studio import Partial, Studio, stream_compose

TICKS_PER_BAR = 4 * 480


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def client(checkpoints):
    demo, studio = launch_app(checkpoints)
    yield Client(demo.local_url, verbose=False)
    demo.close()
    studio.close()


def numbers(table: dict) -> dict:
    return {row[0]: row[1] for row in table["data"]}


def midi_notes(path) -> list:
    return miditoolkit.MidiFile(path).instruments[0].notes


def test_compose_with_no_arguments(client):
    audio, midi, roll, table, seed = client.predict(api_name="/compose")
    with wave.open(audio) as wav:
        assert wav.getframerate() == 44100 and wav.getnframes() > 44100 // 2
    shown = numbers(table)
    assert shown["bars generated"] == "16" and shown["seed"] == str(seed) and shown["checkpoint"] == "28500"
    assert 'class="cw-roll' in roll and int(re.search(r'data-bars="(\d+)"', roll)[1]) >= 16  # notes may ring on
    assert all(n.start < 16 * TICKS_PER_BAR for n in midi_notes(midi))
    assert shown["notes generated"] == str(len(midi_notes(midi)))


def test_compose_streams_and_equals_the_engine(client, checkpoints):
    job = client.submit(checkpoint=10000, bars=6, seed=7, random_seed=False, temperature_pitch=0.5,
                        api_name="/compose")
    audio, midi, roll, table, seed = job.result()
    updates = job.outputs()
    assert len(updates) >= 3, "the roll is sent after every bar, before the final result"
    partial_rolls = [u[2] for u in updates[:-1] if u[2] and "composing, bar" in u[2]]
    assert partial_rolls and 'data-done="0"' in partial_rolls[0]
    model, tokenizer = load_checkpoint(checkpoints / "step10000")
    sampling = DEFAULT_SAMPLING.with_fields(temperature={"pitch": 0.5}) if hasattr(DEFAULT_SAMPLING, "with_fields") \
        else type(DEFAULT_SAMPLING)(temperature={**DEFAULT_SAMPLING.temperature, "pitch": 0.5},
                                    top_p=dict(DEFAULT_SAMPLING.top_p))
    expected = compose(model, tokenizer, bars=6, seed=7, sampling=sampling)
    got = sorted((n.start, n.end, n.pitch, n.velocity) for n in midi_notes(midi))
    assert got == sorted((n.start, n.end, n.pitch, n.velocity) for n in expected.midi.instruments[0].notes)
    assert seed == 7


@pytest.mark.parametrize("first_seed", [2, 3, 4])
def test_takes_undo_rewind_and_continue(client, first_seed):
    client.predict(bars=6, seed=1, random_seed=False, api_name="/compose")
    first = client.predict(bars=6, seed=first_seed, random_seed=False, api_name="/compose")
    kept = [n for n in midi_notes(first[1]) if n.start < 3 * TICKS_PER_BAR]
    audio, midi, roll, table, seed = client.predict(bar=3, seed=9, random_seed=False, api_name="/rewind")
    notes = midi_notes(midi)
    # note for note: the kept bars gain nothing (the engine closes the last kept bar) and lose nothing
    assert sorted((n.start, n.end, n.pitch, n.velocity) for n in notes if n.start < 3 * TICKS_PER_BAR) == sorted(
        (n.start, n.end, n.pitch, n.velocity) for n in kept)
    assert numbers(table)["primer bars"] == "3" and numbers(table)["bars generated"] == "3"
    longer = client.predict(bars=2, seed=3, random_seed=False, api_name="/continue")
    assert numbers(longer[3])["primer bars"] == "6" and numbers(longer[3])["bars generated"] == "2"
    back = client.predict(api_name="/undo")
    assert Path(back[1]).read_bytes() == Path(midi).read_bytes(), "undo shows the take before"


def test_undo_to_no_take_leaves_the_seed_box_as_it_was(client):
    visitor = Client(client.src, verbose=False)  # a session of its own: no takes yet
    assert visitor.predict(bars=1, seed=5, random_seed=False, api_name="/compose")[-1] == 5
    audio, midi, roll, table, seed = visitor.predict(api_name="/undo")
    assert audio is None and midi is None and "No takes yet" in roll
    assert seed == {"__type__": "update"}, "the Seed box is left alone, not reset to 0"


def test_variations_are_separate_takes(client):
    audio, midi, roll, table, seed = client.predict(bars=4, variations=3, seed=5, random_seed=False,
                                                    api_name="/compose")
    assert numbers(table)["variation"] == "1"
    audio2, midi2, *_ = client.predict(choice="2", api_name="/keep")
    assert numbers(_[1])["variation"] == "2" and Path(midi2).read_bytes() != Path(midi).read_bytes()


def test_locks_are_checked(client):
    with pytest.raises(AppError, match="chord|Chord"):
        client.predict(chords="C | G", bars=2, api_name="/compose")


def test_compare_plays_one_request_through_all_three(client):
    view, table, seed, *files = client.predict(bars=3, seed=11, random_seed=False, api_name="/compare")
    assert seed == 11 and view.count("<audio") == 3 and 'data-cw="ab-B"' in view
    assert table["headers"] == ["measure", *map(str, SHIPPED_STEPS)]
    rows = {r[0]: r[1:] for r in table["data"]}
    assert rows["bars generated"] == ["3"] * 3 and rows["seed"] == ["11"] * 3
    midis = [Path(f).read_bytes() for f in files[1::2]]
    assert len(set(midis)) > 1


@pytest.mark.parametrize("kwargs, message", [
    ({"bars": 500}, "greater than maximum value 64"),
    ({"seed": -5, "random_seed": False}, "less than minimum value 0"),
    ({"checkpoint": 12345}, r"12345 is not in the list of choices"),
    ({"temperature_pitch": -1}, "Value -1 is less than minimum value 0"),
])
def test_bad_values_give_a_clear_error(client, kwargs, message):
    with pytest.raises(AppError, match=message):
        client.predict(**kwargs, api_name="/compose")


def test_a_file_that_is_not_midi_is_refused_with_the_reason(client, tmp_path):
    fake = tmp_path / "song.mid"
    fake.write_text("this is not music")
    with pytest.raises(AppError, match="MIDI"):
        client.predict(primer=handle_file(str(fake)), bars=2, api_name="/compose")


def test_missing_checkpoints_are_reported_not_crashed(tmp_path):
    demo, studio = launch_app(make_tiny_checkpoints(tmp_path, steps=(10000,)))
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(AppError, match="checkpoint 80000 is not available"):
            client.predict(checkpoint=80000, bars=2, api_name="/compose")
        view, table, seed, *files = client.predict(bars=2, api_name="/compare")
        rows = {r[0]: r[1:] for r in table["data"]}
        assert rows["bars generated"] == ["2", "not available", "not available"]
        assert files[0] is not None and files[2] is None
    finally:
        demo.close()
        studio.close()


README_EXAMPLE = '''
from gradio_client import Client

client = Client("http://127.0.0.1:7860/")    # `make run`; or a Space's name, e.g. Client("user/cwcompose")
audio, midi, piano_roll, numbers, seed = client.predict(
    checkpoint=28500, bars=8, variations=1, chords="C G Am F", key="C major", key_strength=1.0,
    tempo_bpm=100, temperature_pitch=0.8, api_name="/compose")
print(audio, midi, seed)                     # local paths of the WAV and the MIDI, and the seed used
print({row[0]: row[1] for row in numbers["data"]})
'''
README_URL = "http://127.0.0.1:7860/"


def readme_api_example() -> str | None:
    """The fenced Python block of README.md that calls ``/compose`` through gradio_client."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return next((b for b in blocks if "from gradio_client import Client" in b and '"/compose"' in b), None)


def test_the_readme_example_runs_as_written(client, capsys):
    block = readme_api_example()
    if block is None:
        pytest.skip("README.md has no gradio_client example yet")
    assert block.strip() == README_EXAMPLE.strip(), "README's API example and README_EXAMPLE differ"
    exec(block.replace(README_URL, client.src), {})  # the README's own text, not the copy here
    printed = capsys.readouterr().out.splitlines()
    shown = eval(printed[-1])  # the numbers dict it prints
    assert shown["bars generated"] == "8" and shown["chords"] == "C G Am F" and shown["checkpoint"] == "28500"


# ---------------------------------------------------------------- the service behind the app


def test_stream_chunks_join_into_the_whole_render(checkpoints):
    renderer = Renderer(config=RenderConfig(reverb=False, max_synths=1))
    studio = Studio(checkpoints, renderer=renderer)
    studio.model(28500)
    renderer.render(compose(*studio.model(28500), bars=1, seed=0).midi)  # a new synth's first render differs
    events = list(stream_compose(studio, ComposeRequest(bars=5, seed=4)))
    done = [e.bars_done for e in events[:-1]]
    assert isinstance(events[0], Partial) and done == sorted(set(done)) and done[0] == 1
    take = events[-1][0]
    with wave.open(str(take.audio_path)) as wav:
        streamed = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    whole = np.round(np.clip(renderer.render(take.composition.midi), -1, 1) * 32767).astype("<i2")
    assert streamed.shape == whole.shape
    # equal up to FluidSynth's free-running chorus/LFO phase, which no reset clears: two whole renders of one
    # piece on different synths differ as much (measured up to 143, 0.44% of full scale)
    assert np.abs(streamed.astype(np.int32) - whole).max() <= 0.005 * 32767
    studio.close()


def test_a_stop_request_keeps_what_was_composed(checkpoints):
    studio = Studio(checkpoints)
    stop = threading.Event()
    seen = []
    for event in stream_compose(studio, ComposeRequest(bars=8, seed=1), stop):
        if isinstance(event, Partial):
            seen.append(event.bars_done)
            if event.bars_done == 2:
                stop.set()
        else:
            take = event[0]
    assert seen == [1, 2] and take.numbers["stopped early"] and take.numbers["bars generated"] == 2
    studio.close()


def test_locks_and_variations_go_to_the_engine_as_one_batch(checkpoints):
    from cwcompose.generation import compose_variations
    from cwcompose.locks import Locks, forced_chord_words, parse_progression
    studio = Studio(checkpoints)
    locks = Locks(chords="C G Am F", key="C major")
    events = list(stream_compose(studio, ComposeRequest(bars=5, seed=3, variations=3, locks=locks)))
    takes = events[-1]
    assert [t.seed for t in takes] == [3, 4, 5] and all(t.numbers["chords"] == "C G Am F" for t in takes)
    model, tokenizer = studio.model(28500)
    expected = compose_variations(model, tokenizer, variations=3, bars=5, seed=3,
                                  constraints=locks.processors(tokenizer))
    for take, piece in zip(takes, expected):
        assert np.array_equal(take.composition.words, piece.words)
        found = forced_chord_words(take.composition.words, 0, parse_progression("C G Am F"), tokenizer)
        assert found and all(written == asked for _, _, written, asked in found)
    studio.close()


def test_the_upload_size_is_enforced(checkpoints, pop909):
    studio = Studio(checkpoints, limits=Limits(upload_mb=0.005))
    with pytest.raises(RequestError, match=r"the limit is 0.005 MB"):
        list(stream_compose(studio, ComposeRequest(primer=pop909 / "001" / "001.mid", seed=1)))
    studio.close()
