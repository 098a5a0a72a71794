"""Training on real POP909 windows: over-fitting, exact resume, exports, DDP, stop signals."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cwcompose.checkpoints import load_checkpoint
from cwcompose.data import TokenDataset
from cwcompose.tokenizer import FIELDS
from cwcompose.training import TrainConfig, Trainer, learning_rate_at, run_training

TINY = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.1)
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**changes) -> TrainConfig:
    base = dict(seq_len=32, batch_size=2, max_steps=12, warmup_steps=4, eval_every=4, eval_windows=4,
                save_every=5, export_steps=(6, 12), model=TINY)
    return TrainConfig(**{**base, **changes})


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)


# ---------------------------------------------------------------- schedule and config


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=10, max_steps=110)
    assert learning_rate_at(0, cfg) == pytest.approx(1e-4)
    assert learning_rate_at(9, cfg) == pytest.approx(1e-3)
    assert learning_rate_at(60, cfg) == pytest.approx(5.5e-4)
    assert learning_rate_at(110, cfg) == pytest.approx(1e-4)
    assert learning_rate_at(500, cfg) == pytest.approx(1e-4)
    rates = [learning_rate_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize("changes,message", [
    (dict(seq_len=1), "seq_len"), (dict(batch_size=0), "batch_size"),
    (dict(min_learning_rate=1e-2), "min_learning_rate"), (dict(grad_clip=0.0), "grad_clip"),
    (dict(save_every=0), "save_every"),
])
def test_train_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_train_config_json_round_trip(tmp_path):
    cfg = small_config()
    cfg.save(tmp_path / "train.json")
    assert TrainConfig.load(tmp_path / "train.json") == cfg
    assert cfg.model_config({f: 10 for f in FIELDS}).context == cfg.seq_len


# ---------------------------------------------------------------- learning


def test_tiny_model_overfits_a_few_windows(small_dataset, tmp_path):
    """Three windows of one real song, 150 steps: the total loss falls from ~3.9 to well under 0.5."""
    cfg = small_config(batch_size=4, max_steps=150, learning_rate=3e-3, min_learning_rate=3e-4,
                       warmup_steps=20, model={**TINY, "dropout": 0.0}, transpose=None)
    trainer = Trainer(small_dataset, tmp_path, cfg, progress=False)
    full = trainer.train_set
    trainer.train_set = TokenDataset([full.songs[0][:48]], full.names[:1], full.tokenizer_config, full.fingerprint)
    assert len(trainer.train_set.bar_starts) == 3
    losses = []
    while trainer.step < cfg.max_steps:
        losses.append(trainer.train_step()["total"])
        trainer.step += 1
    assert losses[0] > 3.0
    assert max(losses[-10:]) < 0.5


# ---------------------------------------------------------------- resume and exports


def test_resumed_run_equals_uninterrupted_run(small_dataset, tmp_path):
    cfg = small_config()
    first = run_training(small_dataset, tmp_path / "a", cfg, until=7, progress=False)
    assert first.step == 7
    assert json.loads((tmp_path / "a" / "state" / "state.json").read_text())["step"] == 7
    resumed = run_training(small_dataset, tmp_path / "a", cfg, resume=True, progress=False)
    straight = run_training(small_dataset, tmp_path / "b", cfg, progress=False)
    assert resumed.step == straight.step == 12
    assert_same_weights(resumed.model.state_dict(), straight.model.state_dict())
    for name in ("model", "exp_avg", "exp_avg_sq"):
        assert_same_weights(load_file(str(tmp_path / "a" / "state" / f"{name}.safetensors")),
                            load_file(str(tmp_path / "b" / "state" / f"{name}.safetensors")))

    rows_a, rows_b = read_rows(tmp_path / "a" / "loss.csv"), read_rows(tmp_path / "b" / "loss.csv")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == ["4", "6", "8", "12"]
    assert set(rows_a[0]) == {"step", "lr", *[f"{s}_{k}" for s in ("train", "valid") for k in ("total", *FIELDS)]}
    for row_a, row_b in zip(rows_a, rows_b):
        # the first row after a resume averages only the steps run since the resume
        keys = [k for k in row_a if k.startswith("valid_")] if row_a["step"] == "8" else list(row_a)
        assert {k: row_a[k] for k in keys} == {k: row_b[k] for k in keys}
    assert float(rows_b[-1]["train_total"]) < float(rows_b[0]["train_total"])


def test_exports_appear_at_export_steps_with_metadata(small_dataset, tmp_path):
    cfg = small_config(max_steps=6, export_steps=(3, 6), eval_every=100)
    trainer = run_training(small_dataset, tmp_path, cfg, progress=False)
    fingerprint = json.loads((small_dataset / "index.json").read_text())["fingerprint"]
    exported = sorted(p.name for p in tmp_path.glob("step*"))
    assert exported == ["step3.json", "step3.safetensors", "step6.json", "step6.safetensors"]
    for step in (3, 6):
        info = json.loads((tmp_path / f"step{step}.json").read_text())
        assert info["step"] == step
        assert info["dataset_fingerprint"] == fingerprint
        assert set(info["valid_loss"]) == {"total", *FIELDS}
        assert 0 < info["valid_loss"]["total"] < 10
        assert TrainConfig.from_dict(info["train"]) == cfg
    assert [r["step"] for r in read_rows(tmp_path / "loss.csv")] == ["3", "6"]
    loaded, _ = load_checkpoint(tmp_path / "step6", device="cpu")
    assert_same_weights(loaded.state_dict(), trainer.model.state_dict())


def test_resume_refuses_another_dataset(small_dataset, tmp_path):
    cfg = small_config(max_steps=2, export_steps=())
    run_training(small_dataset, tmp_path, cfg, progress=False)
    state = tmp_path / "state" / "state.json"
    meta = json.loads(state.read_text())
    state.write_text(json.dumps({**meta, "dataset_fingerprint": "0000000000000000"}))
    with pytest.raises(ValueError, match="another dataset"):
        run_training(small_dataset, tmp_path, cfg, resume=True, progress=False)


# ---------------------------------------------------------------- processes

DDP_SCRIPT = """
import os, sys
import torch.distributed as dist
from safetensors.torch import save_file
from cwcompose.training import TrainConfig, run_training

