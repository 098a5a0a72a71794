"""The app's page: its components, how they are laid out, and their names in the API.
Built inside a ``gr.Blocks`` by app.py, which wires the events; nothing here composes."""

from __future__ import annotations

import gradio as gr

from cwcompose.checkpoints import SHIPPED_STEPS
from cwcompose.request import DEFAULT_CHECKPOINT, MAX_SEED, MAX_VARIATIONS, ComposeRequest, Limits
from cwcompose.roll_view import empty_roll_html
from cwcompose.sampling import DEFAULT_SAMPLING, FIELD_LABELS, MAX_TEMPERATURE, PRESETS, SamplingConfig
from cwcompose.tokenizer import FIELDS, PITCH_CLASSES

DEFAULT_REQUEST = ComposeRequest()  # the starting values of the controls
FIELD_GROUPS = {
    "Rhythm & structure": ("bar_pos", "rest"),
    "Harmony & tempo": ("chord", "tempo"),
    "Notes": ("pitch", "duration", "velocity"),
    "Word type": ("family",),
}
SAMPLING_HELP = ("**Sampling, field by field.** Temperature: 0 always picks the likeliest value, higher is "
                 "more surprising. Top-p: the share of probability kept; lower is safer.")
INTRO = """# cwcompose
Piano continuations from a Compound Word Transformer (POP909). Generate streams the audio and the roll as bars
are composed; every result is a take you can undo, rewind, continue or download."""

KEYS = [("none", "")] + [(f"{p} {m}", f"{p} {m}") for m in ("major", "minor") for p in PITCH_CLASSES] + [
    ("from the primer", "from primer")]
NUMBER_HEADERS = ["measure", "value"]
TAKE_HEADERS = ["take", "checkpoint", "seed", "bars", "locks"]
EMPTY_NUMBERS = {"headers": NUMBER_HEADERS, "data": [["", ""]]}


def plain_preprocess(component, preprocess, payload):
    """``preprocess(payload)``, with a value of the wrong type or out of range (sent over the
    API) answered in words and with the range: Gradio's own message for a wrong type names a
    Python exception."""
    try:
        return preprocess(payload)
    except (TypeError, ValueError, OverflowError) as err:
        low, high = component.minimum, component.maximum
        allowed = f"a number from {plain(low)} to {plain(high)}" if low is not None and high is not None else "a number"
        is_number = isinstance(payload, (int, float)) and not isinstance(payload, bool) and payload == payload
        problem = str(err).rstrip(".") if is_number else f"must be a number, got {payload!r}"
        raise gr.Error(f"{component.label}: {problem}. Send {allowed}.", print_exception=False) from None


