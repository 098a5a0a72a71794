"""The one place MIDI bytes are read, and plain words for every way that can fail.

:func:`read_midi` opens a path, bytes or an already-parsed file. Before parsing it
checks what the first bytes say (not MIDI at all, a cut-off header, SMPTE timing, no
tracks). If the parser then fails, :func:`diagnose` walks the raw chunks and events
to name the first thing that is wrong: a truncated track, a wrong chunk length, a bad
chunk type, a data byte out of range, running status without a status, a meta event
the parser cannot decode. Every message is shown to people as it is, so each one says
what is wrong and what to do, in words, with no Python exception names.

Offsets in messages count bytes from the start of the file (0-based).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import miditoolkit

MAX_FILE_BYTES = 64 * 1024 * 1024  # a piano MIDI file is rarely over 1 MB; the app caps uploads lower
HEADER_BYTES = 14  # "MThd", a 32-bit length (6), then format, track count and division (16 bits each)

REEXPORT = "re-export it from your DAW or notation program as a Standard MIDI File (type 0 or 1)"
DOWNLOAD_AGAIN = ("download or export the file again and upload the complete file "
                  "(it was probably cut off while saving or copying)")
CHOOSE_MIDI = "choose a Standard MIDI File (.mid or .midi) instead"


class MidiReadError(ValueError):
    """The input is not a readable MIDI file, or it holds no playable notes.

    Its message is meant for people: what is wrong, then what to do."""


# ---------------------------------------------------------------- reading


def read_midi(midi: str | Path | bytes | miditoolkit.MidiFile) -> miditoolkit.MidiFile:
    """Open a MIDI file (path, bytes or parsed), turning every way it can fail into
    :class:`MidiReadError` with a message naming the cause and a remedy."""
    if isinstance(midi, miditoolkit.MidiFile):
        return midi
    data = file_bytes(midi)
    problem = first_bytes_problem(data)
    if problem:
        raise MidiReadError(problem)
    try:
        return miditoolkit.MidiFile(file=io.BytesIO(data))
    except Exception as err:  # mido and miditoolkit raise many types for damaged files
        raise MidiReadError(diagnose(data) or unknown_damage()) from err


def file_bytes(midi: str | Path | bytes) -> bytes:
    """The bytes of a path (refused over :data:`MAX_FILE_BYTES` before reading) or of a bytes-like."""
    if isinstance(midi, (str, Path)):
        path = Path(midi)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise MidiReadError(too_large(size))
            return path.read_bytes()
        except OSError as err:
            raise MidiReadError(f"cannot read {path.name}: {err.strerror or 'the file cannot be opened'}; "
                                "check that the file exists and can be read, then try again") from err
    data = bytes(midi)
    if len(data) > MAX_FILE_BYTES:
        raise MidiReadError(too_large(len(data)))
    return data


def too_large(size: int) -> str:
    """The message for a file of ``size`` bytes over :data:`MAX_FILE_BYTES`."""
    return (f"the file is too large: {size / 2**20:.1f} MB, and at most {MAX_FILE_BYTES // 2**20} MB can be read; "
            "a piano MIDI file is rarely over 1 MB, so check you chose the right file, "
            "or save a shorter excerpt as MIDI and upload that")


def unknown_damage() -> str:
    """The message when the parser fails and :func:`diagnose` finds nothing specific."""
    return f"the MIDI file is damaged in a way this reader cannot pin down; {REEXPORT}"


# ---------------------------------------------------------------- the first bytes


def first_bytes_problem(data: bytes) -> str | None:
    """What is wrong with ``data`` judged by its first bytes (not MIDI, header), or None."""
    if not data:
        return "the file is empty (0 bytes); choose a .mid file with notes in it and upload that"
    if len(data) < 4 and b"MThd".startswith(data):
        return header_problem(data)  # a header cut off inside its first four bytes
    if data[:4] != b"MThd":
        return not_midi(data)
    return header_problem(data)


# (magic bytes at offset 0, what the file is, what to do)
SIGNATURES = (
    (b"ID3", "it is MP3 audio (a recording, not notes)",
     "cwcompose reads notes: export MIDI from your DAW, or transcribe the audio to MIDI first and upload that"),
    (b"OggS", "it is Ogg audio (a recording, not notes)",
     "cwcompose reads notes: export MIDI from your DAW, or transcribe the audio to MIDI first and upload that"),
    (b"fLaC", "it is FLAC audio (a recording, not notes)",
     "cwcompose reads notes: export MIDI from your DAW, or transcribe the audio to MIDI first and upload that"),
    (b"%PDF", "it is a PDF document (sheet music as a picture, not notes)",
     "open the score in a notation program (e.g. MuseScore) and export it as MIDI, then upload that"),
    (b"\x89PNG", "it is a PNG image", CHOOSE_MIDI),
    (b"\xff\xd8\xff", "it is a JPEG image", CHOOSE_MIDI),
    (b"GIF8", "it is a GIF image", CHOOSE_MIDI),
    (b"PK\x03\x04", "it is a ZIP archive (MuseScore .mscz and compressed MusicXML .mxl files are ZIPs too)",
     "extract the .mid file from it and upload that, or export MIDI from your notation program"),
    (b"\x1f\x8b", "it is gzip-compressed data", "decompress it and upload the .mid file inside"),
)
AUDIO_REMEDY = SIGNATURES[0][2]


def not_midi(data: bytes) -> str:
    """The message for data that does not start with ``MThd``: what it looks like, what to do."""
    what, remedy = looks_like(data)
    return f"not a MIDI file: {what}; {remedy}"


def looks_like(data: bytes) -> tuple[str, str]:
    """(what the non-MIDI ``data`` appears to be, what to do about it), judged by its first bytes."""
    if data[:4] == b"RIFF":
        return riff_kind(data[8:12])
    for magic, what, remedy in SIGNATURES:
        if data.startswith(magic):
            return what, remedy
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06:
        return "it looks like MP3 audio (a recording, not notes)", AUDIO_REMEDY
    offset = data.find(b"MThd", 1, 1025)
    if offset > 0:
        extra = "1 extra byte comes" if offset == 1 else f"{offset} extra bytes come"
        return (f"the MIDI header ('MThd') starts at byte {offset}, not at the start: {extra} before it",
                f"remove them, or {REEXPORT}")
    text = as_text(data[:2048])
    if text is not None:
        return text_kind(text)
    return (f"it does not start with the MIDI header 'MThd' (it starts with {hex_bytes(data[:4])})",
            CHOOSE_MIDI)


def riff_kind(form: bytes) -> tuple[str, str]:
    """(what a RIFF container of type ``form`` is, what to do)."""
    if form == b"WAVE":
        return "it is a WAV audio file (a recording, not notes)", AUDIO_REMEDY
    if form == b"RMID":
        return ("it is a RIFF MIDI (.rmi) file: MIDI wrapped in a RIFF container",
                "open it in a MIDI editor and save it as a plain Standard MIDI File (.mid), then upload that")
    return f"it is a RIFF container of type {printable(form)}, not MIDI", CHOOSE_MIDI


def as_text(data: bytes) -> str | None:
    """``data`` decoded as UTF-8 text if it reads as text (no control bytes but tab and
    newlines; the last character may be cut), else None."""
    for cut in range(4):
        try:
            text = data[:len(data) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    return None if any(ord(c) < 32 and c not in "\t\r\n" for c in text) else text


def text_kind(text: str) -> tuple[str, str]:
    """(what a text file is, what to do), from its first characters."""
    head = text.lstrip("\ufeff \t\r\n").lower()
    if "<score-partwise" in head or "<score-timewise" in head:
        return ("it is MusicXML (a score written as text)",
                "export it as MIDI from your notation program (e.g. MuseScore: File > Export > MIDI) and upload that")
    if head.startswith(("<!doctype html", "<html")):
        return ("it is a web page (HTML): a download link probably saved the page instead of the file",
                "download the MIDI file itself (the site's download or raw link) and upload that")
    return "it is a text file", f"a text description of notes cannot be read; {CHOOSE_MIDI}"


def printable(tag: bytes) -> str:
    """A 4-byte chunk tag as people can read it: quoted if it is plain ASCII, else in hex."""
    if tag and all(32 <= b < 127 for b in tag):
        return repr(tag.decode("ascii"))
    return f"the bytes {hex_bytes(tag)}"


def hex_bytes(data: bytes) -> str:
    return " ".join(f"0x{b:02X}" for b in data)


def header_problem(data: bytes) -> str | None:
    """What is wrong with the ``MThd`` header chunk of ``data`` (which starts with ``MThd``,
    or with its first letters when cut short), or None."""
    if len(data) < HEADER_BYTES:
        return (f"the MIDI header is truncated: the file ends after {len(data)} of the header's "
                f"{HEADER_BYTES} bytes; {DOWNLOAD_AGAIN}")
    length, _, ntracks, division = struct.unpack(">IHHH", data[4:HEADER_BYTES])
    if length < 6:
        return (f"the MIDI header's chunk length says {length} bytes, but a header holds at least 6 "
                f"(a wrong chunk length); {REEXPORT}")
    if 8 + length > len(data):
        return (f"the MIDI header's chunk length says {length} bytes, but only {len(data) - 8} follow "
                f"(a wrong chunk length); {REEXPORT}")
    if division & 0x8000:
        fps, ticks = 256 - (division >> 8), division & 0xFF
        return (f"the file times its events in SMPTE frames ({fps} frames per second, {ticks} ticks per frame) "
                "instead of beats, and SMPTE timing is not supported; re-export it from your DAW or notation "
                "program with musical timing (ticks per beat, also called PPQ) as a Standard MIDI File")
    if division == 0:
        return f"the MIDI header declares 0 ticks per beat, so no event has a time; {REEXPORT}"
    if ntracks == 0:
        return f"the MIDI header declares no tracks, so there are no notes to read; {REEXPORT}"
    if ntracks > 0x7FFF:
        return (f"the MIDI header declares {ntracks} tracks, more than the 32767 a MIDI file can hold "
                f"(a damaged header); {REEXPORT}")
    return None


# ---------------------------------------------------------------- after a failed parse: the chunks


def diagnose(data: bytes) -> str | None:
    """The first structural problem of a MIDI file whose header is fine, in words, or None.

    Walks the header's number of track chunks as the parser does: each must be an
    ``MTrk`` chunk whose length fits in the file, holding well-formed events."""
    length, _, ntracks, _ = struct.unpack(">IHHH", data[4:HEADER_BYTES])
    offset, empty = 8 + length, 0
    for number in range(1, ntracks + 1):
        problem = chunk_header_problem(data, offset, number, ntracks)
        if problem:
            return problem
        size = struct.unpack(">I", data[offset + 4: offset + 8])[0]
        start, end = offset + 8, offset + 8 + size
        problem = events_problem(data[start:end], number, start) or chunk_length_problem(data, start, end, number)
        if problem:
            return problem
        empty += size == 0
        offset = end
    if empty == ntracks:
        return ("the MIDI file has no notes: its tracks are empty (0 bytes each); "
                "check that the part with notes was included when you exported it, and upload that")
    return None


def chunk_header_problem(data: bytes, offset: int, number: int, ntracks: int) -> str | None:
    """What is wrong with the 8-byte chunk header of track ``number`` at ``offset``, or None."""
    left = len(data) - offset
    if left == 0 and number == 1:
        return (f"the MIDI file ends right after its header: there is no track data "
                f"(the header promises {ntracks} track{'s' * (ntracks > 1)}); {DOWNLOAD_AGAIN}")
    if left == 0:
        return (f"the MIDI header declares {ntracks} tracks, but the file ends after track {number - 1}: "
                f"it is truncated; {DOWNLOAD_AGAIN}")
    if left < 8:
        return (f"the file is truncated: it ends {left} bytes into the 8-byte chunk header of track {number} "
                f"(byte {offset}); {DOWNLOAD_AGAIN}")
    tag, size = struct.unpack(">4sI", data[offset: offset + 8])
    if tag != b"MTrk":
        found = f"a chunk of unknown type {printable(tag)}" if printable(tag)[0] == "'" else printable(tag)
        return (f"the MIDI file has a bad chunk type: where track {number} should start (byte {offset}) "
                f"it holds {found} instead of a track ('MTrk'); {REEXPORT}")
    if size > left - 8:
        return (f"track {number} is truncated: its chunk length says {size} bytes, but only {left - 8} are left "
                f"in the file; {DOWNLOAD_AGAIN}")
    return None


def chunk_length_problem(data: bytes, start: int, end: int, number: int) -> str | None:
    """A track chunk (``data[start:end]``) whose length is too short: its events lack the
    end-of-track marker and what follows is neither the end of the file nor a chunk."""
    if data[start:end].endswith(b"\xff\x2f\x00") or end == len(data):
        return None
    tag = data[end: end + 4]
    if len(tag) == 4 and all(65 <= b <= 90 or 97 <= b <= 122 for b in tag):
        return None  # a chunk follows: the length fits
    return (f"track {number} has a wrong chunk length: it says {end - start} bytes, but the track's events "
            f"go on past byte {end} (no end-of-track marker before it, and no chunk after it); {REEXPORT}")


# ---------------------------------------------------------------- after a failed parse: the events


CHANNEL_EVENTS = {0x80: ("note-off", 2), 0x90: ("note-on", 2), 0xA0: ("key pressure", 2),
                  0xB0: ("controller", 2), 0xC0: ("program change", 1), 0xD0: ("channel pressure", 1),
                  0xE0: ("pitch bend", 2)}  # status high nibble -> (name, data bytes)
SYSTEM_EVENTS = {0xF1: ("time code", 1), 0xF2: ("song position", 2), 0xF3: ("song select", 1),
                 0xF6: ("tune request", 0), 0xF8: ("clock", 0), 0xFA: ("start", 0), 0xFB: ("continue", 0),
                 0xFC: ("stop", 0), 0xFE: ("active sensing", 0)}


class _Stop(Exception):
    """Internal: the event walk found a problem (its message is the problem, in words)."""


def events_problem(track: bytes, number: int, base: int) -> str | None:
    """The first malformed event in the payload ``track`` of track ``number`` (which starts
    at byte ``base`` of the file), in words, or None when every event is well-formed."""
    walk = _EventWalk(track, number, base)
    try:
        walk.run()
    except _Stop as stop:
        return str(stop)
    return None


class _EventWalk:
    """Reads one track's events the way the parser does, stopping at the first problem."""

    def __init__(self, track: bytes, number: int, base: int):
        self.track, self.number, self.base, self.at = track, number, base, 0

    def fail(self, what: str, remedy: str = REEXPORT) -> None:
        raise _Stop(f"track {self.number} is damaged: {what}; {remedy}")

    def byte(self, event_start: int) -> int:
        if self.at >= len(self.track):
            self.fail(f"the event at byte {self.base + event_start} runs past the end of the track: the track's "
                      "chunk length is wrong, or the track was cut short")
        self.at += 1
        return self.track[self.at - 1]

    def vlq(self, event_start: int) -> int:
        """A variable-length quantity (7 bits a byte, high bit = more follows)."""
        value = 0
        while True:
            b = self.byte(event_start)
            value = (value << 7) | (b & 0x7F)
            if b < 0x80:
                return value

    def run(self) -> None:
        last_status = None
        while self.at < len(self.track):
            start = self.at
            self.vlq(start)
            status = self.byte(start)
            if status < 0x80:
                if last_status is None:
                    self.fail(f"at byte {self.base + self.at - 1} a data byte (0x{status:02X}) comes where an event "
                              "should start, with no earlier status byte to repeat (running status without a status)")
                self.at -= 1
                status = last_status
            elif status != 0xFF:
                last_status = status
            if status == 0xFF:
                self.meta(start)
            elif status in (0xF0, 0xF7):
                self.take(self.vlq(start), start, "system-exclusive")
            else:
                self.message(status, start)

    def take(self, length: int, start: int, name: str) -> bytes:
        left = len(self.track) - self.at
        if length > left:
            self.fail(f"a {name} event at byte {self.base + start} says it holds {length} bytes, but only {left} "
                      "bytes of the track are left, so it runs past the end of the track")
        self.at += length
        return self.track[self.at - length: self.at]

    def message(self, status: int, start: int) -> None:
        name, size = CHANNEL_EVENTS.get(status & 0xF0) if status < 0xF0 else SYSTEM_EVENTS.get(status, (None, 0))
        if name is None:
            self.fail(f"at byte {self.base + self.at - 1} there is an undefined status byte 0x{status:02X}")
        for _ in range(size):
            value = self.byte(start)
            if value > 127:
                self.fail(f"a {name} event at byte {self.base + start} has a data byte out of range "
                          f"(0x{value:02X} = {value}; data bytes go from 0 to 127)")

    def meta(self, start: int) -> None:
        kind = self.byte(start)
        data = self.take(self.vlq(start), start, "meta")
        problem = meta_problem(kind, data)
        if problem:
            self.fail(f"{problem} (at byte {self.base + start})",
                      f"delete that event in your MIDI editor and save again, or {REEXPORT}")


