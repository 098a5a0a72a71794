"""cwcompose in the browser (Gradio). UI wiring only: composing lives in cwcompose.studio.

    python app.py                                  # http://127.0.0.1:7860
    CWCOMPOSE_CHECKPOINTS=/path/to/ckpts python app.py
    GRADIO_SERVER_NAME=0.0.0.0 python app.py        # listen on every interface (Spaces set this)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr
import torch

from cwcompose.app_layout import (DEFAULT_REQUEST, EMPTY_NUMBERS, INTRO, NUMBER_HEADERS, compare_panel, compose_controls,
                                  preset_values, result_panel, slider_inputs, slider_name, theme)
from cwcompose.checkpoints import SHIPPED_STEPS, CheckpointError
from cwcompose.locks import Locks
from cwcompose.memory import limit_malloc_arenas, release_free_memory
from cwcompose.render import RenderError
from cwcompose.request import DEFAULT_CHECKPOINT, ComposeRequest, RequestError
from cwcompose.roll_view import HEAD, ab_html, empty_roll_html, variations_html
from cwcompose.sampling import DEFAULT_SAMPLING, PRESETS, SamplingConfig
from cwcompose.result_files import prune_old_files
from cwcompose.studio import Partial, Studio, compare_checkpoints, compare_table, stream_compose
from cwcompose.takes import History, locks_summary, numbers_table
from cwcompose.tokenizer import FIELDS, MidiReadError
from cwcompose.turns import run_in_turn, withdraw

CHECKPOINTS_ENV = "CWCOMPOSE_CHECKPOINTS"
MEMORY_RELEASE_SECONDS = 60  # how often free heap pages go back to the system (cwcompose/memory.py)
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
# The original author's impressions; docs/EVALUATION.md measures how far they hold here.
CHECKPOINT_NOTES = {10000: "author: too light, off-key", 28500: "author: just right",
                    80000: "author: lacks variation"}
USER_ERRORS = (RequestError, CheckpointError, MidiReadError, RenderError)  # shown as gr.Error, never a crash


def gpu(seconds: float):
    """``spaces.GPU(duration=seconds)`` on a Hugging Face ZeroGPU Space, else a no-op decorator."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=int(seconds))


def service_status(studio: Studio) -> str:
    """Which checkpoints can be used right now, and which soundfont plays the results."""
    available = studio.available_checkpoints()
    missing = [s for s in SHIPPED_STEPS if s not in available]
    sound = f"Soundfont: `{studio.renderer.soundfont.path.name}` ({studio.renderer.soundfont.reason})."
    if not missing:
        return f"All checkpoints are available. {sound}"
    have = ", ".join(map(str, available)) or "none"
    return (f"⚠️ Available checkpoints: **{have}**. Missing: **{', '.join(map(str, missing))}** "
            f"(not in `{studio.checkpoint_dir}` yet; choosing one shows an error). {sound}")


def forget_session(demo: gr.Blocks, studio: Studio, request: gr.Request) -> None:
    """A session whose page is gone (its heartbeat closed: the tab closed, the API client closed)
    frees its takes, its counts in ``studio.turns`` and Gradio's own per-session copy of the page
    config (about 0.3 MB of Python objects per visitor, measured) at once; Gradio alone keeps them
    until 10,000 sessions have come, so a soak with new visitors arriving grew without end."""
    holder, session = getattr(demo, "state_holder", None), getattr(request, "session_hash", None)
    if session:
        studio.turns.forget(session)
    # Gradio's internals (6.x): a Gradio without them keeps its copies as before, nothing breaks
    if session and all(hasattr(holder, name) for name in ("lock", "session_data", "time_last_used")):
        with holder.lock:
            holder.session_data.pop(session, None)
            holder.time_last_used.pop(session, None)


def sampling_from_sliders(values: dict) -> SamplingConfig:
    """Slider values keyed by :func:`slider_name` -> a validated SamplingConfig."""
    return SamplingConfig(temperature={f: values[slider_name("temperature", f)] for f in FIELDS},
                          top_p={f: values[slider_name("top_p", f)] for f in FIELDS})


