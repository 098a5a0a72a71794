"""cwcompose in the browser (Gradio). UI wiring only: composing lives in cwcompose.studio.

    python app.py                                  # http://127.0.0.1:7860
    CWCOMPOSE_CHECKPOINTS=/path/to/ckpts python app.py
    GRADIO_SERVER_NAME=0.0.0.0 python app.py        # listen on every interface (Spaces set this)
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import torch

from cwcompose.checkpoints import SHIPPED_STEPS, CheckpointError
from cwcompose.render import RenderError
from cwcompose.sampling import DEFAULT_SAMPLING, FIELD_LABELS, MAX_TEMPERATURE, PRESETS, SamplingConfig
from cwcompose.studio import (DEFAULT_CHECKPOINT, MAX_SEED, ComposeRequest, Limits, RequestError, Stopped, Studio,
                              comparison_rows)
from cwcompose.tokenizer import FIELDS, MidiReadError

CHECKPOINTS_ENV = "CWCOMPOSE_CHECKPOINTS"
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
# The original author's impressions; docs/EVALUATION.md measures how far they hold here.
CHECKPOINT_NOTES = {10000: "author: too light, off-key", 28500: "author: just right",
                    80000: "author: lacks variation"}
FIELD_GROUPS = {
    "Rhythm & structure": ("bar_pos", "rest"),
    "Harmony & tempo": ("chord", "tempo"),
    "Notes": ("pitch", "duration", "velocity"),
    "Word type": ("family",),
}
DEFAULT_REQUEST = ComposeRequest()  # the starting values of the controls
USER_ERRORS = (RequestError, CheckpointError, MidiReadError, RenderError)  # shown as gr.Error, never a crash
SAMPLING_HELP = ("**Sampling, field by field.** Temperature: 0 always picks the likeliest value, higher is "
                 "more surprising. Top-p: the share of probability kept; lower is safer.")
INTRO = """# cwcompose
Continue a piano piece (or start from nothing) with a Compound Word Transformer trained on POP909.
Upload a MIDI primer, pick a checkpoint, shape each musical field with its own temperature and top-p,
and listen. **Compare** plays the same primer and seed through all three checkpoints; the notes beside
them are the original author's impressions, and `docs/EVALUATION.md` in the repository measures them."""


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


def slider_name(kind: str, field: str) -> str:
    """The API parameter name of a sampling slider, e.g. ``temperature_pitch``."""
    return f"{kind}_{field}"


def sampling_from_sliders(values: dict) -> SamplingConfig:
    """Slider values keyed by :func:`slider_name` -> a validated SamplingConfig."""
    return SamplingConfig(temperature={f: values[slider_name("temperature", f)] for f in FIELDS},
                          top_p={f: values[slider_name("top_p", f)] for f in FIELDS})


def build_request(checkpoint, primer, primer_bars, bars, seed, random_seed, sliders: dict) -> ComposeRequest:
    """UI values -> ComposeRequest; every problem becomes a gr.Error naming it."""
    try:
        return ComposeRequest(checkpoint=checkpoint, primer=primer, primer_bars=primer_bars, bars=bars,
                              seed=None if random_seed else seed, sampling=sampling_from_sliders(sliders))
    except ValueError as err:
        raise gr.Error(str(err)) from err


def bar_progress(progress: gr.Progress):
    return lambda done, total: progress((done, total), desc="composing", unit="bars")


def session_key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


# ---------------------------------------------------------------- layout


def sampling_sliders() -> tuple[dict[str, gr.Slider], dict[str, gr.Slider]]:
    """A temperature and a top-p slider per field, grouped in musical terms."""
    gr.Markdown(SAMPLING_HELP)
    temperature, top_p = {}, {}
    for group, fields in FIELD_GROUPS.items():
        with gr.Accordion(group, open=group != "Word type"):
            for field in fields:
                with gr.Row():
                    temperature[field] = gr.Slider(
                        0.0, min(MAX_TEMPERATURE, 3.0), value=DEFAULT_SAMPLING.temperature[field], step=0.05,
                        label=f"{FIELD_LABELS[field]}: temperature", elem_id=f"temperature-{field}")
                    top_p[field] = gr.Slider(0.05, 1.0, value=DEFAULT_SAMPLING.top_p[field], step=0.01,
                                             label=f"{FIELD_LABELS[field]}: top-p", elem_id=f"top-p-{field}")
    return temperature, top_p