META_MIN_BYTES = {0x20: ("channel prefix", 1), 0x51: ("tempo", 3), 0x54: ("SMPTE offset", 5),
                  0x58: ("time signature", 4), 0x59: ("key signature", 2)}  # meta type -> (name, bytes needed)


def meta_problem(kind: int, data: bytes) -> str | None:
    """What makes a meta event of type ``kind`` with payload ``data`` undecodable, or None."""
    if kind == 0x00 and len(data) == 1:
        return "a sequence-number event is 1 byte long, but it needs 0 or 2"
    name, needed = META_MIN_BYTES.get(kind, (None, 0))
    if name is None:
        return None
    if len(data) < needed:
        return f"a {name} event is {len(data)} byte{'s' * (len(data) != 1)} long, but it needs {needed}"
    if kind == 0x51 and int.from_bytes(data[:3], "big") == 0:
        return "a tempo event says 0 microseconds per beat, an infinitely fast tempo"
    if kind == 0x54 and data[0] >> 5 > 3:
        return f"an SMPTE offset event names frame-rate code {data[0] >> 5}, but only 0-3 exist"
    if kind == 0x58 and data[0] == 0:
        return "a time signature says 0 beats a bar"
    if kind == 0x59:
        sharps = data[0] - 256 if data[0] > 127 else data[0]
        if not -7 <= sharps <= 7:
            return f"a key signature says {abs(sharps)} {'sharps' if sharps > 0 else 'flats'}, but a key has at most 7"
        if data[1] > 1:
            return f"a key signature names mode {data[1]}, but only 0 (major) and 1 (minor) exist"
    return None


