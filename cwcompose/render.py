"""MIDI -> audio with FluidSynth, driven note by note from a small pool of loaded synths.

>>> renderer = Renderer()                      # finds a soundfont, loads nothing yet
>>> audio = renderer.render(midi)              # float32 (n_samples, 2) at 44.1 kHz
>>> renderer.soundfont.describe()              # which soundfont is in use, and why

Loading a soundfont is the slow part (about 0.1 s for the 148 MB FluidR3_GM), so
every :class:`Renderer` keeps the synths it has made and lends them out one
request at a time behind a lock; the app owns one Renderer. Notes go straight to
``fluid_synth_noteon/noteoff`` between blocks of ``fluid_synth_write_float``, with
no MIDI-file player in between, so rendering is many times faster than real time.
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import miditoolkit
import numpy as np

from cwcompose.jsonconfig import JsonConfig
from cwcompose.tokenizer import read_midi

PROJECT_SOUNDFONTS = Path(__file__).resolve().parent.parent / "soundfonts"
SYSTEM_SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf3/MuseScore_General*.sf3")
SOUNDFONT_ENV = "CWCOMPOSE_SOUNDFONT"
INSTALL_FLUIDSYNTH = "apt-get install -y libfluidsynth3 (Debian/Ubuntu; on a Space list 'fluidsynth' in packages.txt)"
INSTALL_SOUNDFONT = "apt-get install -y fluid-soundfont-gm"
DRUM_CHANNEL = 9
FLUID_BLOCK = 64  # FluidSynth synthesises in blocks of 64 samples and applies events between blocks


class RenderError(RuntimeError):
    """Audio cannot be rendered: FluidSynth or a soundfont is missing or broken."""


# ---------------------------------------------------------------- soundfonts


@dataclass(frozen=True)
class Soundfont:
    """A soundfont file and the rule that chose it."""

    path: Path
    reason: str

    def describe(self) -> str:
        return f"{self.path} ({self.reason})"


def find_soundfont(env: Mapping[str, str] | None = None, project_dir: Path = PROJECT_SOUNDFONTS) -> Soundfont:
    """The soundfont to use, first match wins:

    1. the file named by ``$CWCOMPOSE_SOUNDFONT`` (an error if it does not exist),
    2. ``soundfonts/*.sf2`` / ``*.sf3`` in the project (alphabetically first),
    3. the system's FluidR3_GM.sf2, then MuseScore_General*.sf3,
    4. the TimGM6mb.sf2 bundled with pretty_midi.
    """
    env = os.environ if env is None else env
    if env.get(SOUNDFONT_ENV):
        path = Path(env[SOUNDFONT_ENV]).expanduser()
        if not path.is_file():
            raise RenderError(f"{SOUNDFONT_ENV}={path} does not exist; point it at an .sf2/.sf3 file "
                              f"or unset it to use the default soundfont")
        return Soundfont(path, f"set by ${SOUNDFONT_ENV}")
    project = sorted(p for p in Path(project_dir).glob("*.sf[23]") if p.is_file())
    if project:
        return Soundfont(project[0], f"first soundfont in {project_dir}")
    for pattern in SYSTEM_SOUNDFONTS:
        matches = sorted(Path(pattern).parent.glob(Path(pattern).name))
        if matches:
            return Soundfont(matches[0], "system soundfont")
    bundled = pretty_midi_soundfont()
    if bundled is not None:
        return Soundfont(bundled, "bundled with pretty_midi (small; install fluid-soundfont-gm for a better piano)")
    raise RenderError(f"no soundfont found: set ${SOUNDFONT_ENV}, put an .sf2 in {project_dir}, "
                      f"or run `{INSTALL_SOUNDFONT}`")


def pretty_midi_soundfont() -> Path | None:
    """The TimGM6mb.sf2 that ships inside the pretty_midi wheel, if pretty_midi is installed."""
    try:
        import pretty_midi
    except ImportError:
        return None
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    return path if path.is_file() else None


# ---------------------------------------------------------------- MIDI -> note events


def ticks_to_seconds(ticks: np.ndarray, midi: miditoolkit.MidiFile) -> np.ndarray:
    """Absolute MIDI ticks -> seconds, following the file's tempo map (120 BPM before the first change)."""
    changes = sorted(midi.tempo_changes, key=lambda t: t.time)
    if not changes or changes[0].time > 0:
        changes = [miditoolkit.TempoChange(120.0, 0)] + changes
    starts = np.array([c.time for c in changes], dtype=np.float64)
    seconds_per_tick = 60.0 / (np.array([c.tempo for c in changes], dtype=np.float64) * midi.ticks_per_beat)
    seconds_at = np.concatenate([[0.0], np.cumsum(np.diff(starts) * seconds_per_tick[:-1])])
    ticks = np.asarray(ticks, dtype=np.float64)
    idx = np.clip(np.searchsorted(starts, ticks, side="right") - 1, 0, None)
    return seconds_at[idx] + (ticks - starts[idx]) * seconds_per_tick[idx]


@dataclass
class NoteEvents:
    """Note-ons and note-offs sorted by time; offs come first at equal times."""

    sample: np.ndarray  # int64, when the event happens, in samples from the start
    channel: np.ndarray  # int, 0..15
    pitch: np.ndarray  # int, MIDI 0..127
    velocity: np.ndarray  # int, 1..127 for a note-on, 0 for a note-off
    programs: dict[int, int]  # channel -> General MIDI program
    end_sample: int  # where the last note stops


def channel_of(index: int, instrument: miditoolkit.Instrument) -> int:
    """MIDI channel for the ``index``-th instrument: drums on 9, the others round the remaining 15."""
    if instrument.is_drum:
        return DRUM_CHANNEL
    channel = index % 15
    return channel + 1 if channel >= DRUM_CHANNEL else channel


def note_events(midi: miditoolkit.MidiFile, sample_rate: int) -> NoteEvents:
    """Every note of every instrument -> note-on/off events in samples.

    A note that is still sounding when the same key is struck again on its channel is
    cut at the new onset, so the later note-off cannot silence the newer note.
    """
    rows, programs = [], {}
    for index, instrument in enumerate(midi.instruments):
        channel = channel_of(index, instrument)
        programs[channel] = instrument.program
        for n in instrument.notes:
            if 0 <= n.pitch <= 127 and n.velocity > 0 and n.end > n.start:
                rows.append((channel, n.pitch, n.start, n.end, min(n.velocity, 127)))
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return NoteEvents(empty, empty, empty, empty, programs, 0)
    notes = np.array(sorted(rows), dtype=np.int64)  # by channel, pitch, start
    channel, pitch, start, end, velocity = notes.T
    same_key_next = (channel[1:] == channel[:-1]) & (pitch[1:] == pitch[:-1])
    end[:-1] = np.where(same_key_next, np.minimum(end[:-1], start[1:]), end[:-1])
    on = np.round(ticks_to_seconds(start, midi) * sample_rate).astype(np.int64)
    off = np.maximum(np.round(ticks_to_seconds(end, midi) * sample_rate).astype(np.int64), on + 1)
    sample = np.concatenate([off, on])
    vel = np.concatenate([np.zeros_like(velocity), velocity])
    order = np.lexsort((vel > 0, sample))  # by time, offs before ons
    return NoteEvents(sample[order], np.concatenate([channel, channel])[order],
                      np.concatenate([pitch, pitch])[order], vel[order], programs, int(off.max()))


# ---------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class RenderConfig(JsonConfig):
    """How audio is synthesised."""

    sample_rate: int = 44100  # Hz
    gain: float = 0.4  # FluidSynth master gain; 0.2 is its default, louder clips sooner
    release_seconds: float = 1.0  # audio kept after the last note-off, for the release and reverb
    max_synths: int = 2  # synths loaded at most, i.e. renders that run at once
    reverb: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not 8000 <= self.sample_rate <= 192000:
            problems.append(f"sample_rate {self.sample_rate} must be in 8000..192000 Hz")
        if not 0.0 < self.gain <= 10.0:
            problems.append(f"gain {self.gain} must be in (0, 10]")
        if not 0.0 <= self.release_seconds <= 10.0:
            problems.append(f"release_seconds {self.release_seconds} must be in 0..10")
        if self.max_synths < 1:
            problems.append(f"max_synths {self.max_synths} must be >= 1")
        if problems:
            raise ValueError("invalid RenderConfig: " + "; ".join(problems))


def import_fluidsynth():
    """The pyfluidsynth module; :class:`RenderError` naming the fix when libfluidsynth is missing."""
    try:
        import fluidsynth
    except ImportError as err:  # pyfluidsynth raises ImportError when libfluidsynth.so.3 is absent
        raise RenderError(f"FluidSynth is not available ({err}); install it with `{INSTALL_FLUIDSYNTH}` "
                          "and `pip install pyfluidsynth`") from err
    return fluidsynth


class Synth:
    """One FluidSynth instance with the soundfont loaded, writing float32 stereo."""

    def __init__(self, soundfont: Soundfont, config: RenderConfig):
        fluidsynth = import_fluidsynth()
        self.synth = fluidsynth.Synth(gain=config.gain, samplerate=float(config.sample_rate))
        self.synth.setting("synth.reverb.active", int(config.reverb))
        self.sfid = self.synth.sfload(str(soundfont.path))
        if self.sfid < 0:
            self.synth.delete()
            raise RenderError(f"FluidSynth could not load the soundfont {soundfont.describe()}; "
                              f"set ${SOUNDFONT_ENV} to a working .sf2/.sf3 file")
        self._write = fluidsynth.cfunc(
            "fluid_synth_write_float", ctypes.c_int, ("synth", ctypes.c_void_p, 1), ("len", ctypes.c_int, 1),
            ("lout", ctypes.c_void_p, 1), ("loff", ctypes.c_int, 1), ("lincr", ctypes.c_int, 1),
            ("rout", ctypes.c_void_p, 1), ("roff", ctypes.c_int, 1), ("rincr", ctypes.c_int, 1))

    def reset(self, programs: dict[int, int]) -> None:
        """Silence everything and select each channel's program (bank 128 for drums)."""
        self.synth.system_reset()
        for channel, program in programs.items():
            self.synth.program_select(channel, self.sfid, 128 if channel == DRUM_CHANNEL else 0, program)

    def write(self, out: np.ndarray, start: int, stop: int) -> None:
        """Synthesise samples ``start:stop`` into ``out``, a C-contiguous float32 (n, 2) array."""
        if stop > start:
            self._write(self.synth.synth, stop - start, out.ctypes.data, 2 * start, 2,
                        out.ctypes.data, 2 * start + 1, 2)

    def play(self, events: NoteEvents, total_samples: int) -> np.ndarray:
        """Render the events -> float32 (total_samples, 2)."""
        out = np.zeros((total_samples, 2), dtype=np.float32)
        now = 0
        for sample, channel, pitch, velocity in zip(events.sample.tolist(), events.channel.tolist(),
                                                    events.pitch.tolist(), events.velocity.tolist()):
            self.write(out, now, sample)
            now = max(now, sample)
            if velocity:
                self.synth.noteon(channel, pitch, velocity)
            else:
                self.synth.noteoff(channel, pitch)
        self.write(out, now, total_samples)
        return out

    def close(self) -> None:
        self.synth.delete()


class Renderer:
    """Renders MIDI to audio, reusing up to ``config.max_synths`` loaded synths across threads."""

    def __init__(self, soundfont: Soundfont | str | Path | None = None, config: RenderConfig | None = None):
        self.config = config or RenderConfig()
        if soundfont is None:
            soundfont = find_soundfont()
        elif not isinstance(soundfont, Soundfont):
            if not Path(soundfont).is_file():
                raise RenderError(f"soundfont {soundfont} does not exist")
            soundfont = Soundfont(Path(soundfont), "given to Renderer")
        self.soundfont = soundfont
        self._idle: list[Synth] = []
        self._created = 0
        self._available = threading.Condition()

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def synths_loaded(self) -> int:
        """How many synths this renderer has loaded (at most ``config.max_synths``)."""
        return self._created

    @contextmanager
    def _borrow(self) -> Iterator[Synth]:
        with self._available:
            while not self._idle and self._created >= self.config.max_synths:
                self._available.wait()
            synth = self._idle.pop() if self._idle else None
            if synth is None:
                self._created += 1
        if synth is None:
            try:
                synth = Synth(self.soundfont, self.config)
            except BaseException:
                with self._available:
                    self._created -= 1
                    self._available.notify()
                raise
        try:
            yield synth
        finally:
            with self._available:
                self._idle.append(synth)
                self._available.notify()

    def warm_up(self) -> None:
        """Load one synth now, so the first request does not pay for the soundfont."""
        with self._borrow():
            pass

    def render(self, midi: miditoolkit.MidiFile | bytes | str | Path) -> np.ndarray:
        """A MIDI file -> float32 stereo audio of shape (n_samples, 2) at ``sample_rate``.

        The audio lasts until the last note-off plus ``config.release_seconds``, rounded up to
        whole FluidSynth blocks (64 samples), so a reused synth starts every render on a block
        boundary and places every note on the same sample as a fresh synth would (only the
        reverb's free-running modulation differs between renders).
        """
        events = note_events(read_midi(midi), self.sample_rate)
        total = events.end_sample + int(round(self.config.release_seconds * self.sample_rate))
        total = -(-total // FLUID_BLOCK) * FLUID_BLOCK
        with self._borrow() as synth:
            synth.reset(events.programs)
            return synth.play(events, total)

    @contextmanager
    def stream(self) -> Iterator["StreamRenderer"]:
        """A :class:`StreamRenderer` holding one synth of the pool until the block ends."""
        with self._borrow() as synth:
            yield StreamRenderer(self, synth)

    def close(self) -> None:
        """Free every idle synth (the renderer loads new ones if used again)."""
        with self._available:
            for synth in self._idle:
                synth.close()
            self._created -= len(self._idle)
            self._idle.clear()


def seconds_of(audio: np.ndarray, sample_rate: int) -> float:
    """Length of an (n_samples, channels) array in seconds."""
    return audio.shape[0] / sample_rate


def to_pcm16(audio: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Float audio -> int16, scaled so the loudest sample reaches ``peak`` (0..1) of full scale."""
    loudest = float(np.abs(audio).max()) if audio.size else 0.0
    if loudest == 0.0:
        return np.zeros(audio.shape, dtype=np.int16)
    return np.round(audio * (peak * 32767.0 / loudest)).astype(np.int16)


class StreamRenderer:
    """Renders a piece bar by bar while it is being composed, on one synth held for the whole
    stream, so a note that rings across a chunk boundary carries on in the next chunk.

    >>> with renderer.stream() as stream:
    ...     for midi_so_far, bar_end_tick in bars:      # every note starting before bar_end_tick is final
    ...         chunk = stream.feed(midi_so_far, bar_end_tick)
    ...     tail = stream.finish(whole_midi)

    ``feed`` renders up to the sample where ``bar_end_tick`` falls; events before it cannot
    change any more (a later note can only move a note-off that lies after it), and ticks
    before it keep their time whatever tempo comes later. ``finish`` renders the rest, release
    included. The chunks concatenated are the samples :meth:`Renderer.render` gives for the
    whole piece (with reverb off they are equal; with reverb on only its modulation differs).
    """

    def __init__(self, renderer: "Renderer", synth: Synth):
        self.renderer = renderer
        self.synth = synth
        self.now = 0  # samples written so far
        self.started = False

    @property
    def sample_rate(self) -> int:
        return self.renderer.sample_rate

    def feed(self, midi: miditoolkit.MidiFile, until_tick: int) -> np.ndarray:
        """Audio from the last chunk's end up to ``until_tick`` of ``midi`` (the piece so far):
        float32 (n, 2), possibly empty."""
        until = int(round(float(ticks_to_seconds(np.array([until_tick]), midi)[0]) * self.sample_rate))
        return self._render(note_events(midi, self.sample_rate), until)

    def finish(self, midi: miditoolkit.MidiFile) -> np.ndarray:
        """The rest of the piece: up to the last note-off plus the release, in whole blocks (as ``render``)."""
        events = note_events(midi, self.sample_rate)
        total = events.end_sample + int(round(self.renderer.config.release_seconds * self.sample_rate))
        return self._render(events, max(-(-total // FLUID_BLOCK) * FLUID_BLOCK, self.now))

    def _render(self, events: NoteEvents, until: int) -> np.ndarray:
        if not self.started:
            self.synth.reset(events.programs)
            self.started = True
        start = self.now
        out = np.zeros((max(until - start, 0), 2), dtype=np.float32)
        pending = np.flatnonzero((events.sample >= start) & (events.sample < until))
        for i in pending.tolist():
            sample = int(events.sample[i])
            self.synth.write(out, self.now - start, sample - start)
            self.now = max(self.now, sample)
            channel, pitch, velocity = int(events.channel[i]), int(events.pitch[i]), int(events.velocity[i])
            if velocity:
                self.synth.synth.noteon(channel, pitch, velocity)
            else:
                self.synth.synth.noteoff(channel, pitch)
        self.synth.write(out, self.now - start, until - start)
        self.now = max(self.now, until)
        return out
