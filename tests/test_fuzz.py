"""Mutation fuzzing of real POP909 files through the tokenizer and the primer cutter.

Byte flips, truncations, deletions, inserted bytes, header-field rewrites and chunk
splices between songs; whatever comes out, the only exception allowed is
MidiReadError, and its message must be fit for a person: no exception class names,
no traceback, and something to do about it. Derandomized with a fixed example budget
(about 20 s on 2 cores), so CI runs the same inputs every time.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwcompose.generation import primer_words
from cwcompose.tokenizer import FIELDS, CPTokenizer, MidiReadError
from odd_midi import message_faults

SONGS = ("001", "098", "318")  # 11.5 KB, 1.5 KB and 6.3 KB: real files, quick to encode
FUZZ = settings(max_examples=1200, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TOKENIZER = CPTokenizer()


@pytest.fixture(scope="module")
def songs(pop909: Path) -> dict[str, bytes]:
    return {song: (pop909 / song / f"{song}.mid").read_bytes() for song in SONGS}


def chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every chunk (header and tracks) that fits in ``data``."""
    spans, offset = [], 0
    while offset + 8 <= len(data):
        end = offset + 8 + struct.unpack(">I", data[offset + 4: offset + 8])[0]
        spans.append((offset, min(end, len(data))))
        offset = end
    return spans


# ---------------------------------------------------------------- mutations


HEADER = 14  # bytes of the MThd chunk; set_header_field mutates those on purpose


def past_header(data: bytes, at: int, end: int = 0) -> int:
    """``at`` folded into the bytes after the header (``end=1``: the end of the data counts too)."""
    room = len(data) - HEADER + end
    return HEADER + at % room if room > 0 else len(data)


def flip(data: bytes, at: int, mask: int) -> bytes:
    at = past_header(data, at)
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1:] if at < len(data) else data


def truncate(data: bytes, at: int) -> bytes:
    return data[: at % (len(data) + 1)]


def insert(data: bytes, at: int, extra: bytes) -> bytes:
    at = past_header(data, at, end=1)
    return data[:at] + extra + data[at:]


def delete(data: bytes, at: int, length: int) -> bytes:
    at = past_header(data, at, end=1)
    return data[:at] + data[at + length:]


def set_header_field(data: bytes, field: int, value: int) -> bytes:
    """Rewrite the header's format (0), track count (1) or division (2) with a 16-bit value."""
    offset = 8 + 2 * field
    if len(data) < offset + 2:
        return data
    return data[:offset] + struct.pack(">H", value) + data[offset + 2:]


def splice(data: bytes, donor: bytes, take: int, replace: int) -> bytes:
    """Put chunk ``take`` of ``donor`` in place of chunk ``replace`` of ``data`` (indices wrap)."""
    ours, theirs = chunks(data), chunks(donor)
    if not ours or not theirs:
        return data
    start, end = ours[replace % len(ours)]
    d_start, d_end = theirs[take % len(theirs)]
    return data[:start] + donor[d_start:d_end] + data[end:]


positions = st.integers(0, 2**20)
mutation = st.one_of(
    st.tuples(st.just(flip), positions, st.integers(1, 255)),
    st.tuples(st.just(truncate), positions),
    st.tuples(st.just(insert), positions, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just(delete), positions, st.integers(1, 64)),
    st.tuples(st.just(set_header_field), st.integers(0, 2),
              st.sampled_from([0, 1, 2, 3, 96, 1000, 0x7FFF, 0x8000, 0xE250, 0xFFFF])),
    st.tuples(st.just(splice), st.sampled_from(SONGS), st.integers(0, 20), st.integers(0, 20)),  # a donor song
)
recipes = st.tuples(st.sampled_from(SONGS), st.lists(mutation, min_size=1, max_size=4))


def mutate(songs: dict[str, bytes], recipe) -> bytes:
    """A POP909 file after a recipe's mutations (a donor song's name becomes its bytes)."""
    song, steps = recipe
    data = songs[song]
    for operation, *args in steps:
        if operation is splice:
            args[0] = songs[args[0]]
        data = operation(data, *args) if data else data
    return data


# ---------------------------------------------------------------- properties


def check_words(words: np.ndarray) -> None:
    assert words.dtype == np.int64 and words.ndim == 2 and words.shape[1] == len(FIELDS)
    assert (words >= 0).all() and all((words[:, i] < TOKENIZER.vocab_sizes[f]).all() for i, f in enumerate(FIELDS))


def test_the_unmutated_songs_encode(songs):
    for data in songs.values():
        check_words(TOKENIZER.encode(data))


def test_mutations_change_the_bytes(songs):
    """The fuzzer is not a no-op: each kind of mutation changes a real file."""
    data, donor = songs[SONGS[0]], songs[SONGS[1]]
    assert {flip(data, 100, 1), truncate(data, 100), insert(data, 100, b"x"), delete(data, 100, 3),
            set_header_field(data, 2, 96), splice(data, donor, 1, 1)}.isdisjoint({data})


@FUZZ
@given(recipe=recipes, keep_bars=st.integers(1, 32))
def test_mutated_pop909_files_read_or_raise_midi_read_error(songs, recipe, keep_bars: int):
    data = mutate(songs, recipe)
    try:
        words = primer_words(TOKENIZER, data, keep_bars)
    except MidiReadError as err:
        assert str(err), "a MidiReadError always says what is wrong"
        assert not message_faults(str(err)), f"{message_faults(str(err))}: {err}"
        return
    check_words(words)
    check_words(TOKENIZER.encode(data))