def checkpoint_choices(studio: Studio) -> list[tuple[str, int]]:
    """Dropdown entries: the step, how much the model remembers, and the author's word on it."""
    def label(step: int) -> str:
        words = studio.memory_words(step)
        memory = f" · {words}-word memory" if words else ""
        return f"{step}{memory} ({CHECKPOINT_NOTES[step]})"
    return [(label(s), s) for s in SHIPPED_STEPS]


def locks_from(chords, key, key_strength, tempo_bpm) -> Locks:
    """UI/API values -> Locks: empty text, the "none" key and tempo 0 mean "not locked"."""
    try:
        return Locks(chords=(chords or "").strip() or None, key=(key or "").strip() or None,
                     key_strength=float(key_strength if key_strength is not None else 1.0),
                     tempo_bpm=float(tempo_bpm) if tempo_bpm else None)
    except ValueError as err:
        raise gr.Error(str(err)) from err


def build_request(checkpoint, primer, primer_bars, bars, seed, random_seed, sliders: dict, *, variations=1,
                  locks: Locks = Locks(), primer_words=None) -> ComposeRequest:
    """UI values -> ComposeRequest; every problem becomes a gr.Error naming it."""
    try:
        return ComposeRequest(checkpoint=checkpoint, primer=primer, primer_bars=primer_bars, bars=bars,
                              seed=None if random_seed else seed, sampling=sampling_from_sliders(sliders),
                              variations=variations, locks=locks, primer_words=primer_words)
    except ValueError as err:
        raise gr.Error(str(err)) from err


def session_key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


# ---------------------------------------------------------------- the page (laid out in cwcompose/app_layout.py)


def build_demo(studio: Studio) -> gr.Blocks:
    """The whole app around one Studio."""
    limits = studio.limits
    with gr.Blocks(title="cwcompose", delete_cache=(limits.cache_seconds, limits.cache_seconds)) as demo:
        gr.Markdown(INTRO)
        history = gr.State(History())
        with gr.Tab("Compose", id="compose-tab"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=320):
                    controls = compose_controls(limits, checkpoint_choices(studio))
                with gr.Column(scale=3, min_width=320, elem_id="compose-result"):
                    result = result_panel()
        with gr.Tab("Compare checkpoints", id="compare-tab"):
            compare_ui = compare_panel()
        status = gr.Markdown(service_status(studio), elem_id="checkpoint-status")
        wire_events(studio, history, controls, result, compare_ui)
        demo.load(lambda: service_status(studio), None, status, api_visibility="private")

        def forget(request: gr.Request):  # the annotation is what gets the request passed in
            forget_session(demo, studio, request)

        demo.unload(forget)
    return demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)


# ---------------------------------------------------------------- events


def takes_rows(history: History) -> list[list]:
    return [[t.label, t.checkpoint, t.seed, t.bars, "; ".join(f"{k} {v}" for k, v in locks_summary(t.request.locks).items())]
            for t in history.takes] or [["", "", "", "", ""]]


def take_outputs(take) -> tuple:
    """What the result panel shows of ``take``: audio, MIDI, roll, numbers, seed (no take: left as set)."""
    if take is None:
        return None, None, empty_roll_html("No takes yet: press Generate."), EMPTY_NUMBERS, gr.update()
    return (str(take.audio_path) if take.audio_path else None, str(take.midi_path), take.roll,
            {"headers": NUMBER_HEADERS, "data": numbers_table(take.numbers)}, take.seed)


