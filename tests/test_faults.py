"""Faults that happen while the server runs, each through the running app over HTTP (gradio_client
against an in-process server on tiny stand-in checkpoints): the soundfont goes, a checkpoint file
turns to garbage, the results disk fills up or turns read-only, a client disconnects mid-stream,
a take's result folder is deleted (the oldest go) while its session can still Undo or Keep to it.
Every message must say what is wrong and what to do, without Python exception names."""

from __future__ import annotations

import builtins
import errno
import html
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import wave
from contextlib import contextmanager
from pathlib import Path

import miditoolkit
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

import app
from app_harness import make_tiny_checkpoints
from cwcompose.render import Renderer, pretty_midi_soundfont
from cwcompose.request import Limits
from cwcompose.studio import Studio

EXCEPTION_NAME = re.compile(r"\b\w*(Error|Exception)\b|Traceback|Errno")


def plain_words(message: str) -> str:
    assert not EXCEPTION_NAME.search(message), f"an exception name or errno in {message!r}"
    return message


@contextmanager
def served(studio: Studio):
    demo = app.launch(studio, prevent_thread_lock=True, quiet=True)
    try:
        yield demo, Client(demo.local_url, verbose=False)
    finally:
        demo.close()
        studio.close()


def numbers(table: dict) -> dict:
    return {row[0]: row[1] for row in table["data"]}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


# ---------------------------------------------------------------- the soundfont


@pytest.mark.parametrize("fault", ["removed", "garbage"])
def test_a_soundfont_lost_after_start_still_gives_midi_and_roll(checkpoints, tmp_path, fault):
    soundfont = tmp_path / "piano.sf2"
    shutil.copy(pretty_midi_soundfont(), soundfont)
    studio = Studio(checkpoints, renderer=Renderer(soundfont))
    with served(studio) as (demo, client):
        if fault == "removed":
            soundfont.unlink()
        else:
            soundfont.write_bytes(b"RIFF\x00\x00\x00\x00not a soundfont at all" * 100)
        job = client.submit(bars=3, seed=2, random_seed=False, api_name="/compose")
        audio, midi, roll, table, seed = job.result()
        assert audio is None and seed == 2
        assert miditoolkit.MidiFile(midi).instruments[0].notes, "the MIDI is served"
        assert 'class="cw-roll' in roll and numbers(table)["bars generated"] == "3"
        message = plain_words(studio.audio_problem)
        assert str(soundfont) in message and "MIDI file and the piano roll are ready" in message
        assert "put the soundfont back" in message and "restart" in message
        # variations render each take on their own; they lose their audio the same way
        audio, midi, *_ = client.predict(bars=2, variations=2, seed=4, random_seed=False, api_name="/compose")
        assert audio is None and miditoolkit.MidiFile(midi).instruments[0].notes


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("damaged", ["step80000.safetensors", "step80000.json"])
def test_a_checkpoint_turned_to_garbage_is_named_and_the_others_still_work(tmp_path, damaged):
    folder = make_tiny_checkpoints(tmp_path / "checkpoints")
    with served(Studio(folder)) as (demo, client):
        client.predict(checkpoint=10000, bars=1, seed=1, random_seed=False, api_name="/compose")  # 10000 loaded
        (folder / damaged).write_bytes(os.urandom(3000))
        (folder / "step10000.safetensors").write_bytes(b"garbage")  # already loaded: it keeps working
        with pytest.raises(AppError) as caught:
            client.predict(checkpoint=80000, bars=2, api_name="/compose")
        message = plain_words(str(caught.value))
        assert f"Checkpoint 80000 cannot be used: its file {folder / damaged} is damaged" in message
        assert "Choose another checkpoint" in message and "make train" in message
        for step in (10000, 28500):
            *_, table, seed = client.predict(checkpoint=step, bars=2, seed=3, random_seed=False,
                                             api_name="/compose")
            assert numbers(table)["checkpoint"] == str(step) and seed == 3
        view, table, seed, *files = client.predict(bars=2, seed=5, random_seed=False, api_name="/compare")
        rows = {r[0]: r[1:] for r in table["data"]}
        assert rows["bars generated"] == ["2", "2", "not available"]
        assert files[1] is not None and files[3] is not None and files[5] is None


# ---------------------------------------------------------------- the results disk


