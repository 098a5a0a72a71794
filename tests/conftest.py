"""Shared fixtures: where POP909 lives, and a small prepared dataset built from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ROOT = Path(os.environ.get("CWCOMPOSE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
POP909 = DATA_ROOT / "pop909"


def require_pop909() -> Path:
    """The POP909 folder; skip (or, under CI=true, fail) when it is absent."""
    if POP909.is_dir():
        return POP909
    message = (f"POP909 not found at {POP909}: put the dataset in ../shared/data/pop909 "
               "or point CWCOMPOSE_DATA at the folder that holds pop909/")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pop909() -> Path:
    return require_pop909()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, pop909) -> Path:
    """A prepared dataset of 24 POP909 songs (with train/valid/test songs among them)."""
    import shutil

    from cwcompose.data import prepare

    source = tmp_path_factory.mktemp("pop909_small")
    for song in sorted(pop909.iterdir())[:24]:
        if song.is_dir():
            (source / song.name).symlink_to(song, target_is_directory=True)
    out = tmp_path_factory.mktemp("tokens")
    prepare(source, out, workers=1, progress=False)
    shutil.rmtree(source)
    return out