class TakeEvents:
    """The compose tab's handlers: compose, rewind and continue stream a take into the result
    panel; undo and keep move through the session's :class:`History`; the history list follows."""

    def __init__(self, studio: Studio, history: gr.State, c: dict, r: dict):
        self.studio, self.history, self.c, self.r = studio, history, c, r
        budget = gpu(studio.limits.request_seconds)  # the handlers that compose
        for name in ("compose", "rewind", "continue_take"):
            setattr(self, name, budget(getattr(self, name)))

    def stream(self, req: ComposeRequest, hist: History, request: gr.Request, label: str):
        """Streamed updates (the roll, which carries the audio chunk list), then the final take."""
        roll = self.r["piano_roll"]

        def run(stop: threading.Event):
            for event in stream_compose(self.studio, req, stop, label=label):
                yield {roll: event.roll} if isinstance(event, Partial) else self.finished(event, hist)

        yield from in_turn(self.studio, session_key(request), lambda text: {roll: empty_roll_html(text)}, run)

    def finished(self, takes: list, hist: History) -> dict:
        hist.add(takes[0], takes if len(takes) > 1 else [])
        if takes[0].audio_path is None:  # the soundfont is gone: MIDI and roll only
            gr.Warning(self.studio.audio_problem or "No audio this time: the soundfont could not be loaded. "
                       "The MIDI file and the piano roll are ready.")
        return dict(zip(self.main_outputs(), take_outputs(takes[0]))) | {self.history: hist}

    def main_outputs(self) -> list:
        return [self.r["audio"], self.r["midi"], self.r["piano_roll"], self.r["numbers"], self.c["seed"]]

    def compose(self, checkpoint=DEFAULT_CHECKPOINT, primer=None, bars=16, variations=1, chords=None, key=None,
                key_strength=1.0, tempo_bpm=0, primer_bars=8, seed=0, random_seed=True, hist: History = None,
                request: gr.Request = None, **sampling):
        req = build_request(checkpoint, primer, primer_bars, bars, seed, random_seed, sampling,
                            variations=variations, locks=locks_from(chords, key, key_strength, tempo_bpm))
        yield from self.stream(req, hist, request, label="")

    def rewind(self, bar, seed, random_seed, hist: History, request: gr.Request):
        take = current_take(hist)
        if bar is None or not 1 <= bar <= take.bars - 1:
            raise gr.Error(f"Keep from 1 to {take.bars - 1} bars: the current take has {take.bars}, and at least "
                           "one bar must be composed again.")
        bar = int(bar)  # the engine keeps the take's first N bars (from_bar) and composes the rest again
        req = replace_request(take.request, primer=None, primer_words=take.composition.words, from_bar=bar,
                              primer_bars=bar, bars=take.bars - bar, variations=1,
                              seed=None if random_seed else seed)
        yield from self.stream(req, hist, request, label=f"rewound from bar {bar}")

    def continue_take(self, bars, seed, random_seed, hist: History, request: gr.Request):
        take = current_take(hist)
        req = replace_request(take.request, primer=None, primer_words=take.composition.words,
                              primer_bars=take.bars, from_bar=None, bars=bars, variations=1,
                              seed=None if random_seed else seed)
        yield from self.stream(req, hist, request, label="continued")

    def restored(self, *takes) -> None:
        """Writes again the files of ``takes`` that the oldest-first deletion of result folders
        (shared by all sessions) took: a session's history outlives them."""
        try:
            self.studio.restore_files(*(t for t in takes if t is not None))
        except USER_ERRORS as err:
            raise gr.Error(str(err)) from err

    def undo(self, hist: History):
        hist.undo()
        self.restored(hist.current)
        return (*take_outputs(hist.current), hist)

    def keep(self, choice, hist: History):
        if not choice:
            raise gr.Error("Pick a variation to keep first.")
        try:
            take = hist.keep(int(choice) - 1)
        except RequestError as err:
            raise gr.Error(str(err)) from err
        self.restored(*hist.variations)  # the kept one, and the others still shown beside it
        return (*take_outputs(take), hist)

    @staticmethod
    def show_history(hist: History):
        n = len(hist.variations)
        items = [(f"Variation {i + 1} (seed {t.seed})", t.roll_small, str(t.audio_path))
                 for i, t in enumerate(hist.variations) if t.audio_path] if n else []
        return takes_rows(hist), variations_html(items), gr.update(value="1", visible=n > 1), gr.update(visible=n > 1)

    def wire(self, sliders: dict) -> None:
        c, r, history = self.c, self.r, self.history
        outputs = [*self.main_outputs(), history]
        compose_inputs = [c[k] for k in ("checkpoint", "primer", "bars", "variations", "chords", "key",
                                         "key_strength", "tempo", "primer_bars", "seed", "random_seed")] + [history]
        queued = studio_queue(self.studio)
        events = [  # always_last: a click while composing replaces the pending one (the browser keeps one)
            c["generate"].click(self.compose, compose_inputs, outputs, inputs_kwargs=sliders, api_name="compose",
                                show_progress="minimal", trigger_mode="always_last", **queued),
            r["rewind"].click(self.rewind, [r["rewind_bar"], c["seed"], c["random_seed"], history], outputs,
                              api_name="rewind", show_progress="minimal", **queued),
            r["continue"].click(self.continue_take, [c["bars"], c["seed"], c["random_seed"], history], outputs,
                                api_name="continue", show_progress="minimal", **queued),
            c["undo"].click(self.undo, history, outputs, api_name="undo"),
            r["keep"].click(self.keep, [r["keep_choice"], history], outputs, api_name="keep"),
        ]
        for event in events:
            event.then(self.show_history, history, [r["takes"], r["variations"], r["keep_choice"], r["keep"]],
                       api_visibility="private")
        c["stop"].click(stop_handler(self.studio), None, None, api_name="stop")


