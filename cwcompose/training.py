"""Training: random windows starting at bar lines, AdamW with warm-up and cosine decay,
a resumable state saved at intervals and on SIGINT/SIGTERM, checkpoints exported at
fixed steps, and DDP when launched by ``torchrun``.

Every step draws its batch and its dropout from generators seeded by
(seed, rank, step), so a resumed run sees exactly the data and noise that an
uninterrupted one would have.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from cwcompose.checkpoints import default_device, save_checkpoint
from cwcompose.data import TokenDataset
from cwcompose.jsonconfig import JsonConfig
from cwcompose.model import CPTransformer, ModelConfig, total_loss
from cwcompose.tokenizer import FIELDS, CPTokenizer

STATE, FRESH_STATE, OLD_STATE = "state", "state.new", "state.old"  # folders in a run's out_dir


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Optimisation settings. ``batch_size`` is per process; a step is one optimizer update."""

    seq_len: int = 1024
    batch_size: int = 1
    max_steps: int = 80000
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 1000
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 500
    eval_windows: int = 64
    save_every: int = 500
    export_steps: tuple[int, ...] = (10000, 28500, 80000)
    transpose: tuple[int, int] | None = (-5, 6)  # semitones each training window moves by; None: off
    model: dict = None  # overrides of ModelConfig fields (d_model, n_layers, ...)

    def __post_init__(self) -> None:
        problems = [name for name, ok in {
            "seq_len >= 2": self.seq_len >= 2, "batch_size >= 1": self.batch_size >= 1,
            "max_steps >= 1": self.max_steps >= 1, "0 < min_learning_rate <= learning_rate":
                0 < self.min_learning_rate <= self.learning_rate,
            "warmup_steps >= 0": self.warmup_steps >= 0, "grad_clip > 0": self.grad_clip > 0,
            "eval_every >= 1 and save_every >= 1": self.eval_every >= 1 and self.save_every >= 1,
            "transpose is (low, high) with low <= 0 <= high":
                self.transpose is None or (len(self.transpose) == 2 and self.transpose[0] <= 0 <= self.transpose[1]),
        }.items() if not ok]
        if problems:
            raise ValueError("invalid TrainConfig: " + ", ".join(problems))

    def model_config(self, vocab_sizes: dict[str, int]) -> ModelConfig:
        overrides = dict(self.model or {})
        overrides.setdefault("context", self.seq_len)
        return ModelConfig(vocab_sizes=vocab_sizes, **overrides)