data, out, config = sys.argv[1:]
trainer = run_training(data, out, TrainConfig.load(config), progress=False)
weights = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
save_file(weights, os.path.join(out, f"rank{dist.get_rank()}.safetensors"))
dist.destroy_process_group()
"""


def test_two_process_ddp_keeps_ranks_identical(small_dataset, tmp_path):
    """Ranks draw different batches; only averaged gradients keep their weights equal."""
    small_config(max_steps=4, export_steps=(4,), eval_every=100).save(tmp_path / "cfg.json")
    (tmp_path / "ddp_train.py").write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(tmp_path / "ddp_train.py"),
               str(small_dataset), str(out), str(tmp_path / "cfg.json")]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert_same_weights(rank0, rank1)
    assert_same_weights(load_file(str(out / "state" / "model.safetensors")), rank0)
    assert_same_weights(load_file(str(out / "step4.safetensors")), rank0)
    assert json.loads((out / "state" / "state.json").read_text())["step"] == 4
    single = run_training(small_dataset, tmp_path / "single", TrainConfig.load(tmp_path / "cfg.json"), progress=False)
    assert not torch.allclose(single.model.state_dict()["family_head.weight"], rank0["family_head.weight"])


def test_sigterm_saves_state_and_resume_continues(small_dataset, tmp_path):
    small_config(max_steps=100_000, save_every=2, eval_every=100_000, export_steps=()).save(tmp_path / "cfg.json")
    out = tmp_path / "out"
    train = [sys.executable, "-m", "cwcompose", "train", "--data", str(small_dataset), "--out", str(out)]
    proc = subprocess.Popen(train + ["--config", str(tmp_path / "cfg.json")], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out / "state" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training exited before its first state save"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = json.loads(state.read_text())["step"]
    assert 0 < stopped < 100_000
    assert f"stopped at step {stopped} " in stdout

    # --resume without --config reads the run's own train_config.json
    done = subprocess.run(train + ["--resume", "--until", str(stopped + 3)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(state.read_text())["step"] == stopped + 3
    assert f"stopped at step {stopped + 3} " in done.stdout


def test_a_save_cut_short_leaves_the_previous_state_whole(small_dataset, tmp_path, monkeypatch):
    """A run killed while writing its state (here: the optimizer's file fails) resumes from
    the last complete save and ends where an uninterrupted run ends."""
    cfg = small_config()
    run_training(small_dataset, tmp_path / "a", cfg, until=5, progress=False)
    import cwcompose.training as training

    real_save = training.save_file

    def dies_on_moments(tensors, path):
        if "exp_avg" in Path(path).name:
            raise OSError("killed mid-save")
        real_save(tensors, path)

    monkeypatch.setattr(training, "save_file", dies_on_moments)
    with pytest.raises(OSError):
        run_training(small_dataset, tmp_path / "a", cfg, resume=True, until=10, progress=False)
    monkeypatch.setattr(training, "save_file", real_save)
    assert json.loads((tmp_path / "a" / "state" / "state.json").read_text())["step"] == 5
    resumed = run_training(small_dataset, tmp_path / "a", cfg, resume=True, progress=False)
    straight = run_training(small_dataset, tmp_path / "b", cfg, progress=False)
    assert_same_weights(resumed.model.state_dict(), straight.model.state_dict())


def test_a_swap_cut_short_resumes_from_the_newer_state(small_dataset, tmp_path):
    """Killed between a save's two renames: state/ is gone, state.new/ holds the newer save."""
    cfg = small_config()
    run_training(small_dataset, tmp_path / "a", cfg, until=7, progress=False)
    (tmp_path / "a" / "state").rename(tmp_path / "a" / "state.new")
    resumed = run_training(small_dataset, tmp_path / "a", cfg, resume=True, progress=False)
    straight = run_training(small_dataset, tmp_path / "b", cfg, progress=False)
    assert resumed.step == 12
    assert_same_weights(resumed.model.state_dict(), straight.model.state_dict())
    assert not (tmp_path / "a" / "state.new").exists()