def wire_events(studio: Studio, history: gr.State, c: dict, r: dict, compare_ui: dict) -> None:
    sliders = slider_inputs(c)
    TakeEvents(studio, history, c, r).wire(sliders)
    wire_compare(studio, c, compare_ui, sliders)
    c["preset"].change(lambda name: preset_values(c, PRESETS[name]), c["preset"], list(sliders.values()),
                       api_visibility="private")
    c["reset"].click(lambda: {**preset_values(c, DEFAULT_SAMPLING), c["preset"]: "balanced",
                              c["primer_bars"]: DEFAULT_REQUEST.primer_bars, c["bars"]: DEFAULT_REQUEST.bars},
                     None, [*sliders.values(), c["preset"], c["primer_bars"], c["bars"]], api_visibility="private")


def replace_request(request: ComposeRequest, **changes) -> ComposeRequest:
    """``request`` with ``changes``; a change the request refuses is shown to the user."""
    try:
        return dataclasses.replace(request, **changes)
    except ValueError as err:
        raise gr.Error(str(err)) from err


def current_take(hist: History):
    if hist.current is None:
        raise gr.Error("Generate something first: there is no take yet.")
    return hist.current


def wire_compare(studio: Studio, c: dict, ui: dict, sliders: dict) -> None:
    @gpu(studio.limits.request_seconds * len(SHIPPED_STEPS))
    def compare(primer=None, primer_bars=8, bars=16, seed=0, random_seed=True, chords=None, key=None, key_strength=1.0,
                tempo_bpm=0, request: gr.Request = None, **sampling):
        req = build_request(DEFAULT_CHECKPOINT, primer, primer_bars, bars, seed, random_seed, sampling,
                            locks=locks_from(chords, key, key_strength, tempo_bpm))

        def run(stop: threading.Event):
            yield compare_outputs(c, ui, compare_checkpoints(studio, req, stop), seed)

        yield from in_turn(studio, session_key(request), lambda text: {ui["view"]: empty_roll_html(text)}, run)

    outputs = [ui["view"], ui["table"], c["seed"]] + [f[k] for f in ui["files"].values() for k in ("audio", "midi")]
    inputs = [c[k] for k in ("primer", "primer_bars", "bars", "seed", "random_seed", "chords", "key", "key_strength",
                             "tempo")]
    ui["compare"].click(compare, inputs, outputs, inputs_kwargs=sliders, api_name="compare",
                        show_progress="minimal", **studio_queue(studio))
    ui["stop"].click(stop_handler(studio), None, None, api_visibility="private")


def compare_outputs(c: dict, ui: dict, takes: dict, seed) -> dict:
    """The compare tab showing ``takes`` (step -> Take, or a message, shown as a warning)."""
    values, items = {}, []
    for letter, (step, take) in zip("ABC", takes.items()):
        files = ui["files"][step]
        if isinstance(take, str):
            gr.Warning(take)
            values.update({files["audio"]: None, files["midi"]: None})
            continue
        audio = str(take.audio_path) if take.audio_path else None  # None: the soundfont is gone
        items.append((letter, f"checkpoint {step}", take.roll_static, audio or ""))
        values.update({files["audio"]: audio, files["midi"]: str(take.midi_path)})
    seed_used = next((t.seed for t in takes.values() if not isinstance(t, str)), seed)
    return {**values, ui["view"]: ab_html(items), c["seed"]: seed_used, ui["table"]: compare_table(takes)}