# ---------------------------------------------------------------- after a good parse: the notes


NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(pitch: int) -> str:
    """A MIDI pitch as a note name with its octave (60 -> C4, 21 -> A0)."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def no_piano_notes(midi: miditoolkit.MidiFile, pitch_min: int, pitch_max: int) -> str:
    """Why a parsed file has no usable notes between MIDI pitches ``pitch_min`` and ``pitch_max``
    (drums are dropped), and what to do."""
    pitched = [n.pitch for inst in midi.instruments if not inst.is_drum for n in inst.notes]
    drums = sum(len(inst.notes) for inst in midi.instruments if inst.is_drum)
    if pitched:
        also = f", and its {drums} drum notes are dropped" if drums else ""
        keys = f"MIDI {pitch_min}-{pitch_max}, {note_name(pitch_min)} to {note_name(pitch_max)}"
        return (f"the MIDI file has no notes on the {pitch_max - pitch_min + 1} piano keys: its {len(pitched)} "
                f"pitched notes lie between MIDI {min(pitched)} and {max(pitched)}, outside the piano range "
                f"({keys}){also}; transpose the part into the piano range in your editor and export it again")
    if drums:
        return (f"the MIDI file has only drum notes ({drums} on MIDI channel 10), and drums are dropped; "
                "upload a file with a pitched part such as piano, or move the part off channel 10 "
                "in your editor and export it again")
    return ("the MIDI file has no notes (only tempo, controller or other non-note events, or notes that never "
            "end); choose a file with a piano part, or check that the part with notes was included when you "
            "exported it")