def plain(value: float) -> str:
    """A bound as a person writes it: 4294967295, 0.05, 1."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class NumberInput(gr.Number):
    is_template = True  # drawn as a plain gr.Number

    def preprocess(self, payload):
        return plain_preprocess(self, super().preprocess, payload)


class SliderInput(gr.Slider):
    is_template = True  # drawn as a plain gr.Slider

    def preprocess(self, payload):
        return plain_preprocess(self, super().preprocess, payload)


def slider_name(kind: str, field: str) -> str:
    """The API parameter name of a sampling slider, e.g. ``temperature_pitch``."""
    return f"{kind}_{field}"


def sampling_sliders() -> tuple[dict[str, gr.Slider], dict[str, gr.Slider]]:
    """A temperature and a top-p slider per field, grouped in musical terms."""
    gr.Markdown(SAMPLING_HELP)
    temperature, top_p = {}, {}
    for group, fields in FIELD_GROUPS.items():
        gr.Markdown(f"**{group}**")
        for field in fields:
            with gr.Row():
                temperature[field] = SliderInput(
                    0.0, min(MAX_TEMPERATURE, 3.0), value=DEFAULT_SAMPLING.temperature[field], step=0.05,
                    label=f"{FIELD_LABELS[field]}: temperature", elem_id=f"temperature-{field}")
                top_p[field] = SliderInput(0.05, 1.0, value=DEFAULT_SAMPLING.top_p[field], step=0.01,
                                         label=f"{FIELD_LABELS[field]}: top-p", elem_id=f"top-p-{field}")
    return temperature, top_p


def compose_controls(limits: Limits, checkpoints: list[tuple[str, int]]) -> dict:
    c = {}
    with gr.Row(elem_id="actions"):
        c["generate"] = gr.Button("Generate", variant="primary", elem_id="generate", min_width=90)
        c["stop"] = gr.Button("Stop", variant="stop", elem_id="stop", min_width=70)
        c["undo"] = gr.Button("Undo", elem_id="undo", min_width=70)
    c["checkpoint"] = gr.Dropdown(checkpoints, value=DEFAULT_CHECKPOINT, label="Checkpoint", elem_id="checkpoint")
    with gr.Row():
        c["bars"] = NumberInput(DEFAULT_REQUEST.bars, precision=0, minimum=1, maximum=limits.max_bars, step=1,
                              label=f"Bars (1–{limits.max_bars})", elem_id="bars", min_width=80)
        c["variations"] = NumberInput(1, precision=0, minimum=1, maximum=MAX_VARIATIONS, step=1,
                                    label=f"Variations (1–{MAX_VARIATIONS})", elem_id="variations", min_width=80)
    with gr.Row():
        c["chords"] = gr.Textbox(label="Chords, one per bar (e.g. C G Am F)", placeholder="free",
                                 elem_id="chords", min_width=150, max_lines=1)
        c["tempo"] = NumberInput(0, minimum=0, maximum=250, label="Tempo BPM (40–250; 0 = free)", elem_id="tempo",
                               min_width=80)
    with gr.Row():
        c["key"] = gr.Dropdown(KEYS, value="", label="Key", elem_id="key", min_width=120)
        c["key_strength"] = SliderInput(0.0, 1.0, value=1.0, step=0.05, label="Key strength",
                                      elem_id="key-strength", min_width=120)
    c["primer"] = gr.File(label="Primer MIDI (optional)", file_types=[".mid", ".midi"], type="filepath",
                          elem_id="primer", height=120)
    with gr.Accordion("Primer bars and seed", open=False):
        with gr.Row():
            c["primer_bars"] = SliderInput(1, limits.max_primer_bars, value=DEFAULT_REQUEST.primer_bars, step=1,
                                         label="Keep the primer's last N bars", elem_id="primer-bars")
            c["seed"] = NumberInput(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                  elem_id="seed")
            c["random_seed"] = gr.Checkbox(value=True, label="Random seed", elem_id="random-seed")
    with gr.Accordion("Fine-tune sampling", open=False, elem_id="fine-tune"):
        with gr.Row():
            c["preset"] = gr.Dropdown(list(PRESETS), value="balanced", label="Sampling preset", elem_id="preset")
            c["reset"] = gr.Button("Reset settings", elem_id="reset")
        c["temperature"], c["top_p"] = sampling_sliders()
    return c


def result_panel() -> dict:
    r = {}
    r["piano_roll"] = gr.HTML(empty_roll_html(), label="Piano roll", elem_id="roll", min_height=250)
    r["audio"] = gr.Audio(label="Audio", type="filepath", interactive=False, elem_id="audio")
    with gr.Row():
        r["midi"] = gr.File(label="MIDI", interactive=False, elem_id="midi", height=70)
        with gr.Column(min_width=200):
            with gr.Row():
                r["rewind_bar"] = NumberInput(4, precision=0, minimum=1, label="Keep first N bars",
                                            elem_id="rewind-bar", min_width=90)
                r["rewind"] = gr.Button("Regenerate from bar N", elem_id="rewind", min_width=120)
            r["continue"] = gr.Button("Continue this take", elem_id="continue")
    r["numbers"] = gr.Dataframe(value=EMPTY_NUMBERS, label="Numbers", interactive=False, elem_id="numbers",
                                wrap=True)
    with gr.Group():
        r["variations"] = gr.HTML("", label="Variations", elem_id="variations-view")
        with gr.Row():
            r["keep_choice"] = gr.Dropdown([str(i) for i in range(1, MAX_VARIATIONS + 1)], value="1",
                                           label="Variation to keep", elem_id="keep-choice", visible=False)
            r["keep"] = gr.Button("Keep this variation", elem_id="keep", visible=False)
    r["takes"] = gr.Dataframe(headers=TAKE_HEADERS, label="Takes this session (newest last)", interactive=False,
                              elem_id="takes", wrap=True)
    return r


def compare_panel() -> dict:
    with gr.Row():
        compare = gr.Button("Compare all three checkpoints", variant="primary", elem_id="compare")
        stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
    gr.Markdown("Same primer, seed, bars, locks and sampling (set on the Compose tab) through each checkpoint. "
                "One transport: A/B/C switch checkpoints at the same moment of the music.")
    view = gr.HTML("", label="Comparison", elem_id="compare-view")
    table = gr.Dataframe(headers=["measure", *map(str, SHIPPED_STEPS)], label="The results in numbers",
                         interactive=False, elem_id="compare-table", wrap=True)
    files = {}
    with gr.Accordion("Downloads", open=False):
        with gr.Row():
            for step in SHIPPED_STEPS:
                with gr.Column(min_width=160):
                    files[step] = {"audio": gr.Audio(label=f"Audio {step}", type="filepath", interactive=False,
                                                     elem_id=f"audio-{step}"),
                                   "midi": gr.File(label=f"MIDI {step}", interactive=False, elem_id=f"midi-{step}")}
    return dict(compare=compare, stop=stop, view=view, table=table, files=files)


def slider_inputs(c: dict) -> dict[str, gr.Slider]:
    """Every sampling slider keyed by its API parameter name."""
    return {**{slider_name("temperature", f): s for f, s in c["temperature"].items()},
            **{slider_name("top_p", f): s for f, s in c["top_p"].items()}}


def preset_values(c: dict, config: SamplingConfig) -> dict:
    """Slider updates that show ``config``."""
    return {**{c["temperature"][f]: config.temperature[f] for f in FIELDS},
            **{c["top_p"][f]: config.top_p[f] for f in FIELDS}}


def theme() -> gr.themes.Base:
    """Gradio's Soft theme with the indigo text and buttons one step darker, and the grey help text
    two: as shipped they miss WCAG AA contrast (4.5:1; the browser test runs axe-core on it)."""
    return gr.themes.Soft().set(
        color_accent="*primary_700", block_label_text_color="*primary_700", block_title_text_color="*primary_700",
        button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
        body_text_color_subdued="*neutral_600")
