"""``cwcompose evaluate``: compare checkpoints by held-out loss and by the music they write.

For every checkpoint: the per-field negative log-likelihood of held-out (test-split)
songs, and the metrics of :mod:`cwcompose.metrics` on pieces composed with fixed
seeds, both from nothing and continuing the first bars of held-out songs, beside the
same metrics on excerpts of those songs. How differently the pieces of different
seeds come out (their variety) is measured on the pieces from nothing. Coherence:
continuations of the primers of the first ``pieces`` held-out songs measured against their
primer (its key, its phrases, its density) beside the real continuations of the same songs,
and one long piece per checkpoint measured chunk by chunk. The same checkpoints, data and
seeds give the same numbers; :mod:`cwcompose.report` writes them up.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import miditoolkit
import numpy as np
import torch

from cwcompose.checkpoints import (
    OLDER_GENERATIONS, SHIPPED_DIR, load_checkpoint, read_checkpoint_info, resolve_checkpoint, shipped_names,
)
from cwcompose.coherence import (
    COHERENCE_LABELS, LONG_FORM_LABELS, coherence_metrics, long_form_chunks, occupied_bars,
)
from cwcompose.data import TokenDataset
from cwcompose.generation import compose
from cwcompose.jsonconfig import JsonConfig
from cwcompose.metrics import (
    METRIC_LABELS, VARIETY_HISTOGRAMS, GridNotes, PieceMetrics, SpanIndex, build_span_index, excerpt,
    grid_notes_from_words, piece_metrics, variety,
)
from cwcompose.model import CPTransformer
from cwcompose.sampling import DEFAULT_SAMPLING
from cwcompose.tokenizer import FIELDS, IGNORE, PAD, CPTokenizer, Score

# A field's mean over fewer targets is a few tokens' noise: the Rest word appears 2 times in the
# 64 test windows of 1024 words, and its mean put step 80000's total 0.13 nats above step
# 28500's where every other field put it lower.
MIN_FIELD_TARGETS = 50
CONDITIONS = {"unconditioned": "from nothing", "primed": "continuing a held-out primer"}


class EvaluationError(ValueError):
    """The dataset cannot be evaluated on (missing, or without songs in a split)."""


@dataclass(frozen=True)
class EvalConfig(JsonConfig):
    """What to measure: ``seeds`` pieces of ``bars`` bars per condition and checkpoint;
    primers are the first ``primer_bars`` bars of held-out songs; NLL on ``nll_windows`` windows.
    Coherence: the primers of the first ``pieces`` held-out songs, each continued with every
    seed; long form: one piece of ``long_form_bars`` bars (0: none) measured in chunks of
    ``long_form_chunk`` bars."""

    seeds: int = 8
    bars: int = 16
    primer_bars: int = 8
    nll_windows: int = 64
    pieces: int = 16
    long_form_bars: int = 300
    long_form_chunk: int = 30

    def __post_init__(self) -> None:
        if min(self.seeds, self.bars, self.primer_bars, self.nll_windows, self.pieces, self.long_form_chunk) < 1:
            raise ValueError("seeds, bars, primer_bars, nll_windows, pieces and long_form_chunk must all be at least 1")
        if self.long_form_bars < 0:
            raise ValueError("long_form_bars must be at least 0 (0: no long-form piece)")


def default_checkpoints() -> list[str]:
    """Every shipped checkpoint, the new generation beside the older ones (``v1/28500``)."""
    return shipped_names()


def checkpoint_step(name_or_path) -> int | None:
    """Training step of a checkpoint: its recorded ``step``, else the digits of ``step<N>``."""
    info = read_checkpoint_info(name_or_path)
    stem = resolve_checkpoint(name_or_path).name
    if isinstance(info.get("step"), int):
        return info["step"]
    return int(stem[4:]) if stem.startswith("step") and stem[4:].isdigit() else None


def checkpoint_generation(name_or_path) -> str:
    """Which generation a checkpoint belongs to: an older shipped one's folder name (``"v1"``),
    ``""`` for the newest shipped one, else the folder that holds it."""
    folder = resolve_checkpoint(name_or_path).parent.resolve()
    if folder == SHIPPED_DIR.resolve():
        return ""
    if folder.name in OLDER_GENERATIONS and folder.parent == SHIPPED_DIR.resolve():
        return folder.name
    return str(folder)


def generation_age(generation: str) -> int:
    """0 for the newest shipped or an unshipped generation, 1 + its place in OLDER_GENERATIONS
    for an older shipped one (higher = older)."""
    return OLDER_GENERATIONS.index(generation) + 1 if generation in OLDER_GENERATIONS else 0


def checkpoint_label(name_or_path) -> str:
    """``step<N>`` (``v1/step<N>`` for an older shipped generation), or the checkpoint's name."""
    step = checkpoint_step(name_or_path)
    label = f"step{step}" if step is not None else resolve_checkpoint(name_or_path).name
    generation = checkpoint_generation(name_or_path)
    return f"{generation}/{label}" if generation in OLDER_GENERATIONS else label


