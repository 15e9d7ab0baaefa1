"""The split seg v2 decoder against a reader written here from the format, one record at a time.

The reference follows cache-format.md §9 / linker-notes §6.2 literally::

    0x7F count FromToSection{count}
    FromToSection := from_section to_section count ToOffset{count}
    ToOffset      := to_offset_delta count KindGroup{count}
    KindGroup     := kind count from_offset_delta{count}

and names the first problem a sequential reader meets. Streams are drawn by hypothesis: valid
ones (empty sections and to-offsets, duplicate kinds, more kind groups than ld64 ever writes,
long runs) and the same streams cut, overwritten or extended. Both must give the same entries, or
the same error (message and offset).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyldcache.errors import MachOFormatError
from dyldcache.macho.split_seg import SPLIT_SEG_DTYPE, read_split_seg

MAX_KIND = 13  # DYLD_CACHE_ADJ_V2_THREADED_POINTER_64
BASE = 0x4000  # file offset of the payload


class RefError(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(offset, message)
        self.offset, self.message = offset, message


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def reference(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(kind, from_section, to_section, from_offset, to_offset) of every entry, or RefError."""
    body = data[1:]
    values: list[int] = []
    starts: list[int] = []
    pos = 0
    problems: list[tuple[int, int, str]] = []  # (order, offset, message) of the ULEB checks
    while pos < len(body):
        start, value, shift = pos, 0, 0
        while pos < len(body) and body[pos] & 0x80:
            value |= (body[pos] & 0x7F) << shift
            shift, pos = shift + 7, pos + 1
        if pos == len(body):
            raise RefError(BASE + 1 + start, "split seg info: truncated ULEB128 at the end of the data")
        value |= body[pos] << shift
        pos += 1
        if pos - start > 10:
            problems.append((0, start, "split seg info: ULEB128 longer than 10 bytes"))
        elif value >= 1 << 64:
            problems.append((1, start, "split seg info: ULEB128 overflows 64 bits"))
        values.append(value)
        starts.append(start)
    if problems:
        # the decoder checks every number's length first, then every number's value
        _, start, message = min(problems)
        raise RefError(BASE + 1 + start, message)
    n = len(values)

    def fail(i: int, message: str) -> RefError:
        return RefError(BASE + 1 + (starts[i] if i < n else len(body)), "split seg info: " + message)

    if n == 0:
        raise fail(0, "missing FromToSection count")
    groups = []  # (position, kind, from, to, to_offset, position of the to-delta, from-deltas)
    i = 1
    for _ in range(values[0]):
        if i + 2 >= n:
            raise fail(i, "truncated split seg info")
        from_sect, to_sect, to_count = values[i : i + 3]
        if from_sect > 0xFFFF or to_sect > 0xFFFF:
            raise fail(
                i if from_sect > 0xFFFF else i + 1, f"section index {max(from_sect, to_sect)} is too large"
            )
        i += 3
        to_offset = 0
        for _ in range(to_count):
            if i + 1 >= n:
                raise fail(i, "truncated split seg info")
            to_offset += values[i]
            to_at, kind_count = i, values[i + 1]
            i += 2
            for _ in range(kind_count):
                if i + 1 >= n:
                    raise fail(i, "truncated split seg info")
                kind, count = values[i], values[i + 1]
                if i + 2 + count > n:
                    raise fail(n, f"{count} from-offsets run past the end of the data")
                groups.append((i, kind, from_sect, to_sect, to_offset, to_at, values[i + 2 : i + 2 + count]))
                i += 2 + count
    for at, kind, *_ in groups:
        if kind > MAX_KIND:
            raise fail(at, f"bad kind {kind}")
    for _, _, _, _, to_offset, to_at, _ in groups:
        if to_offset >= 1 << 64:
            raise fail(to_at, "to-offset overflows 64 bits")
    for k in range(i, n):
        if values[k]:
            raise fail(k, "unexpected data after the last entry")
    rows = []
    for at, kind, from_sect, to_sect, to_offset, _, deltas in groups:
        from_offset = 0
        for d, delta in enumerate(deltas):
            from_offset += delta
            if from_offset >= 1 << 64:
                raise fail(at + 2 + d, "from-offset overflows 64 bits")
            rows.append((kind, from_sect, to_sect, from_offset, to_offset))
    return rows


