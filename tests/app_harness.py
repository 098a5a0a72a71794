"""Start app.py in this process on stand-in checkpoints (HTTP, browser and robustness tests)."""

from __future__ import annotations

from pathlib import Path

import app
from cwcompose.checkpoints import SHIPPED_STEPS, TINY_MODEL, fill_with_stand_ins


def make_tiny_checkpoints(folder: Path, steps=SHIPPED_STEPS) -> Path:
    """Untrained 2-layer stand-ins for the shipped steps (so tests never wait for training)."""
    fill_with_stand_ins(folder, source=None, steps=steps, model=TINY_MODEL)
    return folder


def shipped_or_tiny_checkpoints(folder: Path) -> Path:
    """The trained checkpoints where they are shipped, tiny stand-ins for the others."""
    fill_with_stand_ins(folder, model=TINY_MODEL)
    return folder


def launch_app(checkpoint_dir: Path):
    """The app on ``checkpoint_dir``, serving on a free port -> (demo, studio)."""
    studio = app.make_studio({app.CHECKPOINTS_ENV: str(checkpoint_dir)})
    return app.launch(studio, prevent_thread_lock=True, quiet=True), studio