def unique_labels(names: list[str]) -> list[str]:
    """:func:`checkpoint_label` of each, with its folder's name in front where two would read alike."""
    labels = [checkpoint_label(n) for n in names]
    return [f"{Path(checkpoint_generation(n)).name}/{label}"
            if labels.count(label) > 1 and checkpoint_generation(n) not in ("", *OLDER_GENERATIONS) else label
            for n, label in zip(names, labels)]


# ---------------------------------------------------------------- held-out loss


@torch.no_grad()
def held_out_nll(model: CPTransformer, windows: torch.Tensor, batch_size: int = 8,
                 min_targets: int = MIN_FIELD_TARGETS) -> dict[str, float]:
    """Per-field NLL in nats per predicted token over ``windows`` (B, L + 1, fields), each
    field averaged over all its valid targets (the model's own Pad / Ignore mask), plus
    ``total``, the mean over fields (as in training). A field with fewer than
    ``min_targets`` targets in the windows is left out of both."""
    model.eval()
    sums, counts = dict.fromkeys(FIELDS, 0.0), dict.fromkeys(FIELDS, 0)
    device = next(model.parameters()).device
    for chunk in windows.to(device).split(batch_size):
        _, losses = model(chunk[:, :-1], chunk[:, 1:])
        for i, f in enumerate(FIELDS):
            target = chunk[:, 1:, i]
            n = int(((target != PAD) & ((target != IGNORE) | (f == "family"))).sum())
            if n:  # weighting by count turns per-chunk means into one mean over tokens
                sums[f] += losses[f].item() * n
                counts[f] += n
    per_field = {f: sums[f] / counts[f] for f in FIELDS if counts[f] >= max(min_targets, 1)}
    return {"total": float(np.mean(list(per_field.values()))), **per_field}


def nll_window_length(name_or_path, model: CPTransformer) -> int:
    """Words per window: the checkpoint's training ``seq_len`` when recorded, plus the target."""
    train = read_checkpoint_info(name_or_path).get("train") or {}
    return int(train.get("seq_len", model.config.max_relative_distance)) + 1


# ---------------------------------------------------------------- held-out music


def primer_midi(words: np.ndarray, tokenizer: CPTokenizer, bars: int) -> miditoolkit.MidiFile:
    """The first ``bars`` bars of a song's words, decoded to MIDI (notes, tempo, chords)."""
    score = tokenizer.decode_score(words)
    limit = bars * tokenizer.config.positions_per_bar
    return tokenizer.score_to_midi(Score(notes=[n for n in score.notes if n.onset < limit],
                                         tempo_at={p: t for p, t in score.tempo_at.items() if p < limit},
                                         chord_at={p: c for p, c in score.chord_at.items() if p < limit}))


def real_excerpts(songs: list[np.ndarray], tokenizer: CPTokenizer, first_bar: int, bars: int) -> list[GridNotes]:
    """Bars ``first_bar .. first_bar + bars - 1`` of every song long enough to hold them."""
    notes = [grid_notes_from_words(s, tokenizer.config) for s in songs]
    return [excerpt(n, first_bar, bars) for n in notes if n.bars >= first_bar + bars]


def composed_pieces(model: CPTransformer, tokenizer: CPTokenizer, primers: list, cfg: EvalConfig,
                    log=None) -> dict[str, list[GridNotes]]:
    """Pieces of ``cfg.bars`` bars for seeds 0..seeds-1 in each condition; a primed piece
    is its continuation only (bars after the primer, a bar the primer left open excluded)."""
    pieces: dict[str, list[GridNotes]] = {c: [] for c in CONDITIONS}
    for condition in CONDITIONS:
        for seed in range(cfg.seeds):
            primer = primers[seed % len(primers)] if condition == "primed" else None
            started = time.perf_counter()
            piece = compose(model, tokenizer, primer=primer, primer_bars=cfg.primer_bars, bars=cfg.bars,
                            sampling=DEFAULT_SAMPLING, seed=seed)
            notes = grid_notes_from_words(piece.words, tokenizer.config)
            pieces[condition].append(excerpt(notes, piece.primer_bars, cfg.bars))
            if log:
                words = len(piece.words) - piece.primer_length
                log(f"  {condition} seed {seed}: {words} words in {time.perf_counter() - started:.1f} s")
    return pieces


def summarise(metrics: list[PieceMetrics]) -> dict[str, dict[str, float]]:
    """Mean, standard error of the mean and count of every metric, NaNs left out."""
    return summarise_rows([m.as_dict() for m in metrics], METRIC_LABELS)