def result_outputs(suffix: str, label: str, with_metrics: bool = True) -> dict[str, gr.Component]:
    """Audio, piano roll, MIDI download and (optionally) numbers for one result."""
    outputs = {
        "audio": gr.Audio(label=f"{label} audio", type="numpy", format="wav", interactive=False,
                          elem_id=f"audio-{suffix}"),
        "plot": gr.Plot(label=f"{label} piano roll", show_label=False, elem_id=f"roll-{suffix}"),
        "midi": gr.File(label=f"{label} MIDI", interactive=False, elem_id=f"midi-{suffix}"),
    }
    if with_metrics:
        outputs["metrics"] = gr.JSON(label=f"{label} numbers", elem_id=f"metrics-{suffix}")
    return outputs


def result_values(outputs: dict[str, gr.Component], result) -> dict:
    """A ComposeResult (or a message for a missing checkpoint) -> values for :func:`result_outputs`."""
    if isinstance(result, str):
        values = {outputs["audio"]: None, outputs["plot"]: None, outputs["midi"]: None}
        metrics = {"not available": result}
    else:
        values = {outputs["audio"]: result.audio, outputs["plot"]: result.figure,
                  outputs["midi"]: str(result.midi_path)}
        metrics = result.metrics
    return {**values, outputs["metrics"]: metrics} if "metrics" in outputs else values


def build_demo(studio: Studio) -> gr.Blocks:
    """The whole app around one Studio."""
    limits = studio.limits
    with gr.Blocks(title="cwcompose", delete_cache=(limits.cache_seconds, limits.cache_seconds)) as demo:
        gr.Markdown(INTRO)
        status = gr.Markdown(service_status(studio), elem_id="checkpoint-status")
        with gr.Row():
            with gr.Column(scale=2):
                settings = settings_panel(limits)
            with gr.Column(scale=3):
                with gr.Tab("Compose", id="compose-tab"):
                    compose_ui = compose_panel()
                with gr.Tab("Compare checkpoints", id="compare-tab"):
                    compare_ui = compare_panel()
        wire_events(studio, settings, compose_ui, compare_ui)
        demo.load(lambda: service_status(studio), None, status, api_visibility="private")
    return demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)


def settings_panel(limits: Limits) -> dict:
    primer = gr.File(label="Primer MIDI (optional)", file_types=[".mid", ".midi"], type="filepath",
                     elem_id="primer")
    with gr.Row():
        primer_bars = gr.Slider(1, limits.max_primer_bars, value=DEFAULT_REQUEST.primer_bars, step=1,
                                label="Keep the primer's last N bars", elem_id="primer-bars")
        bars = gr.Slider(1, limits.max_bars, value=DEFAULT_REQUEST.bars, step=1, label="Bars to generate",
                         elem_id="bars")
    with gr.Row():
        seed = gr.Number(value=0, precision=0, label=f"Seed, 0 to {MAX_SEED} (the one used is shown)",
                         elem_id="seed")
        random_seed = gr.Checkbox(value=True, label="Random seed", elem_id="random-seed")
    with gr.Row():
        preset = gr.Dropdown(list(PRESETS), value="balanced", label="Sampling preset", elem_id="preset")
        reset = gr.Button("Reset settings", elem_id="reset")
    temperature, top_p = sampling_sliders()
    return dict(primer=primer, primer_bars=primer_bars, bars=bars, seed=seed, random_seed=random_seed,
                preset=preset, reset=reset, temperature=temperature, top_p=top_p)


def compose_panel() -> dict:
    checkpoint = gr.Radio([(f"{s} ({CHECKPOINT_NOTES[s]})", s) for s in SHIPPED_STEPS], value=DEFAULT_CHECKPOINT,
                          label="Checkpoint (training step)", elem_id="checkpoint")
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id="generate")
        stop = gr.Button("Stop", variant="stop", elem_id="stop")
        again = gr.Button("Continue from this result", elem_id="continue")
    return dict(checkpoint=checkpoint, generate=generate, stop=stop, again=again, **result_outputs("compose", "Result"))


def compare_panel() -> dict:
    with gr.Row():
        compare = gr.Button("Compare all three checkpoints", variant="primary", elem_id="compare")
        stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
    columns = {}
    with gr.Row():
        for step in SHIPPED_STEPS:
            with gr.Column(min_width=160):
                gr.Markdown(f"### {step}\n{CHECKPOINT_NOTES[step]}")
                columns[step] = result_outputs(str(step), f"{step}", with_metrics=False)
    table = gr.Dataframe(headers=["", *map(str, SHIPPED_STEPS)], label="The three results in numbers",
                         interactive=False, elem_id="compare-table")
    return dict(compare=compare, stop=stop, columns=columns, table=table)


# ---------------------------------------------------------------- events


def slider_inputs(settings: dict) -> dict[str, gr.Slider]:
    """Every sampling slider keyed by its API parameter name."""
    return {**{slider_name("temperature", f): s for f, s in settings["temperature"].items()},
            **{slider_name("top_p", f): s for f, s in settings["top_p"].items()}}