def in_turn(studio: Studio, key: str, waiting: Callable[[str], dict], run: Callable) -> Iterator[dict]:
    """``turns.run_in_turn`` for session ``key``, a problem for the person becoming a gr.Error."""
    try:
        yield from run_in_turn(studio.turns, studio.stops, key, run, waiting)
    except USER_ERRORS as err:
        raise gr.Error(str(err)) from err


def stop_handler(studio: Studio) -> Callable:
    """A Stop button's handler: withdraws the session's waiting request, stops its running one."""
    def stop_clicked(request: gr.Request):  # the annotation is what gets the request passed in
        withdraw(studio.turns, studio.stops, session_key(request))
    return stop_clicked


def studio_queue(studio: Studio) -> dict:
    """Event options for the composing events: they share one Gradio concurrency group wide enough
    for every request the studio admits and a few more (which it turns away at once with a message),
    so the waiting happens in ``studio.turns`` (fair across sessions, one waiting request per
    session) rather than in Gradio's first-come queue."""
    return dict(concurrency_id="studio", concurrency_limit=studio.limits.queue_size + studio.limits.concurrency + 4)


# ---------------------------------------------------------------- launch


def make_studio(env=os.environ) -> Studio:
    """A Studio on the checkpoint folder named by $CWCOMPOSE_CHECKPOINTS (default: checkpoints/)."""
    if not torch.cuda.is_available():
        # Word-by-word decoding gains nothing from a second CPU thread, which only fights
        # Gradio and FluidSynth for the cores (measured: 16 bars 3.4 s -> 2.2 s on 2 cores).
        torch.set_num_threads(1)
    return Studio(env.get(CHECKPOINTS_ENV) or DEFAULT_CHECKPOINT_DIR)


def launch_options(studio: Studio) -> dict:
    """``launch()`` arguments that the app's behaviour depends on (tests launch with them too):
    the upload cap, and Gradio's own input errors (e.g. text in a number field) shown, not hidden;
    Gradio's 40 worker threads plus one per request that may wait its turn in ``studio.turns``."""
    return dict(max_file_size=studio.limits.upload_bytes, show_error=True, head=HEAD,
                allowed_paths=[str(studio.workdir)],
                max_threads=40 + studio_queue(studio)["concurrency_limit"])


def launch(studio: Studio, **options) -> gr.Blocks:
    """Build the demo around ``studio`` and start it with the app's launch options (tests and
    benchmarks pass ``prevent_thread_lock=True`` to get it back while it serves)."""
    limit_malloc_arenas()  # before Gradio's worker threads exist
    demo = build_demo(studio)
    demo.launch(**{"server_name": "127.0.0.1", "theme": theme(), **launch_options(studio), **options})
    age = studio.limits.cache_seconds
    # Gradio 6.31's own ``delete_cache`` misses the copies made while streaming a generator's
    # outputs (tracked in per-session copies of the components): about 0.4 GB a minute under load
    every(age, lambda: prune_old_files(demo.GRADIO_CACHE, age), "prune-gradio-cache")
    every(MEMORY_RELEASE_SECONDS, release_free_memory, "release-free-memory")
    return demo


def every(seconds: float, action: Callable[[], object], name: str) -> threading.Thread:
    """Run ``action`` every ``seconds`` in a daemon thread called ``name``, for as long as the process
    lives; a round that raises is logged, and the next round runs as usual."""
    def forever() -> None:
        while True:
            time.sleep(seconds)
            try:
                action()
            except Exception:  # one failed round (e.g. a folder gone mid-walk) must not end the job for good
                logging.getLogger(__name__).exception("periodic job %s failed; it runs again in %s s", name, seconds)

    thread = threading.Thread(target=forever, name=name, daemon=True)
    thread.start()
    return thread


def main() -> None:
    studio = make_studio()
    studio.preload()
    studio.renderer.warm_up()
    launch(studio, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))


if __name__ == "__main__":
    main()