def learning_rate_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to ``min_learning_rate`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 1.0)
    return cfg.min_learning_rate + 0.5 * (cfg.learning_rate - cfg.min_learning_rate) * (1 + math.cos(math.pi * progress))


def step_seed(cfg: TrainConfig, rank: int, step: int) -> int:
    return (cfg.seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1)


@dataclass
class Trainer:
    """One training run writing to ``out_dir``: ``loss.csv``, ``state/``, ``step<N>.*``."""

    data_dir: Path
    out_dir: Path
    cfg: TrainConfig
    rank: int = 0
    world: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.device = default_device() if self.world == 1 else _ddp_device(self.rank)
        self.train_set = TokenDataset.load(self.data_dir, "train")
        self.valid_set = TokenDataset.load(self.data_dir, "valid")
        self.tokenizer = CPTokenizer(self.train_set.tokenizer_config)
        torch.manual_seed(self.cfg.seed)
        self.model = CPTransformer(self.cfg.model_config(self.tokenizer.vocab_sizes)).to(self.device)
        self.engine = self.model
        if self.world > 1:
            # A batch without, e.g., any Rest word leaves that head out of the loss (NaN skipped).
            self.engine = torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.learning_rate, betas=(0.9, 0.98), eps=1e-9)
        self.step = 0
        self.stop_requested = False
        self.is_main = self.rank == 0

    # ------------------------------------------------------------ the loop

    def train(self, until: int | None = None) -> None:
        """Train to step ``until`` (default ``max_steps``), or until SIGINT/SIGTERM."""
        until = min(until or self.cfg.max_steps, self.cfg.max_steps)
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        window_losses: list[dict[str, float]] = []
        bar = tqdm(total=until, initial=self.step, desc="train", unit="step", disable=not (self.progress and self.is_main))
        try:
            while self.step < until and not self._should_stop():
                window_losses.append(self.train_step())
                self.step += 1
                bar.update(1)
                if self.step % self.cfg.eval_every == 0 or self.step in self.cfg.export_steps:
                    self._log(window_losses, bar)
                    window_losses = []
                if self.step in self.cfg.export_steps and self.is_main:
                    self.export()
                if self.step % self.cfg.save_every == 0:
                    self.save_state()
            self.save_state()
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def train_step(self) -> dict[str, float]:
        generator = torch.Generator().manual_seed(step_seed(self.cfg, self.rank, self.step))
        torch.manual_seed(step_seed(self.cfg, self.rank, self.step))  # dropout noise
        batch = self.train_set.sample_batch(self.cfg.batch_size, self.cfg.seq_len + 1, generator,
                                            transpose=self.cfg.transpose).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(self.step, self.cfg)
        self.engine.train()
        with self._autocast():
            _, losses = self.engine(batch[:, :-1], batch[:, 1:])
        loss = total_loss(losses)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return {"total": loss.item(), **{f: v.item() for f, v in losses.items()}}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Per-field validation loss (nats/word) on fixed windows of the validation split."""
        self.model.eval()
        windows = self.valid_set.fixed_windows(self.cfg.eval_windows, self.cfg.seq_len + 1).to(self.device)
        sums: dict[str, float] = {}
        for chunk in windows.split(8):
            with self._autocast():
                _, losses = self.model(chunk[:, :-1], chunk[:, 1:])
            losses = {"total": total_loss(losses), **losses}
            for f, v in losses.items():
                sums[f] = sums.get(f, 0.0) + v.item() * len(chunk)
        return {f: round(v / len(windows), 5) for f, v in sums.items()}

    # ------------------------------------------------------------ output

    def _log(self, window_losses: list[dict[str, float]], bar: tqdm) -> None:
        if not self.is_main or not window_losses:
            return
        train = {k: _nanmean([d[k] for d in window_losses]) for k in window_losses[0]}
        valid = self.validate()
        keys = ["total", *FIELDS]
        path = self.out_dir / "loss.csv"
        new = not path.exists()
        with path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "lr", *[f"train_{k}" for k in keys], *[f"valid_{k}" for k in keys]])
            writer.writerow([self.step, f"{learning_rate_at(self.step - 1, self.cfg):.6g}",
                             *[f"{train[k]:.5f}" for k in keys], *[f"{valid[k]:.5f}" for k in keys]])
        bar.set_postfix(train=f"{train['total']:.3f}", valid=f"{valid['total']:.3f}")
        self.last_valid = valid

    def export(self) -> Path:
        valid = getattr(self, "last_valid", None) or self.validate()
        return save_checkpoint(self.model, self.tokenizer, self.out_dir / f"step{self.step}",
                               step=self.step, valid_loss=valid, dataset_fingerprint=self.train_set.fingerprint,
                               train=self.cfg.to_dict())

    def save_state(self) -> None:
        """Resumable state in ``state/``: weights and each Adam moment in its own file (< 10 MB
        each). Written into ``state.new/`` and swapped in, so that a run killed mid-save still
        leaves one complete state (:func:`settle_state` finishes an interrupted swap)."""
        if not self.is_main:
            return
        fresh, final, old = (self.out_dir / name for name in (FRESH_STATE, STATE, OLD_STATE))
        for leftover in (fresh, old):
            shutil.rmtree(leftover, ignore_errors=True)
        fresh.mkdir(parents=True)
        self._write_state(fresh)
        if final.exists():
            final.rename(old)
        fresh.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _write_state(self, state_dir: Path) -> None:
        names = {id(p): n for n, p in self.model.named_parameters()}
        moments: dict[str, dict[str, torch.Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}}
        steps = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                state = self.optimizer.state.get(p)
                if state:
                    for key in moments:
                        moments[key][names[id(p)]] = state[key].detach().cpu().contiguous()
                    steps[names[id(p)]] = float(state["step"])
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                  str(state_dir / "model.safetensors"))
        for key, tensors in moments.items():
            save_file(tensors, str(state_dir / f"{key}.safetensors"))
        meta = {"step": self.step, "adam_steps": steps, "train": self.cfg.to_dict(),
                "dataset_fingerprint": self.train_set.fingerprint}
        (state_dir / "state.json").write_text(json.dumps(meta, indent=1))  # last: it marks the folder complete

    def load_state(self) -> None:
        state_dir = self.out_dir / STATE
        meta = json.loads((state_dir / "state.json").read_text())
        if meta["dataset_fingerprint"] != self.train_set.fingerprint:
            raise ValueError(f"{state_dir} was trained on another dataset (fingerprint differs)")
        self.model.load_state_dict(load_file(str(state_dir / "model.safetensors"), device=str(self.device)), strict=True)
        moments = {k: load_file(str(state_dir / f"{k}.safetensors"), device=str(self.device))
                   for k in ("exp_avg", "exp_avg_sq")}
        for name, p in self.model.named_parameters():
            if name in meta["adam_steps"]:
                self.optimizer.state[p] = {"step": torch.tensor(meta["adam_steps"][name]),
                                           "exp_avg": moments["exp_avg"][name],
                                           "exp_avg_sq": moments["exp_avg_sq"][name]}
        self.step = meta["step"]

    # ------------------------------------------------------------ helpers

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def _should_stop(self) -> bool:
        if self.world == 1:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        dist.all_reduce(flag)
        return bool(flag.item())


def settle_state(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a complete state to resume, in ``state/``. A save killed
    between its two renames leaves ``state/`` missing beside a complete ``state.new/``
    (newer) or ``state.old/``: the newer of them becomes ``state/``."""
    final = out_dir / STATE
    if not (final / "state.json").exists():
        for name in (FRESH_STATE, OLD_STATE):
            if (out_dir / name / "state.json").exists():
                shutil.rmtree(final, ignore_errors=True)
                (out_dir / name).rename(final)
                break
    return (final / "state.json").exists()


def _nanmean(values: list[float]) -> float:
    """Mean of the values that are not NaN (a field absent from a batch gives NaN)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def _ddp_device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def run_training(data_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, resume: bool = False,
                 until: int | None = None, progress: bool = True) -> Trainer:
    """Entry point for ``cwcompose train``; joins a DDP group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    trainer = Trainer(Path(data_dir), out_dir, cfg, rank=rank, world=world, progress=progress)
    if resume and trainer.is_main:
        settle_state(out_dir)
    if world > 1:
        dist.barrier()  # the other ranks read state/ once the main one has settled it
    if resume and (out_dir / STATE / "state.json").exists():
        trainer.load_state()
    elif trainer.is_main:
        cfg.save(out_dir / "train_config.json")
    trainer.train(until)
    if trainer.is_main and progress:
        print(f"stopped at step {trainer.step} after {time.time() - started:.0f} s; state in {out_dir / 'state'}")
    return trainer