def summarise_rows(rows: list[dict], names) -> dict[str, dict[str, float]]:
    """Mean, standard error of the mean, standard deviation and count of ``rows[i][name]``
    for every name, NaNs and Nones left out."""
    summary = {}
    for name in names:
        values = np.array([np.nan if r[name] is None else r[name] for r in rows], float)
        values = values[~np.isnan(values)]
        std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        summary[name] = {"mean": float(values.mean()) if len(values) else math.nan,
                         "sem": std / math.sqrt(max(len(values), 1)), "std": std, "n": len(values)}
    return summary


def measure(pieces: list[GridNotes], tokenizer: CPTokenizer, index: SpanIndex) -> list[PieceMetrics]:
    return [piece_metrics(p, tokenizer.config, index=index) for p in pieces]


def measure_variety(pieces: list[GridNotes]) -> dict[str, dict[str, float]]:
    """Every variety of ``pieces`` (see :data:`VARIETY_LABELS`): mean pairwise distance ± sem."""
    return {name: variety(pieces, histogram) for name, histogram in VARIETY_HISTOGRAMS.items()}


# ---------------------------------------------------------------- coherence with the primer, long form


def as_primed(notes: GridNotes, primer_bars: int) -> tuple[GridNotes, int]:
    """A song as a primed piece holds it: the bars before its first note dropped (a primer's
    words start at its first bar with notes), and how many primer bars are left."""
    occupied = np.flatnonzero(occupied_bars(notes)[:primer_bars])
    first = int(occupied[0]) if len(occupied) else 0
    return excerpt(notes, first, notes.bars - first), primer_bars - first


def coherence_songs(songs: list[GridNotes], cfg: EvalConfig) -> list[int]:
    """The first ``cfg.pieces`` songs with notes in their primer and at least
    ``primer_bars + bars`` bars: their primers are continued, their real continuations measured."""
    fitting = [i for i, notes in enumerate(songs) if notes.bars >= cfg.primer_bars + cfg.bars
               and occupied_bars(notes)[:cfg.primer_bars].any()]
    return fitting[:cfg.pieces]


def real_coherence(songs: list[GridNotes], cfg: EvalConfig) -> list[dict]:
    """:func:`coherence_metrics` of each song's first ``bars`` bars after its primer."""
    rows = []
    for notes in songs:
        song, primer_bars = as_primed(notes, cfg.primer_bars)
        rows.append(coherence_metrics(excerpt(song, 0, primer_bars + cfg.bars), primer_bars, cfg.bars).as_dict())
    return rows


def composed_coherence(model: CPTransformer, tokenizer: CPTokenizer, primers: list[tuple[int, miditoolkit.MidiFile]],
                       cfg: EvalConfig, log=None) -> list[dict]:
    """Every (song, primer) continued by ``cfg.bars`` bars with seeds 0..seeds-1, each piece's
    :func:`coherence_metrics` (with its song and seed)."""
    rows = []
    for song, primer in primers:
        for seed in range(cfg.seeds):
            started = time.perf_counter()
            piece = compose(model, tokenizer, primer=primer, primer_bars=cfg.primer_bars, bars=cfg.bars,
                            sampling=DEFAULT_SAMPLING, seed=seed)
            notes = excerpt(grid_notes_from_words(piece.words, tokenizer.config), 0, piece.primer_bars + cfg.bars)
            rows.append({"song": song, "seed": seed,
                         **coherence_metrics(notes, piece.primer_bars, cfg.bars).as_dict()})
            if log:
                log(f"  coherence song {song} seed {seed}: {time.perf_counter() - started:.1f} s")
    return rows


def composed_long_form(model: CPTransformer, tokenizer: CPTokenizer, primer: miditoolkit.MidiFile,
                       cfg: EvalConfig, log=None) -> dict:
    """One piece of ``cfg.long_form_bars`` bars continuing ``primer`` (seed 0), measured in chunks."""
    started = time.perf_counter()
    piece = compose(model, tokenizer, primer=primer, primer_bars=cfg.primer_bars, bars=cfg.long_form_bars,
                    sampling=DEFAULT_SAMPLING, seed=0)
    notes = excerpt(grid_notes_from_words(piece.words, tokenizer.config), 0, piece.primer_bars + piece.bars)
    if log:
        log(f"  long form: {piece.bars} bars, {len(piece.words) - piece.primer_length} words in "
            f"{time.perf_counter() - started:.1f} s")
    return {"bars": piece.bars, "words": len(piece.words) - piece.primer_length, "music_seconds": piece.seconds,
            "chunks": long_form_chunks(notes, piece.primer_bars, cfg.long_form_chunk)}