def can_mount() -> bool:
    probe = Path(f"/tmp/cwcompose-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    except OSError:
        return False
    finally:
        probe.rmdir()


class SmallDisk:
    """A small filesystem for the studio's results: a real tmpfs where this process may mount one
    (root), else a folder whose writes fail the way the OS fails them (ENOSPC after part of a
    write; EROFS for every new file or folder) by wrapping ``open`` and ``os.mkdir`` for paths
    under it: the studio's own code runs unchanged either way."""

    def __init__(self, folder: Path, size_kb: int):
        self.folder, self.size_kb = folder, size_kb
        self.mounted = not os.environ.get("CWCOMPOSE_TEST_NO_MOUNT") and can_mount()
        self.full = self.read_only = False
        self._open, self._mkdir = builtins.open, os.mkdir

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.mounted:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_kb}k", "tmpfs", str(self.folder)],
                           check=True)
        else:
            builtins.open, os.mkdir = self._fake_open, self._fake_mkdir
        return self

    def __exit__(self, *exc):
        builtins.open, os.mkdir = self._open, self._mkdir
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)

    def fill(self, leave_kb: int) -> None:
        """Leave about ``leave_kb`` KiB free."""
        self.full = True
        if self.mounted:
            stat = os.statvfs(self.folder)
            free = stat.f_bavail * stat.f_frsize
            with self._open(self.folder / "filler", "wb") as f:
                f.write(b"\0" * max(free - leave_kb * 1024, 0))

    def empty(self) -> None:
        self.full = False
        (self.folder / "filler").unlink(missing_ok=True)

    def set_read_only(self, read_only: bool) -> None:
        self.read_only = read_only
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(self.folder)], check=True)

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.name != "filler")

    def _ours(self, path) -> bool:
        return isinstance(path, (str, Path)) and Path(path).resolve().is_relative_to(self.folder.resolve())

    def _fake_mkdir(self, path, *args, **kwargs):
        if self.read_only and self._ours(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return self._mkdir(path, *args, **kwargs)

    def _fake_open(self, path, mode="r", *args, **kwargs):
        writing = any(m in mode for m in "wax+")
        if writing and self.read_only and self._ours(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        handle = self._open(path, mode, *args, **kwargs)
        if writing and self.full and self._ours(path):
            return HalfWriter(handle)
        return handle


class HalfWriter:
    """A file whose first big write stores half its bytes and then fails: No space left on device."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        if len(data) > 4096:
            self._handle.write(data[:len(data) // 2])
            self._handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def test_a_full_disk_serves_nothing_half_written_and_says_so(checkpoints, tmp_path):
    with SmallDisk(tmp_path / "results", size_kb=32768) as disk, \
            served(Studio(checkpoints, workdir=disk.folder)) as (demo, client):
        client.predict(bars=2, seed=1, random_seed=False, api_name="/compose")  # works while there is room
        before = disk.files()
        disk.fill(leave_kb=120)  # less than one bar of audio
        with pytest.raises(AppError) as caught:
            client.predict(bars=8, seed=2, random_seed=False, api_name="/compose")
        message = plain_words(str(caught.value))
        assert "The piece could not be saved: the server's disk is full" in message
        assert "nothing was kept" in message and "free disk space" in message
        assert disk.files() == before, "the failed request left no file, whole or half-written"
        disk.empty()
        *_, table, seed = client.predict(bars=2, seed=3, random_seed=False, api_name="/compose")
        assert seed == 3, "composing works again once there is room"


def test_a_read_only_results_folder_is_reported(checkpoints, tmp_path):
    with SmallDisk(tmp_path / "results", size_kb=32768) as disk, \
            served(Studio(checkpoints, workdir=disk.folder)) as (demo, client):
        disk.set_read_only(True)
        with pytest.raises(AppError) as caught:
            client.predict(bars=2, seed=2, random_seed=False, api_name="/compose")
        message = plain_words(str(caught.value))
        assert "cannot be written to" in message and "make the results folder writable" in message
        disk.set_read_only(False)
        assert client.predict(bars=2, seed=3, random_seed=False, api_name="/compose")[-1] == 3


# ---------------------------------------------------------------- a client that leaves


class SlowBars(Renderer):
    """The real renderer, with ``seconds`` more per bar, recording when each bar was rendered."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.fed = seconds, []

    @contextmanager
    def stream(self):
        with super().stream() as inner:
            feed = inner.feed

            def slow_feed(midi, until_tick):
                time.sleep(self.seconds)
                self.fed.append(time.monotonic())
                return feed(midi, until_tick)

            inner.feed = slow_feed
            yield inner


CLIENT = textwrap.dedent("""
    import json, os, sys, time
    from gradio_client import Client
    client = Client(sys.argv[1], verbose=False)
    job = client.submit(bars=64, seed=1, random_seed=False, api_name="/compose")
    while len([o for o in job.outputs() if "composing, bar" in str(o)]) < 3:
        time.sleep(0.01)
    print(json.dumps({"session": client.session_hash}), flush=True)
    os._exit(0)  # gone, mid-stream, without a word: the sockets close with the process
""")


def test_a_client_that_disconnects_mid_stream_stops_the_work_within_a_bar(checkpoints):
    bar_seconds = 0.25
    studio = Studio(checkpoints, renderer=SlowBars(bar_seconds))
    with served(studio) as (demo, client):
        process = subprocess.run([sys.executable, "-c", CLIENT, demo.local_url], capture_output=True, text=True,
                                 timeout=60, env={**os.environ, "PYTHONPATH": ""})
        gone = time.monotonic()
        session = json.loads(process.stdout.splitlines()[-1])["session"]
        assert list(studio.turns.order) == [session]  # it ran (its counts may be forgotten already: it left)
        deadline = gone + 10
        while studio.turns.snapshot()["running"] and time.monotonic() < deadline:
            time.sleep(0.02)
        freed = time.monotonic()
        after = [t for t in studio.renderer.fed if t > gone]
        assert not studio.turns.snapshot()["running"], "the request was still composing 10 s after its client left"
        # the server learns of the disconnect when it next sends an update (the end of the bar in
        # progress), and closes the generator at the following yield: one bar, and the bar in flight
        assert len(after) <= 2, f"{len(after)} bars were composed after the client left"
        assert freed - gone < 3 * bar_seconds + 1.0
        assert len(studio.renderer.fed) < 10, "composing did not go on to the 64 bars asked for"
        time.sleep(3 * bar_seconds)
        assert len([t for t in studio.renderer.fed if t > gone]) == len(after), "nothing composed since"
        # the worker is free for the next person at once
        assert client.predict(bars=1, seed=9, random_seed=False, api_name="/compose")[-1] == 9


def test_a_closed_session_is_forgotten(checkpoints, monkeypatch):
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")  # how soon the server notices (15 s by default)
    studio = Studio(checkpoints)
    with served(studio) as (demo, client):
        visitor = Client(demo.local_url, verbose=False)
        visitor.predict(bars=1, seed=1, random_seed=False, api_name="/compose")
        assert visitor.session_hash in demo.state_holder.session_data  # its takes
        visitor.close()  # the heartbeat ends, as when a tab closes
        deadline = time.monotonic() + 10
        while visitor.session_hash in demo.state_holder.session_data and time.monotonic() < deadline:
            time.sleep(0.05)
        assert visitor.session_hash not in demo.state_holder.session_data
        assert client.predict(bars=1, seed=2, random_seed=False, api_name="/compose")[-1] == 2


# ---------------------------------------------------------------- result folders deleted under a take


def roll_chunks(roll: str) -> list[Path]:
    """The audio files a roll's player streams (its data-chunks)."""
    return [Path(p) for p in json.loads(html.unescape(re.search(r'data-chunks="([^"]*)"', roll)[1]))]


def test_undo_and_keep_bring_back_a_take_whose_files_were_deleted(checkpoints):
    """Result folders are shared by every session and the oldest go beyond ``kept_results``,
    while a session's history keeps 20 takes: Undo and Keep write a take's files again."""
    studio = Studio(checkpoints, limits=Limits(kept_results=2))
    with served(studio) as (demo, client):
        other = Client(demo.local_url, verbose=False)
        first = client.predict(bars=2, seed=1, random_seed=False, api_name="/compose")
        client.predict(bars=2, seed=2, random_seed=False, api_name="/compose")
        other.predict(bars=2, seed=3, random_seed=False, api_name="/compose")  # the first take's folder goes
        assert len(list(studio.workdir.iterdir())) == 2
        audio, midi, roll, table, seed = client.predict(api_name="/undo")
        assert seed == 1 and numbers(table)["seed"] == "1"
        assert Path(midi).read_bytes() == Path(first[1]).read_bytes(), "the same piece, written again"
        with wave.open(audio) as restored, wave.open(first[0]) as original:
            assert restored.getnframes() == original.getnframes() > 0
        assert roll_chunks(roll) and all(p.is_file() for p in roll_chunks(roll)), "the roll's player has audio"

        client.predict(bars=2, variations=2, seed=10, random_seed=False, api_name="/compose")
        for seed in (4, 5):  # another session's results: the variations' folder goes
            other.predict(bars=2, seed=seed, random_seed=False, api_name="/compose")
        audio, midi, roll, table, seed = client.predict(choice="2", api_name="/keep")
        assert seed == 11 and numbers(table)["variation"] == "2" and miditoolkit.MidiFile(midi).instruments
        assert audio is not None and roll_chunks(roll)[0].is_file()
        shown_beside = sorted(p.suffix for p in studio.workdir.rglob("cwcompose-28500-seed10.*"))
        assert shown_beside == [".mid", ".wav"], "variation 1, still shown beside it, is restored too"
        audio, midi, *_, seed = client.predict(api_name="/undo")  # its folder went again meanwhile
        assert seed == 1 and Path(midi).read_bytes() == Path(first[1]).read_bytes()
