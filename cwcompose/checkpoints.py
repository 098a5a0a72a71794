"""Checkpoints: safetensors weights beside a readable JSON of their configs.

``<dir>/step<STEP>.safetensors`` + ``<dir>/step<STEP>.json`` hold an exported model;
:func:`load_checkpoint` accepts a step number (looked up in the shipped ``checkpoints/``
folder, the newest generation first, then the older ones kept for comparison, e.g.
``checkpoints/v1/`` with the 256-word models), ``"v1/28500"`` for a given generation, a
``.safetensors`` / ``.json`` path, or a stem. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cwcompose.model import CPTransformer, ModelConfig
from cwcompose.tokenizer import CPTokenizer, TokenizerConfig

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
SHIPPED_STEPS = (10000, 28500, 80000)
OLDER_GENERATIONS = ("v1",)  # sub-folders of SHIPPED_DIR, newest first, searched after SHIPPED_DIR


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match the tokenizer."""


def save_checkpoint(model: CPTransformer, tokenizer: CPTokenizer, path_stem: str | Path, **metadata) -> Path:
    """Write ``<stem>.safetensors`` (fp32 weights) and ``<stem>.json`` (configs + metadata)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(stem.with_suffix(".safetensors")))
    info = _without_nan({"model": model.config.to_dict(), "tokenizer": tokenizer.config.to_dict(), **metadata})
    stem.with_suffix(".json").write_text(json.dumps(info, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return stem.with_suffix(".safetensors")


def _without_nan(value):
    """NaN (e.g. the loss of a field absent from the validation windows) -> null, for strict JSON."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def shipped_stem(step: int | str, generation: str | None = None) -> Path:
    """Where a shipped step lives: in ``generation``'s folder when named, else in the newest
    generation that has it (``checkpoints/`` itself, then :data:`OLDER_GENERATIONS`)."""
    if generation is not None:
        return SHIPPED_DIR / generation / f"step{step}"
    for folder in (SHIPPED_DIR, *(SHIPPED_DIR / g for g in OLDER_GENERATIONS)):
        if (folder / f"step{step}.safetensors").is_file():
            return folder / f"step{step}"
    return SHIPPED_DIR / f"step{step}"


def shipped_names() -> list[str]:
    """Every shipped checkpoint, newest generation first: ``["10000", ..., "v1/10000", ...]``."""
    names = sorted(p.stem.removeprefix("step") for p in SHIPPED_DIR.glob("step*.safetensors"))
    for generation in OLDER_GENERATIONS:
        names += sorted(f"{generation}/{p.stem.removeprefix('step')}"
                        for p in (SHIPPED_DIR / generation).glob("step*.safetensors"))
    return names


def resolve_checkpoint(name_or_path: str | int | Path) -> Path:
    """A step number, ``generation/step``, a stem or a path -> the stem (path without
    suffix) of an existing checkpoint."""
    text = str(name_or_path)
    generation, _, step = text.rpartition("/")
    if text.isdigit():
        stem = shipped_stem(text)
    elif step.isdigit() and generation in OLDER_GENERATIONS:
        stem = shipped_stem(step, generation)
    else:
        stem = Path(text)
        if stem.suffix in (".safetensors", ".json"):
            stem = stem.with_suffix("")
    if not stem.with_suffix(".safetensors").is_file() or not stem.with_suffix(".json").is_file():
        raise CheckpointError(f"There is no checkpoint {text!r} (it needs {stem.name}.safetensors and "
                              f"{stem.name}.json). Pick one of the shipped checkpoints: "
                              f"{', '.join(shipped_names()) or 'none'}.")
    return stem


def read_checkpoint_info(name_or_path: str | int | Path) -> dict:
    return json.loads(resolve_checkpoint(name_or_path).with_suffix(".json").read_text())


def load_checkpoint(name_or_path: str | int | Path, device: str | torch.device | None = None,
                    tokenizer_config: TokenizerConfig | None = None) -> tuple[CPTransformer, CPTokenizer]:
    """Load an exported checkpoint (strictly) -> (model in eval mode, its tokenizer).

    ``tokenizer_config``, when given, must equal the checkpoint's, else :class:`CheckpointError`.
    """
    stem = resolve_checkpoint(name_or_path)
    try:
        info = json.loads(stem.with_suffix(".json").read_text())
        tokenizer = CPTokenizer(TokenizerConfig.from_dict(info["tokenizer"]))
        model_config = ModelConfig.from_dict(info["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{stem.name}.json is not a cwcompose checkpoint config: {err}") from err
    if tokenizer_config is not None and tokenizer_config != tokenizer.config:
        raise CheckpointError(f"{stem.name} was trained with a different tokenizer config than the one given")
    if model_config.vocab_sizes != tokenizer.vocab_sizes:
        raise CheckpointError(f"{stem.name}: the model's vocabulary sizes do not match its tokenizer")
    model = CPTransformer(model_config)
    try:
        model.load_state_dict(load_file(str(stem.with_suffix(".safetensors"))), strict=True)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{stem.name}.safetensors is not a readable safetensors file: {err}") from err
    except RuntimeError as err:
        raise CheckpointError(f"{stem.name}.safetensors does not match its config: {err}") from err
    device = torch.device(device) if device is not None else default_device()
    return model.to(device).eval(), tokenizer


TINY_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "dropout": 0.0}


def fill_with_stand_ins(folder: str | Path, source: str | Path | None = SHIPPED_DIR, steps=SHIPPED_STEPS,
                        model: dict | None = None) -> dict[int, str]:
    """Give ``folder`` a checkpoint per step: real ones linked from ``source`` where they
    exist, untrained stand-ins (ModelConfig overrides ``model``, e.g. :data:`TINY_MODEL`;
    seeded by the step, so they differ) elsewhere. For tests and benchmarks before (or
    without) training. Returns ``{step: "real" | "stand-in"}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, kinds = CPTokenizer(), {}
    for step in steps:
        stem = None
        if source is not None:
            stem = shipped_stem(step) if Path(source) == SHIPPED_DIR else Path(source) / f"step{step}"
        if stem is not None and stem.with_suffix(".safetensors").is_file() and stem.with_suffix(".json").is_file():
            for suffix in (".safetensors", ".json"):
                (folder / f"step{step}{suffix}").symlink_to(stem.with_suffix(suffix).resolve())
            kinds[step] = "real"
        else:
            torch.manual_seed(step)
            config = ModelConfig(vocab_sizes=tokenizer.vocab_sizes, **(model or {}))
            save_checkpoint(CPTransformer(config), tokenizer, folder / f"step{step}", step=step)
            kinds[step] = "stand-in"
    return kinds


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