def real_long_form(songs: list[GridNotes], cfg: EvalConfig) -> list[dict]:
    """Per chunk of ``cfg.long_form_chunk`` bars after the primer: the mean ± sem of every
    :data:`LONG_FORM_LABELS` measure over the songs long enough to fill that chunk."""
    per_chunk: list[list[dict]] = []
    for notes in songs:
        song, primer_bars = as_primed(notes, cfg.primer_bars)
        for k, chunk in enumerate(long_form_chunks(song, primer_bars, cfg.long_form_chunk)):
            if chunk["bars"] == cfg.long_form_chunk:
                per_chunk += [[] for _ in range(k + 1 - len(per_chunk))]
                per_chunk[k].append(chunk)
    return [{"first_bar": k * cfg.long_form_chunk, "bars": cfg.long_form_chunk, "songs": len(rows),
             **summarise_rows(rows, LONG_FORM_LABELS)} for k, rows in enumerate(per_chunk) if rows]


# ---------------------------------------------------------------- the whole evaluation


def load_split(data_dir: str | Path, split: str) -> TokenDataset:
    try:
        return TokenDataset.load(data_dir, split)
    except (OSError, ValueError) as err:
        raise EvaluationError(f"cannot read split {split!r} of {data_dir}: {err}") from err


def evaluate(checkpoints: list[str], data_dir: str | Path, cfg: EvalConfig, split: str = "test",
             device: str = "cpu", log=None) -> dict:
    """Measure every checkpoint and the held-out songs of ``split``; returns a JSON-able dict."""
    log = log or (lambda message: print(message, file=sys.stderr))
    held_out, train_set = load_split(data_dir, split), load_split(data_dir, "train")
    tokenizer = CPTokenizer(held_out.tokenizer_config)
    index = build_span_index(train_set.songs, tokenizer.config)
    primers = [primer_midi(s, tokenizer, cfg.primer_bars) for s in held_out.songs]
    excerpts = real_excerpts(held_out.songs, tokenizer, cfg.primer_bars, cfg.bars)
    real = measure(excerpts, tokenizer, index)
    songs = [grid_notes_from_words(s, tokenizer.config) for s in held_out.songs]
    chosen = coherence_songs(songs, cfg)
    if not chosen:
        raise EvaluationError(f"no {split} song has notes in its first {cfg.primer_bars} bars and "
                              f"{cfg.primer_bars + cfg.bars} bars in all")
    real_rows = [{"song": i, **row} for i, row in zip(chosen, real_coherence([songs[i] for i in chosen], cfg))]
    results = {
        "config": cfg.to_dict(), "data": str(data_dir), "split": split, "held_out_songs": len(held_out.songs),
        "index": {"songs": index.songs, "spans": int(len(index.hashes))},
        "coherence_songs": [held_out.names[i] for i in chosen], "long_form_song": held_out.names[chosen[0]],
        "real": {"pieces": [m.as_dict() for m in real], "summary": summarise(real),
                 "variety": measure_variety(excerpts),
                 "coherence": {"pieces": real_rows, "summary": summarise_rows(real_rows, COHERENCE_LABELS)},
                 "long_form": real_long_form(songs, cfg)},
        "checkpoints": [],
    }
    for name, label in zip(checkpoints, unique_labels(checkpoints)):
        log(f"{label}: held-out loss")
        model, _ = load_checkpoint(name, device=device, tokenizer_config=tokenizer.config)
        windows = held_out.fixed_windows(cfg.nll_windows, nll_window_length(name, model))
        entry = {"label": label, "step": checkpoint_step(name), "generation": checkpoint_generation(name),
                 "nll": held_out_nll(model, windows), "pieces": {}, "summary": {}}
        log(f"{label}: composing")
        for condition, pieces in composed_pieces(model, tokenizer, primers, cfg, log).items():
            metrics = measure(pieces, tokenizer, index)
            entry["pieces"][condition] = [m.as_dict() for m in metrics]
            entry["summary"][condition] = summarise(metrics)
            if condition == "unconditioned":  # primed pieces vary with their primers, not only their seeds
                entry["variety"] = measure_variety(pieces)
        entry["summary"]["pooled"] = summarise([PieceMetrics(**d) for c in CONDITIONS for d in entry["pieces"][c]])
        log(f"{label}: coherence with {len(chosen)} primers")
        rows = composed_coherence(model, tokenizer, [(i, primers[i]) for i in chosen], cfg, log)
        entry["coherence"] = {"pieces": rows, "summary": summarise_rows(rows, COHERENCE_LABELS)}
        if cfg.long_form_bars:
            log(f"{label}: long form")
            entry["long_form"] = composed_long_form(model, tokenizer, primers[chosen[0]], cfg, log)
        results["checkpoints"].append(entry)
    return results
