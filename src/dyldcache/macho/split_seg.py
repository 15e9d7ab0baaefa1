"""LC_SEGMENT_SPLIT_INFO: the split-seg streams (v1 and v2) that let the cache builder move segments.

**v2** (first byte ``DYLD_CACHE_ADJ_V2_FORMAT`` 0x7F; cache-format.md §9, linker-notes §6.2)
lists every reference from one section to another, all in ULEB128::

    0x7F count FromToSection{count}
    FromToSection := from_section to_section count ToOffset{count}
    ToOffset      := to_offset_delta count KindGroup{count}
    KindGroup     := kind count from_offset_delta{count}

to-offsets accumulate within a FromToSection, from-offsets within a kind group (each group
starts again from 0). Section 0 is the mach header, 1..N are the sections numbered across
all segments in load-command order (as nlist ``n_sect``). A 0x00 terminator and zero
padding to 8 bytes follow.

**v1** (anything else) is ``[kind uleb_delta+ 0x00]* 0x00``: for each kind (one byte), the
locations of that kind in __TEXT as deltas. Every group starts again from the start of
__TEXT, i.e. the mach header (dyld's cache builder sets its cursor to the first segment's
content before each kind group), so a decoded v1 offset is an offset from the mach header
(a VM offset; equal to the file offset in __TEXT). Kinds, per dyld's cache builder: 1 32-bit
pointer, 2 64-bit pointer, 3 arm64 ADRP, 4 i386 IMPORT reference (ignored), 5 thumb2 movw,
6 ARM movw, 0x10-0x1F thumb2 movt and 0x20-0x2F ARM movt (low nibble = high bits of the
paired movw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import MachOFormatError
from . import constants as C
from .jump_chains import JumpTable, index_dtype
from .leb128 import uleb_encode_array

#: one v2 reference: the location (from) and what it points to (to), as section-relative offsets
SPLIT_SEG_DTYPE = np.dtype(
    [
        ("kind", "u1"),  # DYLD_CACHE_ADJ_V2_*
        ("from_section", "<u2"),  # section holding the location (0 = mach header)
        ("to_section", "<u2"),  # section holding the target (0 = mach header)
        ("from_offset", "<u8"),  # location - from-section address
        ("to_offset", "<u8"),  # target - to-section address
    ]
)
assert SPLIT_SEG_DTYPE.itemsize == 21

#: one v1 location: its kind and its offset from the mach header (start of __TEXT)
SPLIT_SEG_V1_DTYPE = np.dtype([("kind", "u1"), ("offset", "<u8")])
assert SPLIT_SEG_V1_DTYPE.itemsize == 9

#: the largest v2 kind (DYLD_CACHE_ADJ_V2_THREADED_POINTER_64)
MAX_V2_KIND = C.DYLD_CACHE_ADJ_V2_THREADED_POINTER_64
#: the kinds dyld's cache builder knows in a v1 stream
V1_KINDS = frozenset({1, 2, 3, 4, 5, 6, *range(0x10, 0x30)})

#: the v1 kinds a 64-bit cache build applies: 32-bit (1) and 64-bit (2) values that move with
#: the data, and 4 (an i386 __IMPORT reference, a no-op in dyld's adjustCode)
V1_KINDS_SUPPORTED = frozenset({1, 2, 4})


def unsupported_v1_entry(entries: np.ndarray, text_size: int) -> str | None:
    """Why a cache builder cannot apply a v1 stream, from its first bad entry (a kind it does not
    apply, or a value that does not lie in __TEXT); None when it can."""
    kinds = entries["kind"]
    offsets = entries["offset"]
    bad_kind = ~np.isin(kinds, sorted(V1_KINDS_SUPPORTED))
    # the last offset at which a value of the entry's width still ends inside __TEXT
    last = np.where(kinds == 2, max(text_size - 8, 0), max(text_size - 4, 0)).astype(np.uint64)
    bad = np.flatnonzero(bad_kind | (offsets > last))
    if not len(bad):
        return None
    k = int(bad[0])
    if bad_kind[k]:
        return f"split seg v1 kind {int(kinds[k]):#x} is not supported (only 1, 2 and 4, as x86_64 uses)"
    return f"split seg v1 location {int(offsets[k]):#x} is outside __TEXT"


#: the v2 kinds a 64-bit cache build applies (8 and 10 patch 32-bit ARM movw/movt pairs)
V2_KINDS_SUPPORTED = frozenset(
    {
        C.DYLD_CACHE_ADJ_V2_POINTER_32,
        C.DYLD_CACHE_ADJ_V2_POINTER_64,
        C.DYLD_CACHE_ADJ_V2_DELTA_32,
        C.DYLD_CACHE_ADJ_V2_DELTA_64,
        C.DYLD_CACHE_ADJ_V2_ARM64_ADRP,
        C.DYLD_CACHE_ADJ_V2_ARM64_OFF12,
        C.DYLD_CACHE_ADJ_V2_ARM64_BR26,
        C.DYLD_CACHE_ADJ_V2_ARM_BR24,
        C.DYLD_CACHE_ADJ_V2_THUMB_BR22,
        C.DYLD_CACHE_ADJ_V2_IMAGE_OFF_32,
        C.DYLD_CACHE_ADJ_V2_THREADED_POINTER_64,
    }
)


def unsupported_v2_entry(entries: np.ndarray, section_count: int) -> str | None:
    """Why a 64-bit cache build cannot apply these v2 entries (a kind it does not apply, or a
    section index past the image's ``section_count`` sections), from the first bad one; or None."""
    kinds = entries["kind"]
    bad_kind = ~np.isin(kinds, sorted(V2_KINDS_SUPPORTED))
    bad_section = (entries["from_section"] > section_count) | (entries["to_section"] > section_count)
    bad = np.flatnonzero(bad_kind | bad_section)
    if not len(bad):
        return None
    k = int(bad[0])
    if bad_kind[k]:
        kind = int(kinds[k])
        name = C.SPLIT_SEG_KIND_NAMES.get(kind, str(kind))
        return f"split seg v2 kind {name} is not supported in a 64-bit cache"
    index = max(int(entries["from_section"][k]), int(entries["to_section"][k]))
    return f"split seg v2 entry refers to section {index}, but the image has {section_count} sections"


_U64 = np.uint64


@dataclass(slots=True)
class SplitSegInfo:
    """The decoded LC_SEGMENT_SPLIT_INFO payload."""

    #: 1 or 2
    version: int
    #: v2: SPLIT_SEG_DTYPE in stream order; v1: SPLIT_SEG_V1_DTYPE in stream order
    entries: np.ndarray

    def __len__(self) -> int:
        return len(self.entries)

    def counts_by_kind(self) -> dict[int, int]:
        """Number of entries of each kind present."""
        kinds, counts = np.unique(self.entries["kind"], return_counts=True)
        return {int(k): int(n) for k, n in zip(kinds, counts, strict=True)}


# ---------------------------------------------------------------------------------------------
# decoding


def _ulebs(raw: np.ndarray, path: str, base: int) -> tuple[np.ndarray, np.ndarray]:
    """All ULEB128 numbers of ``raw`` (uint64) and the byte offset where each ends (its last
    byte; the next one starts after it)."""
    if raw.size == 0:
        return np.zeros(0, dtype=_U64), np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size == 0 or ends[-1] != raw.size - 1:
        start = int(ends[-1]) + 1 if ends.size else 0
        raise MachOFormatError(path, base + start, "split seg info: truncated ULEB128 at the end of the data")
    lengths = np.empty_like(ends)
    lengths[0] = ends[0] + 1
    np.subtract(ends[1:], ends[:-1], out=lengths[1:])
    longest = int(lengths.max())
    if longest > 10:
        k = int(np.flatnonzero(lengths > 10)[0])
        raise MachOFormatError(path, base + _start(ends, k), "split seg info: ULEB128 longer than 10 bytes")
    if longest == 10:
        ten = np.flatnonzero(lengths == 10)
        tenth = ten[raw[ends[ten]] > 1]
        if tenth.size:
            raise MachOFormatError(
                path, base + _start(ends, int(tenth[0])), "split seg info: ULEB128 overflows 64 bits"
            )
    # (the last byte of a number is the one below 0x80)
    values = raw[ends].astype(_U64)
    if longest > 1:
        # the last byte of each number is its highest: add the lower ones, from the numbers
        # still long enough (most are one byte, few more than three)
        longer = np.flatnonzero(lengths > 1)
        last, length = ends[longer], lengths[longer]
        for b in range(1, longest):
            if b > 1:
                still = length > b
                longer, last, length = longer[still], last[still], length[still]
            values[longer] = (values[longer] << _U64(7)) | (raw[last - b] & 0x7F)
    return values, ends


def _start(ends: np.ndarray, i: int) -> int:
    """Where the ``i``-th number of a :func:`_ulebs` run starts (``len(ends)``: where the run ends)."""
    return int(ends[i - 1]) + 1 if i else 0


def read_split_seg(data: bytes | memoryview, path: str, base_offset: int = 0) -> SplitSegInfo:
    """Decode LC_SEGMENT_SPLIT_INFO bytes (``base_offset`` = their file offset)."""
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    if raw.size and raw[0] == C.DYLD_CACHE_ADJ_V2_FORMAT:
        return SplitSegInfo(2, _read_v2(raw[1:], path, base_offset + 1))
    return SplitSegInfo(1, _read_v1(raw, path, base_offset))


#: kind groups per ToOffset that the first pass of the v2 decoder follows: ld64 and our linker
#: write one group per kind, so at most MAX_V2_KIND; a stream with more (or with a kind that is
#: not a v2 kind) is decoded a second time without these limits
_KIND_GROUPS_FIRST_PASS = 15
#: pointer-doubling levels kept for the walks (pieces of 2**n records; see jump_chains)
_TO_OFFSET_LEVELS = 5
_KIND_GROUP_LEVELS = 4


@dataclass(slots=True)
class _V2Records:
    """Where the records of a v2 stream start (indexes into its ULEB128 values), in stream order."""

    #: each FromToSection
    sections: np.ndarray
    #: the number of ToOffsets of each FromToSection
    to_counts: np.ndarray
    #: each ToOffset
    to_offsets: np.ndarray
    #: each kind group
    kind_groups: np.ndarray
    #: the value after the last FromToSection
    end: int


def _read_v2(raw: np.ndarray, path: str, base: int) -> np.ndarray:
    values, ends = _ulebs(raw, path, base)
    n = len(values)

    def error(i: int, message: str) -> MachOFormatError:
        at = base + (_start(ends, i) if i < n else raw.size)
        return MachOFormatError(path, at, f"split seg info: {message}")

    if n == 0:
        raise error(0, "missing FromToSection count")
    records = _v2_records(values, error, True) or _v2_records(values, error, False)
    assert records is not None  # the second pass has no limit: it decodes or raises
    to_at, group_at = records.to_offsets, records.kind_groups
    # the FromToSection of every ToOffset, the ToOffset of every kind group
    to_section = np.repeat(np.arange(records.sections.size), records.to_counts)
    kind_counts = values[to_at + 1].astype(np.int64)
    group_to = np.repeat(np.arange(to_at.size), kind_counts)
    first_to = np.cumsum(records.to_counts) - records.to_counts
    to_offset, to_wrapped = _segmented_sums(values[to_at], np.repeat(first_to, records.to_counts))
    kinds = values[group_at]
    bad_kind = np.flatnonzero(kinds > MAX_V2_KIND)
    if bad_kind.size:
        k = int(bad_kind[0])
        raise error(int(group_at[k]), f"bad kind {int(kinds[k])}")
    # a to-offset is 2^64 or more once its sum wrapped anywhere before it in its FromToSection
    # (the first sum of a run never wraps, so the count at the run's first ToOffset is the count before)
    wraps = np.cumsum(to_wrapped)
    big = np.flatnonzero((wraps - wraps[np.repeat(first_to, records.to_counts)])[group_to] > 0)
    if big.size:
        raise error(int(to_at[group_to[big[0]]]), "to-offset overflows 64 bits")
    # what follows the last FromToSection is the 0x00 terminator and zero padding
    rest = np.flatnonzero(values[records.end :])
    if rest.size:
        raise error(records.end + int(rest[0]), "unexpected data after the last entry")

    counts = values[group_at + 1].astype(np.int64)
    total = int(counts.sum())
    out = np.zeros(total, dtype=SPLIT_SEG_DTYPE)
    if total == 0:
        return out
    section_at = records.sections[to_section[group_to]]
    out["kind"] = np.repeat(kinds.astype(np.uint8), counts)
    out["from_section"] = np.repeat(values[section_at].astype(np.uint16), counts)
    out["to_section"] = np.repeat(values[section_at + 1].astype(np.uint16), counts)
    out["to_offset"] = np.repeat(to_offset[group_to], counts)
    # the from-deltas of each kind group, summed from 0 in each group
    group_start = np.cumsum(counts) - counts
    index = np.arange(total) + np.repeat(group_at + 2 - group_start, counts)
    out["from_offset"], wrapped = _segmented_sums(values[index], np.repeat(group_start, counts))
    # deltas are unsigned, so a from-offset that goes down inside its group wrapped past 2^64
    if wrapped.any():
        raise error(int(index[np.flatnonzero(wrapped)[0]]), "from-offset overflows 64 bits")
    return out


def _segmented_sums(deltas: np.ndarray, run_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running sums of uint64 ``deltas`` that start again from 0 at each run (``run_start`` =
    the index where the run of each delta starts), and where a sum wrapped past 2^64 (a sum
    below the one before it in the same run)."""
    sums = np.cumsum(deltas, dtype=_U64)
    if not sums.size:
        return sums, np.zeros(0, dtype=bool)
    before = np.where(run_start > 0, sums[np.maximum(run_start - 1, 0)], _U64(0))
    out = sums - before
    wrapped = np.zeros(sums.size, dtype=bool)
    wrapped[1:] = (out[1:] < out[:-1]) & (run_start[1:] != np.arange(1, sums.size))
    return out, wrapped


class _ErrorAt(Protocol):
    def __call__(self, i: int, message: str) -> MachOFormatError: ...


def _v2_records(values: np.ndarray, error: _ErrorAt, strict: bool) -> _V2Records | None:
    """Find the records of a v2 stream without a Python step per record.

    For every value index, where the next record would start if a kind group (``groups``) or a
    ToOffset (``tos``) started there; node ``n + 1`` means "cannot be read". The FromToSections
    are walked one by one, each following its ToOffsets by pointer doubling. ``strict`` (the
    first pass) also counts as unreadable a kind group whose kind is not a v2 kind and a
    ToOffset with more than _KIND_GROUPS_FIRST_PASS kind groups, which makes the tables cheaper
    to build; None is returned if a walk meets one (the stream is then read again without them).
    Raises the error of the first record a sequential reader could not read.
    """
    n = len(values)
    fail = n + 1
    # node numbers and the sums below stay under 2n + 4
    dtype = index_dtype(2 * n + 4)
    # counts above n never fit; clamping keeps the index arithmetic in range
    small = np.minimum(values, _U64(n)).astype(dtype)
    # kind group at k: kind, count, count from-deltas (past n + 1 = past the end = fail)
    after_two = np.arange(2, n + 1, dtype=dtype)  # for each k below n - 1, k + 2
    groups_next = np.full(n + 2, fail, dtype=dtype)
    body = groups_next[: n - 1]
    np.add(small[1:], after_two, out=body)
    np.minimum(body, fail, out=body)
    if strict:
        # (ld64 writes neither empty kind groups nor empty ToOffsets, nor kind 0)
        groups_next[:n][values - _U64(1) >= _U64(MAX_V2_KIND)] = fail
        groups_next[: n - 1][small[1:] == 0] = fail
    groups = JumpTable(groups_next, _KIND_GROUP_LEVELS)
    # ToOffset at k: to-delta, kind_count, kind_count kind groups
    kind_counts = small[1:]
    # (each kind group takes two values at least, so n // 2 + 1 of them never fit)
    limit = _KIND_GROUPS_FIRST_PASS if strict else n // 2 + 1
    to_next = np.full(n + 2, fail, dtype=dtype)
    body = to_next[: n - 1]
    # most ToOffsets have one kind group: past it for every position, then the others
    one_group = groups_next[2 : n + 1]
    np.copyto(body, one_group, where=kind_counts == 1)
    if not strict:
        np.copyto(body, after_two, where=kind_counts == 0)
    more = np.flatnonzero((kind_counts > 1) & (kind_counts <= limit) & (one_group != fail))
    body[more] = groups.advance(one_group[more], kind_counts[more] - 1)
    # a walk only passes positions where a ToOffset can be read (a quarter of them, in ld64's
    # streams): the doubling is done over those, numbered in order, the others all being ``m``
    readable = np.flatnonzero(to_next != fail)
    m = readable.size
    number = np.full(n + 2, m, dtype=dtype)
    number[readable] = np.arange(m, dtype=dtype)
    tos = JumpTable(np.append(number.take(to_next.take(readable)), m), _TO_OFFSET_LEVELS)

    sections: list[int] = []
    to_counts: list[int] = []
    firsts: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    i = 1
    # every FromToSection takes three values at least, so a larger count ends in truncation
    for _ in range(min(int(values[0]), n)):
        if i + 2 >= n:
            raise error(i, "truncated split seg info")
        from_sect, to_sect, to_count = int(values[i]), int(values[i + 1]), int(values[i + 2])
        if from_sect > 0xFFFF or to_sect > 0xFFFF:
            raise error(
                i if from_sect > 0xFFFF else i + 1, f"section index {max(from_sect, to_sect)} is too large"
            )
        sections.append(i)
        to_counts.append(to_count)
        if to_count == 0:
            i += 3
            continue
        # the first to_count - 1 ToOffsets, to the last one (each readable), then past it
        first = int(number[i + 3])
        last = m
        if first != m:
            piece_firsts, piece_counts, last = tos.walk(first, min(to_count, m + 1) - 1)
        after = int(to_next[readable[last]]) if last != m else fail
        if after == fail:
            if strict:
                return None
            raise _first_unreadable(values, JumpTable(to_next, _TO_OFFSET_LEVELS), groups, i + 3, error)
        firsts += [piece_firsts, np.array([last])]
        counts += [piece_counts, np.ones(1, dtype=np.int64)]
        i = after
    to_at = readable[_sorted_members(tos, firsts, counts, m)]
    group_at = _group_starts(groups, to_at, small[to_at + 1], n)
    return _V2Records(
        np.array(sections, dtype=np.int64), np.array(to_counts, dtype=np.int64), to_at, group_at, i
    )


#: kind groups per ToOffset up to which :func:`_group_starts` steps through them one at a time
_GROUPS_STEPPED = 16


def _group_starts(groups: JumpTable, to_at: np.ndarray, kind_counts: np.ndarray, n: int) -> np.ndarray:
    """The kind groups of the ToOffsets at ``to_at`` (all readable, ``kind_counts`` of each),
    ascending."""
    most = int(kind_counts.max()) if kind_counts.size else 0
    if most <= 1:
        single: np.ndarray = to_at[kind_counts == 1] + 2
        return single
    if most > _GROUPS_STEPPED:
        firsts, counts, _ = groups.pieces(to_at + 2, kind_counts)
        return _sorted_members(groups, [firsts], [counts], n)
    # one step for all ToOffsets that have another group (few have more than two)
    table = groups.level(0)
    mark = np.zeros(n, dtype=bool)
    live = kind_counts > 0
    node, left = to_at[live] + 2, kind_counts[live]
    while node.size:
        mark[node] = True
        live = left > 1
        node, left = table.take(node[live]), left[live] - 1
    return np.flatnonzero(mark)


def _sorted_members(
    table: JumpTable, firsts: list[np.ndarray], counts: list[np.ndarray], n: int
) -> np.ndarray:
    """The nodes of the pieces, ascending (they are distinct records, all below ``n``)."""
    mark = np.zeros(n, dtype=bool)
    if firsts:
        nodes, _ = table.members(np.concatenate(firsts), np.concatenate(counts))
        mark[nodes] = True
    return np.flatnonzero(mark)


def _first_unreadable(
    values: np.ndarray, tos: JumpTable, groups: JumpTable, first: int, error: _ErrorAt
) -> MachOFormatError:
    """The error of the first record a sequential reader cannot read in the ToOffsets from ``first``."""
    n = len(values)
    bad_to = tos.last(first)
    if bad_to + 1 >= n:
        return error(bad_to, "truncated split seg info")
    bad_group = groups.last(bad_to + 2)
    if bad_group + 1 >= n:
        return error(bad_group, "truncated split seg info")
    return error(n, f"{int(values[bad_group + 1])} from-offsets run past the end of the data")


def _read_v1(raw: np.ndarray, path: str, base: int) -> np.ndarray:
    # kinds are single bytes below 0x80, so the whole stream reads as ULEB128 numbers
    values, ends = _ulebs(raw, path, base)
    n = len(values)
    zeros = np.flatnonzero(values == 0)
    kinds: list[int] = []
    firsts: list[int] = []
    counts: list[int] = []
    i = 0
    while i < n:
        kind = int(values[i])
        if kind == 0:
            break
        if kind not in V1_KINDS or raw[_start(ends, i)] != kind:
            raise MachOFormatError(path, base + _start(ends, i), f"split seg info v1: bad kind {kind:#x}")
        z = int(np.searchsorted(zeros, i + 1))
        if z == zeros.size:
            raise MachOFormatError(
                path, base + raw.size, "split seg info v1: kind group runs past the end of the data"
            )
        end = int(zeros[z])
        kinds.append(kind)
        firsts.append(i + 1)
        counts.append(end - i - 1)
        i = end + 1
    rest = np.flatnonzero(values[i:])
    if rest.size:
        raise MachOFormatError(
            path, base + _start(ends, i + int(rest[0])), "split seg info v1: unexpected data after the end"
        )
    cnt = np.array(counts, dtype=np.int64)
    total = int(cnt.sum()) if cnt.size else 0
    out = np.zeros(total, dtype=SPLIT_SEG_V1_DTYPE)
    if total == 0:
        return out
    out["kind"] = np.repeat(np.array(kinds, dtype=np.uint8), cnt)
    group_start = np.cumsum(cnt) - cnt
    index = np.arange(total) - np.repeat(group_start, cnt) + np.repeat(np.array(firsts), cnt)
    sums = np.cumsum(values[index])
    before = np.where(group_start > 0, sums[np.maximum(group_start - 1, 0)], _U64(0))
    out["offset"] = sums - np.repeat(before, cnt)
    return out


# ---------------------------------------------------------------------------------------------
# encoding


def _pad8(raw: bytes) -> bytes:
    return raw + bytes(-len(raw) % 8)


def encode_split_seg_v2(entries: np.ndarray) -> bytes:
    """The LC_SEGMENT_SPLIT_INFO v2 payload for SPLIT_SEG_DTYPE entries, as ld64 lays it out.

    FromToSections by (from, to) ascending; to-offsets ascending, as deltas; kind groups by
    kind ascending; from-offsets ascending, as deltas from 0 in each kind group; duplicates
    kept; a 0x00 terminator, then zero padding to 8 bytes.
    """
    e = np.asarray(entries)
    if e.dtype != SPLIT_SEG_DTYPE:
        e = e.astype(SPLIT_SEG_DTYPE)
    if e.size and ((e["kind"] == 0) | (e["kind"] > MAX_V2_KIND)).any():
        bad = e[np.flatnonzero((e["kind"] == 0) | (e["kind"] > MAX_V2_KIND))[0]]
        raise ValueError(f"split seg kind {int(bad['kind'])} is not 1..{MAX_V2_KIND}")
    e = e[np.lexsort((e["from_offset"], e["kind"], e["to_offset"], e["to_section"], e["from_section"]))]
    n = e.size
    if n == 0:
        # a FromToSection count of 0 (ULEB128 0), then the terminator
        return _pad8(bytes([C.DYLD_CACHE_ADJ_V2_FORMAT, 0, 0]))
    fs, ts = e["from_section"].astype(np.int64), e["to_section"].astype(np.int64)
    to_off, kind, from_off = e["to_offset"], e["kind"], e["from_offset"]
    # where each nesting level starts a new group (a new pair starts every inner level too)
    p_start = np.ones(n, dtype=bool)
    p_start[1:] = (fs[1:] != fs[:-1]) | (ts[1:] != ts[:-1])
    t_start = p_start.copy()
    t_start[1:] |= to_off[1:] != to_off[:-1]
    k_start = t_start.copy()
    k_start[1:] |= kind[1:] != kind[:-1]
    p_id = np.cumsum(p_start) - 1
    t_id = np.cumsum(t_start) - 1
    k_id = np.cumsum(k_start) - 1
    to_count = np.bincount(p_id[t_start], minlength=p_id[-1] + 1)  # ToOffsets per pair
    kind_count = np.bincount(t_id[k_start], minlength=t_id[-1] + 1)  # kind groups per ToOffset
    from_count = np.bincount(k_id)  # from-offsets per kind group
    # deltas: to-offsets against the previous ToOffset of the same pair, from-offsets against
    # the previous entry of the same kind group (both from 0 at the start of their group)
    t_pos = np.flatnonzero(t_start)
    prev_to = np.zeros(t_pos.size, dtype=_U64)
    prev_to[1:] = to_off[t_pos[:-1]]
    prev_to[p_start[t_pos]] = 0
    to_delta = to_off[t_pos] - prev_to
    prev_from = np.zeros(n, dtype=_U64)
    prev_from[1:] = from_off[:-1]
    prev_from[k_start] = 0
    from_delta = from_off - prev_from
    # every entry emits [from to to_count]? [to_delta kind_count]? [kind from_count]? from_delta
    tokens = np.zeros((n, 8), dtype=_U64)
    mask = np.zeros((n, 8), dtype=bool)
    tokens[:, 0], tokens[:, 1] = fs, ts
    tokens[:, 2] = to_count[p_id]
    mask[:, 0:3] = p_start[:, None]
    tokens[t_pos, 3] = to_delta
    tokens[:, 4] = kind_count[t_id]
    mask[:, 3:5] = t_start[:, None]
    tokens[:, 5] = kind
    tokens[:, 6] = from_count[k_id]
    mask[:, 5:7] = k_start[:, None]
    tokens[:, 7] = from_delta
    mask[:, 7] = True
    stream = np.concatenate([np.array([p_id[-1] + 1], dtype=_U64), tokens[mask]])
    return _pad8(bytes([C.DYLD_CACHE_ADJ_V2_FORMAT]) + uleb_encode_array(stream).tobytes() + b"\0")


def encode_split_seg_v1(entries: np.ndarray) -> bytes:
    """The v1 payload for SPLIT_SEG_V1_DTYPE entries (offsets from the mach header).

    One group per kind, kinds ascending, offsets ascending as deltas, each group ended by
    0x00; a final 0x00, then zero padding to 8 bytes. Offsets must be unique and non-zero
    within a kind (a zero delta would end the group).
    """
    e = np.asarray(entries)
    if e.dtype != SPLIT_SEG_V1_DTYPE:
        e = e.astype(SPLIT_SEG_V1_DTYPE)
    bad = np.flatnonzero(~np.isin(e["kind"], sorted(V1_KINDS)))
    if bad.size:
        raise ValueError(f"split seg v1 kind {int(e['kind'][bad[0]]):#x} is not a v1 kind")
    e = e[np.lexsort((e["offset"], e["kind"]))]
    out = bytearray()
    for kind in np.unique(e["kind"]).tolist():
        offsets = e["offset"][e["kind"] == kind]
        deltas = np.diff(offsets, prepend=_U64(0))
        if (deltas == 0).any():
            raise ValueError(
                f"split seg v1 kind {kind:#x}: offset {int(offsets[np.flatnonzero(deltas == 0)[0]]):#x} "
                "is zero or repeated"
            )
        out.append(kind)
        out += uleb_encode_array(deltas).tobytes()
        out.append(0)
    out.append(0)
    return _pad8(bytes(out))
