"""The ``cwcompose`` command line: prepare, train, generate, evaluate."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cwcompose", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for register in (_add_prepare, _add_train, _add_generate, _add_evaluate):
        register(commands)
    args = parser.parse_args(argv)
    return args.run(args) or 0


def _add_prepare(commands) -> None:
    p = commands.add_parser("prepare", help="a folder of MIDI files (or POP909) -> a token dataset")
    p.add_argument("input_dir", type=Path)
    p.add_argument("output_dir", type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tokenizer-config", type=Path, help="JSON of TokenizerConfig fields")
    p.set_defaults(run=_run_prepare)


def _run_prepare(args) -> int:
    from cwcompose.data import prepare
    from cwcompose.tokenizer import TokenizerConfig

    config = TokenizerConfig.load(args.tokenizer_config) if args.tokenizer_config else None
    summary = prepare(args.input_dir, args.output_dir, config, workers=args.workers)
    brief = {k: v for k, v in summary.items() if k not in ("histograms", "skipped")}
    print(json.dumps(brief, indent=1))
    print(f"skipped {len(summary['skipped'])} files; details in {args.output_dir / 'summary.json'}")
    return 0


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train a CP Transformer on a prepared dataset")
    p.add_argument("--data", type=Path, required=True, help="folder written by `cwcompose prepare`")
    p.add_argument("--out", type=Path, required=True, help="folder for loss.csv, state/ and step<N>.*")
    p.add_argument("--config", type=Path, help="JSON of TrainConfig fields (model overrides under 'model')")
    p.add_argument("--resume", action="store_true", help="continue from <out>/state if it exists")
    p.add_argument("--until", type=int, help="stop at this step (a chunk of a longer run)")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from cwcompose.training import TrainConfig, run_training

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    if args.resume and (args.out / "train_config.json").exists() and not args.config:
        config = TrainConfig.load(args.out / "train_config.json")
    run_training(args.data, args.out, config, resume=args.resume, until=args.until)
    return 0


def _add_generate(commands) -> None:
    p = commands.add_parser("generate", help="compose a continuation (or a piece from nothing) to a MIDI file")
    p.add_argument("--checkpoint", default="28500", help="a shipped step (10000, 28500, 80000) or a checkpoint path")
    p.add_argument("--primer", type=Path, help="a MIDI file to continue")
    p.add_argument("--primer-bars", type=int, default=8, help="keep the primer's last N bars")
    p.add_argument("--bars", type=int, default=16, help="bars to generate")
    p.add_argument("--from-bar", type=int, help="with --primer: cut the primer after its bar N (then keep its last --primer-bars)")
    p.add_argument("--variations", type=int, default=1, help="N takes at once (seeds S..S+N-1): OUT-1.mid ... OUT-N.mid")
    p.add_argument("--seconds", type=float, help="stop once the piece is this long (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="balanced", help="steady, balanced or adventurous")
    p.add_argument("--temperature", action="append", default=[], metavar="FIELD=V")
    p.add_argument("--top-p", action="append", default=[], metavar="FIELD=V")
    p.add_argument("--chords", help='a chord progression, one chord per bar, cycling; two chords in one bar '
                                    'in brackets: "C G Am F", "C [G Am] F" (see cwcompose/locks.py)')
    p.add_argument("--key", help='keep to a key: "A minor", "Am", "Eb major", "F#m" ... or "from primer"')
    p.add_argument("--key-strength", type=float, default=1.0,
                   help="0 (off) to 1 (no note outside the scale); between, out-of-key odds x (1 - strength)")
    p.add_argument("--tempo", type=float, help="hold this tempo in BPM, 40-250 (held at the nearest tempo class)")
    p.add_argument("--density", type=float, metavar="NOTES_PER_BAR", help="steer towards this many notes per bar")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(run=_run_generate)


def _parse_field_values(items: list[str], option: str) -> dict[str, float]:
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"{option} {item!r}: expected FIELD=NUMBER, e.g. {option} pitch=0.9") from None
        if not sep:
            raise SystemExit(f"{option} {item!r}: expected FIELD=NUMBER, e.g. {option} pitch=0.9")
    return values


def _run_generate(args) -> int:
    from cwcompose.checkpoints import CheckpointError, load_checkpoint
    from cwcompose.generation import compose_variations, save_midi
    from cwcompose.sampling import PRESETS
    from cwcompose.tokenizer import MidiReadError

    if args.preset not in PRESETS:
        raise SystemExit(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        sampling = PRESETS[args.preset].with_overrides(
            _parse_field_values(args.temperature, "--temperature"), _parse_field_values(args.top_p, "--top-p"))
        model, tokenizer = load_checkpoint(args.checkpoint, device=args.device)
        if args.from_bar is not None and args.primer is None:
            raise ValueError("--from-bar needs --primer (the piece to rewind)")
        constraints = constraints_from_args(args, tokenizer)
        pieces = compose_variations(model, tokenizer, variations=args.variations, primer=args.primer,
                                    primer_bars=args.primer_bars, bars=args.bars, max_seconds=args.seconds,
                                    sampling=sampling, seed=args.seed, from_bar=args.from_bar,
                                    constraints=constraints)
    except (ValueError, CheckpointError, MidiReadError) as err:
        raise SystemExit(f"cwcompose generate: {err}") from None
    for piece, path in zip(pieces, output_paths(args.output, args.variations)):
        save_midi(piece, path)
        print(f"wrote {path}: {piece.primer_bars} primer bars + {piece.bars} new bars, "
              f"{len(piece.midi.instruments[0].notes)} notes, {piece.seconds:.1f} s (seed {piece.seed})")
    return 0


def output_paths(output: Path, variations: int) -> list[Path]:
    """``OUT.mid`` for one piece; ``OUT-1.mid`` ... ``OUT-N.mid`` for N variations."""
    if variations == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(1, variations + 1)]


def constraints_from_args(args, tokenizer) -> list:
    """The user's locks (logit processors, see cwcompose.locks) from the generate options
    --chords, --key, --key-strength, --tempo, --density; a bad value raises ValueError."""
    from cwcompose.generation import primer_words
    from cwcompose.locks import Locks

    locks = Locks(chords=args.chords, key=args.key, key_strength=args.key_strength, tempo_bpm=args.tempo,
                  notes_per_bar=args.density)
    primer = None
    if locks.key_from_primer and args.primer is not None:
        primer = primer_words(tokenizer, args.primer, args.primer_bars, args.from_bar)
    return locks.processors(tokenizer, primer)


def _add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="held-out loss and music metrics of checkpoints -> a markdown report")
    p.add_argument("checkpoints", nargs="*",
                   help="steps (28500), older generations' steps (v1/28500) or paths (default: every shipped one)")
    p.add_argument("--data", type=Path, default=Path("data/pop909"), help="a prepared dataset")
    p.add_argument("--split", default="test", help="its held-out split: loss, primers and real excerpts")
    p.add_argument("--seeds", type=int, default=8, help="pieces per checkpoint and condition (seeds 0..N-1)")
    p.add_argument("--bars", type=int, default=16, help="bars per composed piece and real excerpt")
    p.add_argument("--primer-bars", type=int, default=8)
    p.add_argument("--windows", type=int, default=64, help="held-out windows for the loss")
    p.add_argument("--pieces", type=int, default=16,
                   help="coherence: continue the primers of this many held-out songs (each with every seed)")
    p.add_argument("--long-form-bars", type=int, default=300, help="bars of the one long piece per checkpoint (0: none)")
    p.add_argument("--long-form-chunk", type=int, default=30, help="bars per chunk the long piece is measured in")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed so the numbers do not vary)")
    p.add_argument("--out", type=Path, default=Path("docs"), help="folder for EVALUATION.md and its plots")
    p.add_argument("--loss-csv", type=Path,
                   help="a training loss.csv: plotted as <out>/loss.png, its lowest validation losses tabled")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    import torch

    from cwcompose.checkpoints import CheckpointError
    from cwcompose.evaluation import EvalConfig, EvaluationError, default_checkpoints, evaluate
    from cwcompose.report import write_report

    checkpoints = args.checkpoints or default_checkpoints()
    if not checkpoints:
        raise SystemExit("cwcompose evaluate: no checkpoints given and none shipped in checkpoints/")
    try:
        config = EvalConfig(seeds=args.seeds, bars=args.bars, primer_bars=args.primer_bars, nll_windows=args.windows,
                            pieces=args.pieces, long_form_bars=args.long_form_bars,
                            long_form_chunk=args.long_form_chunk)
    except ValueError as err:
        raise SystemExit(f"cwcompose evaluate: {err}") from None
    if args.loss_csv and not args.loss_csv.is_file():  # checked before the minutes of composing, not after
        raise SystemExit(f"cwcompose evaluate: no loss CSV at {args.loss_csv} (cwcompose train writes <out>/loss.csv)")
    started, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(args.threads)  # batch-1 decoding gains nothing from more, and the numbers stay put
    try:
        results = evaluate(checkpoints, args.data, config, split=args.split, device="cpu")
    except (EvaluationError, CheckpointError) as err:
        raise SystemExit(f"cwcompose evaluate: {err}") from None
    finally:
        torch.set_num_threads(threads)
    report = write_report(results, args.out, loss_csv=args.loss_csv)
    print(f"wrote {report} and its figures in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
