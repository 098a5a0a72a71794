"""The Gradio app over real HTTP: gradio_client against an in-process server on tiny stand-in checkpoints."""

from __future__ import annotations

import threading
import wave
from pathlib import Path

import miditoolkit
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app_harness import launch_app, make_tiny_checkpoints
from cwcompose.checkpoints import SHIPPED_STEPS
from cwcompose.studio import ComposeRequest, Limits, RequestError, Stopped, Studio

TICKS_PER_BAR = 4 * 480
RESULT_KEYS = ("audio", "plot", "midi")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    demo, studio = launch_app(make_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints")))
    yield Client(demo.local_url, verbose=False)
    demo.close()
    studio.close()


def check_result(audio: str, plot: dict, midi: str, *, bars: int, primer_bars: int) -> list:
    """Assert one result is playable, drawn and downloadable with notes only in its bars; returns the notes."""
    with wave.open(audio) as wav:
        assert wav.getframerate() == 44100 and wav.getnframes() > 44100 // 2
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image")
    notes = miditoolkit.MidiFile(midi).instruments[0].notes
    assert all(n.start < (primer_bars + bars) * TICKS_PER_BAR for n in notes)
    return notes


def table_column(table: dict, step: int) -> dict:
    """One checkpoint's column of the compare table, keyed by metric name."""
    column = table["headers"].index(str(step))
    return {row[0]: row[column] for row in table["data"]}


def test_compose_from_nothing(client):
    audio, plot, midi, metrics, seed = client.predict(28500, None, 4, 6, 7, False, api_name="/compose")
    notes = check_result(audio, plot, midi, bars=6, primer_bars=0)
    assert metrics["bars generated"] == 6 and metrics["primer bars"] == 0
    assert seed == 7 and metrics["seed"] == 7 and metrics["checkpoint"] == 28500
    assert metrics["notes generated"] == len(notes)


def test_compose_continues_a_pop909_primer(client, pop909):
    primer = pop909 / "001" / "001.mid"
    audio, plot, midi, metrics, seed = client.predict(
        10000, handle_file(str(primer)), 4, 4, 3, False, temperature_pitch=0.5, top_p_duration=0.8,
        api_name="/compose")
    notes = check_result(audio, plot, midi, bars=4, primer_bars=4)
    assert metrics["bars generated"] == 4 and metrics["primer bars"] == 4
    assert seed == 3 and metrics["checkpoint"] == 10000
    primer_notes = [n for n in notes if n.start < 4 * TICKS_PER_BAR]
    assert len(primer_notes) > 10, "the primer's last 4 bars come first"


def test_compare_plays_one_primer_through_all_three_checkpoints(client, pop909):
    *results, table, seed = client.predict(handle_file(str(pop909 / "002" / "002.mid")), 2, 3, 11, False,
                                           api_name="/compare")
    assert len(results) == 3 * len(SHIPPED_STEPS) and seed == 11
    midis = []
    for i, step in enumerate(SHIPPED_STEPS):
        result = dict(zip(RESULT_KEYS, results[3 * i: 3 * i + 3]))
        check_result(**result, bars=3, primer_bars=2)
        numbers = table_column(table, step)
        assert numbers["seed"] == "11" and numbers["bars generated"] == "3" and numbers["primer bars"] == "2"
        midis.append(Path(result["midi"]).read_bytes())
    assert len(set(midis)) > 1, "different checkpoints should not all write the same piece"


@pytest.mark.parametrize("args, kwargs, message", [
    ((28500, None, 4, 0, 1, False), {}, "Value 0 is less than minimum value 1"),  # Gradio checks slider bounds
    ((28500, None, 4, 500, 1, False), {}, "Value 500 is greater than maximum value 64"),
    ((28500, None, 4, 2.5, 1, False), {}, "bars to generate must be a whole number of at least 1, got 2.5"),
    ((28500, None, 4, 4, 1, False), {"temperature_pitch": -1}, "Value -1 is less than minimum value 0"),
    ((28500, None, 4, 4, -5, False), {}, "seed must be a whole number from 0 to 4294967295, got -5"),
    ((12345, None, 4, 4, 1, False), {}, r"12345 .* is not in the list of choices: \[10000, 28500, 80000\]"),
])
def test_bad_values_give_a_clear_error(client, args, kwargs, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args, **kwargs, api_name="/compose")


def test_a_file_that_is_not_midi_is_refused_with_the_reason(client, tmp_path):
    fake = tmp_path / "song.mid"
    fake.write_text("this is not music")
    with pytest.raises(AppError, match="not a MIDI file"):
        client.predict(28500, handle_file(str(fake)), 4, 4, 1, False, api_name="/compose")


def test_missing_checkpoints_are_reported_not_crashed(tmp_path):
    demo, studio = launch_app(make_tiny_checkpoints(tmp_path, steps=(10000,)))
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(AppError, match="checkpoint 80000 is not available.*Available: 10000"):
            client.predict(80000, None, 4, 2, 1, False, api_name="/compose")
        *results, table, _ = client.predict(None, 4, 2, 1, False, api_name="/compare")
        assert results[0] is not None and results[3] is None and results[6] is None
        assert table_column(table, 10000)["bars generated"] == "2"
        assert table_column(table, 28500)["bars generated"] == "not available"
    finally:
        demo.close()
        studio.close()


# ---------------------------------------------------------------- the service behind the app


@pytest.fixture(scope="module")
def studio_folder(tmp_path_factory) -> Path:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("studio_checkpoints"))


def test_a_stop_request_ends_composing_at_the_next_bar(studio_folder):
    studio = Studio(studio_folder)
    stop, bars_seen = threading.Event(), []
    stop.set()
    with pytest.raises(Stopped):
        studio.compose(ComposeRequest(bars=8, seed=1), on_bar=lambda done, total: bars_seen.append(done), stop=stop)
    assert bars_seen == [1], "composing stops at the first bar line after the stop request"
    studio.close()


def test_the_time_budget_and_upload_size_are_enforced(studio_folder, pop909):
    studio = Studio(studio_folder, limits=Limits(request_seconds=1e-6, upload_mb=0.005))
    result = studio.compose(ComposeRequest(bars=8, seed=1))
    assert result.metrics["stopped early"] and result.metrics["bars generated"] < 8
    primer = pop909 / "001" / "001.mid"
    assert primer.stat().st_size > 0.005 * 2**20
    with pytest.raises(RequestError, match=r"the limit is 0.005 MB"):
        studio.compose(ComposeRequest(primer=primer, seed=1))
    studio.close()