def preset_values(settings: dict, config: SamplingConfig) -> dict:
    """Slider updates that show ``config``."""
    return {**{settings["temperature"][f]: config.temperature[f] for f in FIELDS},
            **{settings["top_p"][f]: config.top_p[f] for f in FIELDS}}


def wire_events(studio: Studio, settings: dict, compose_ui: dict, compare_ui: dict) -> None:
    sliders = slider_inputs(settings)
    shared = [settings[k] for k in ("primer", "primer_bars", "bars", "seed", "random_seed")]

    @gpu(studio.limits.request_seconds)
    def compose_clicked(checkpoint, primer, primer_bars, bars, seed, random_seed, request: gr.Request,
                        progress=gr.Progress(), **sampling):
        req = build_request(checkpoint, primer, primer_bars, bars, seed, random_seed, sampling)
        result = run_studio(studio, studio.compose, req, bar_progress(progress), session_key(request))
        return {**result_values(compose_ui, result), settings["seed"]: result.seed}

    @gpu(studio.limits.request_seconds * len(SHIPPED_STEPS))
    def compare_clicked(primer, primer_bars, bars, seed, random_seed, request: gr.Request,
                        progress=gr.Progress(), **sampling):
        req = build_request(DEFAULT_CHECKPOINT, primer, primer_bars, bars, seed, random_seed, sampling)
        results = run_studio(studio, studio.compare, req, bar_progress(progress), session_key(request))
        values = {settings["seed"]: next((r.seed for r in results.values() if not isinstance(r, str)), seed),
                  compare_ui["table"]: {"headers": ["", *map(str, results)], "data": comparison_rows(results)}}
        for step, result in results.items():
            if isinstance(result, str):
                gr.Warning(result)
            values.update(result_values(compare_ui["columns"][step], result))
        return values

    compose_outputs = [compose_ui[k] for k in ("audio", "plot", "midi", "metrics")] + [settings["seed"]]
    compare_outputs = [c[k] for c in compare_ui["columns"].values() for k in ("audio", "plot", "midi")]
    compare_outputs += [compare_ui["table"], settings["seed"]]
    composing = compose_ui["generate"].click(compose_clicked, [compose_ui["checkpoint"], *shared], compose_outputs,
                                             inputs_kwargs=sliders, api_name="compose",
                                             show_progress_on=[compose_ui["audio"]])
    comparing = compare_ui["compare"].click(compare_clicked, shared, compare_outputs, inputs_kwargs=sliders,
                                            api_name="compare",
                                            show_progress_on=[c["audio"] for c in compare_ui["columns"].values()])

    def stop_clicked(request: gr.Request):
        studio.stops.stop(session_key(request))

    for button in (compose_ui["stop"], compare_ui["stop"]):
        button.click(stop_clicked, None, None, cancels=[composing, comparing], api_visibility="private")
    compose_ui["again"].click(continue_from, compose_ui["midi"], settings["primer"], api_visibility="private")
    settings["preset"].change(lambda name: preset_values(settings, PRESETS[name]), settings["preset"],
                              list(sliders.values()), api_visibility="private")
    settings["reset"].click(lambda: {**preset_values(settings, DEFAULT_SAMPLING), settings["preset"]: "balanced",
                                     settings["primer_bars"]: DEFAULT_REQUEST.primer_bars,
                                     settings["bars"]: DEFAULT_REQUEST.bars},
                            None, [*sliders.values(), settings["preset"], settings["primer_bars"], settings["bars"]],
                            api_visibility="private")


def run_studio(studio: Studio, method, request: ComposeRequest, on_bar, key: str):
    """Call a Studio method with a stop flag for this session; user errors become gr.Error."""
    stop = studio.stops.start(key)
    try:
        return method(request, on_bar=on_bar, stop=stop)
    except Stopped as err:
        raise gr.Error("Stopped.") from err
    except USER_ERRORS as err:
        raise gr.Error(str(err)) from err
    finally:
        studio.stops.finish(key, stop)


def continue_from(midi_path):
    if not midi_path:
        raise gr.Error("Generate something first: there is no result to continue from yet.")
    return midi_path


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
    the upload cap, and Gradio's own input errors (e.g. text in a number field) shown, not hidden."""
    return dict(max_file_size=studio.limits.upload_bytes, show_error=True)


def launch(studio: Studio, **options) -> gr.Blocks:
    """Build the demo around ``studio`` and start it with the app's launch options (tests and
    benchmarks pass ``prevent_thread_lock=True`` to get it back while it serves)."""
    demo = build_demo(studio)
    demo.launch(**{"server_name": "127.0.0.1", "theme": gr.themes.Soft(), **launch_options(studio), **options})
    return demo


def main() -> None:
    studio = make_studio()
    studio.preload()
    studio.renderer.warm_up()
    launch(studio, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))


if __name__ == "__main__":
    main()