def _decoded(data: bytes) -> list[tuple[int, ...]] | tuple[int | None, str]:
    try:
        entries = read_split_seg(data, "stream", BASE).entries
    except MachOFormatError as exc:
        return exc.offset, exc.message
    assert entries.dtype == SPLIT_SEG_DTYPE
    return [tuple(int(x) for x in row) for row in entries.tolist()]


def _expected(data: bytes) -> list[tuple[int, ...]] | tuple[int | None, str]:
    try:
        return [tuple(r) for r in reference(data)]
    except RefError as exc:
        return exc.offset, exc.message


def _check(data: bytes) -> None:
    assert _decoded(data) == _expected(data)


# ---------------------------------------------------------------------------------------------
# streams

_DELTAS = st.sampled_from([0, 1, 4, 8, 0x10, 0x4000]) | st.integers(0, (1 << 64) - 1)
_SECTIONS = st.integers(0, 8) | st.integers(0, 0x1_0000)
_KINDS = st.integers(1, MAX_KIND) | st.integers(0, 16)
_GROUP = st.tuples(_KINDS, st.lists(_DELTAS, max_size=5))
# mostly one kind group per to-offset (what linkers write), sometimes none or more than 15
_TO = st.tuples(
    _DELTAS,
    st.lists(_GROUP, min_size=1, max_size=1)
    | st.lists(_GROUP, max_size=3)
    | st.lists(_GROUP, min_size=16, max_size=18),
)
_SECTION = st.tuples(
    _SECTIONS, _SECTIONS, st.lists(_TO, max_size=5) | st.lists(_TO, min_size=33, max_size=36)
)


def _encode(
    sections: list[tuple[int, int, list[tuple[int, list[tuple[int, list[int]]]]]]], pad: int
) -> bytes:
    out = bytearray([0x7F]) + _uleb(len(sections))
    for from_sect, to_sect, tos in sections:
        out += _uleb(from_sect) + _uleb(to_sect) + _uleb(len(tos))
        for delta, groups in tos:
            out += _uleb(delta) + _uleb(len(groups))
            for kind, deltas in groups:
                out += _uleb(kind) + _uleb(len(deltas)) + b"".join(_uleb(d) for d in deltas)
    return bytes(out) + b"\0" * pad


_STREAMS = st.builds(_encode, st.lists(_SECTION, max_size=3), st.integers(0, 8))


@settings(max_examples=80, deadline=None)
@given(_STREAMS)
def test_streams_decode_like_the_reference(data: bytes) -> None:
    _check(data)


@settings(max_examples=120, deadline=None)
@given(_STREAMS, st.data())
def test_damaged_streams_fail_like_the_reference(data: bytes, draw: st.DataObject) -> None:
    raw = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        where = draw.draw(st.integers(1, len(raw)))
        how = draw.draw(st.sampled_from(["cut", "set", "insert", "append"]))
        if how == "cut":
            del raw[where:]
        elif how == "set" and where < len(raw):
            raw[where] = draw.draw(st.integers(0, 255))
        elif how == "insert":
            raw[where:where] = draw.draw(st.binary(min_size=1, max_size=4))
        else:
            raw += draw.draw(st.binary(min_size=1, max_size=4))
    _check(bytes(raw))


@pytest.mark.parametrize("seed", range(4))
def test_long_streams(seed: int) -> None:
    """Thousands of to-offsets in one FromToSection (the walk is cut into pieces), and the same
    stream cut at random places."""
    rng = random.Random(seed)
    tos = [
        (
            rng.choice([4, 8, 0x100]),
            [(rng.randint(1, MAX_KIND), [rng.randint(0, 3000)])] * rng.choice([1, 1, 1, 2]),
        )
        for _ in range(rng.randint(1000, 3000))
    ]
    data = _encode([(1, 2, tos[:7]), (2, 5, tos), (3, 4, tos[:70])], 3)
    decoded = _decoded(data)
    assert isinstance(decoded, list) and len(decoded) > 1000
    assert decoded == _expected(data)
    for cut in rng.sample(range(1, len(data)), 20):
        _check(data[:cut])
    many = _encode([(1, 2, [(8, [(2, [4, 4])] * 40)] * 50)], 0)  # 40 kind groups per to-offset
    assert np.array_equal(np.array(_decoded(many)), np.array(_expected(many)))
    _check(many[:-5])
