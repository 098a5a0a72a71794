"""The ``cwcompose`` command line: prepare, train, generate, evaluate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cwcompose", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for register in (_add_prepare, _add_train):
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


if __name__ == "__main__":
    sys.exit(main())
