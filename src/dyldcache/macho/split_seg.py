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

import numpy as np

from ..errors import MachOFormatError
from . import constants as C

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
    """All ULEB128 numbers of ``raw`` (uint64) and the byte offset where each starts."""
    if raw.size == 0:
        return np.zeros(0, dtype=_U64), np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size == 0 or ends[-1] != raw.size - 1:
        start = int(ends[-1]) + 1 if ends.size else 0
        raise MachOFormatError(path, base + start, "split seg info: truncated ULEB128 at the end of the data")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10:
        k = int(np.flatnonzero(lengths > 10)[0])
        raise MachOFormatError(path, base + int(starts[k]), "split seg info: ULEB128 longer than 10 bytes")
    tenth = np.flatnonzero((lengths == 10) & (raw[starts + 9 * (lengths == 10)] > 1))
    if tenth.size:
        raise MachOFormatError(
            path, base + int(starts[tenth[0]]), "split seg info: ULEB128 overflows 64 bits"
        )
    values = np.zeros(ends.size, dtype=_U64)
    for b in range(int(lengths.max())):
        has = lengths > b
        values[has] |= (raw[starts[has] + b].astype(_U64) & _U64(0x7F)) << _U64(7 * b)
    return values, starts


def read_split_seg(data: bytes | memoryview, path: str, base_offset: int = 0) -> SplitSegInfo:
    """Decode LC_SEGMENT_SPLIT_INFO bytes (``base_offset`` = their file offset)."""
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    if raw.size and raw[0] == C.DYLD_CACHE_ADJ_V2_FORMAT:
        return SplitSegInfo(2, _read_v2(raw[1:], path, base_offset + 1))
    return SplitSegInfo(1, _read_v1(raw, path, base_offset))


def _read_v2(raw: np.ndarray, path: str, base: int) -> np.ndarray:
    values, starts = _ulebs(raw, path, base)
    vals = values.tolist()
    n = len(vals)

    def error(i: int, message: str) -> MachOFormatError:
        at = base + (int(starts[i]) if i < n else raw.size)
        return MachOFormatError(path, at, f"split seg info: {message}")

    # walk the headers in Python (one step per group, locals only: this is the hot loop);
    # each run of from-deltas is only recorded as (first value index, count) and summed below
    # with numpy. Bounds and kinds are checked once the walk is done.
    groups: list[tuple[int, int, int, int, int, int]] = []
    add = groups.append
    if n == 0:
        raise error(0, "missing FromToSection count")
    i = 1
    try:
        for _ in range(vals[0]):
            from_sect, to_sect, to_count = vals[i], vals[i + 1], vals[i + 2]
            if from_sect > 0xFFFF or to_sect > 0xFFFF:
                raise error(
                    i if from_sect > 0xFFFF else i + 1,
                    f"section index {max(from_sect, to_sect)} is too large",
                )
            i += 3
            to_offset = 0
            for _ in range(to_count):
                to_offset += vals[i]
                kind_count = vals[i + 1]
                i += 2
                for _ in range(kind_count):
                    count = vals[i + 1]
                    add((vals[i], from_sect, to_sect, to_offset, i + 2, count))
                    i += 2 + count
                    if i > n:
                        raise error(n, f"{count} from-offsets run past the end of the data")
    except IndexError:
        raise error(i, "truncated split seg info") from None
    if i > n:
        raise error(n, "truncated split seg info")
    if groups:
        kinds_seen = [g[0] for g in groups]
        bad_kind = next((k for k, g in enumerate(groups) if g[0] > MAX_V2_KIND), None)
        if bad_kind is not None:
            raise error(groups[bad_kind][4] - 2, f"bad kind {kinds_seen[bad_kind]}")
        big = next((g for g in groups if g[3] >= 1 << 64), None)
        if big is not None:
            raise error(big[4] - 3, "to-offset overflows 64 bits")
    group_kind = [g[0] for g in groups]
    group_from = [g[1] for g in groups]
    group_to = [g[2] for g in groups]
    group_to_offset = [g[3] for g in groups]
    group_first = [g[4] for g in groups]
    group_count = [g[5] for g in groups]
    # what follows the last FromToSection is the 0x00 terminator and zero padding
    rest = np.flatnonzero(values[i:])
    if rest.size:
        raise error(i + int(rest[0]), "unexpected data after the last entry")

    counts = np.array(group_count, dtype=np.int64)
    total = int(counts.sum()) if counts.size else 0
    out = np.zeros(total, dtype=SPLIT_SEG_DTYPE)
    if total == 0:
        return out
    out["kind"] = np.repeat(np.array(group_kind, dtype=np.uint8), counts)
    out["from_section"] = np.repeat(np.array(group_from, dtype=np.uint16), counts)
    out["to_section"] = np.repeat(np.array(group_to, dtype=np.uint16), counts)
    out["to_offset"] = np.repeat(np.array(group_to_offset, dtype=_U64), counts)
    # segmented cumulative sum of the from-deltas: one cumsum, minus the total before each group
    group_start = np.cumsum(counts) - counts
    index = np.arange(total) - np.repeat(group_start, counts) + np.repeat(np.array(group_first), counts)
    sums = np.cumsum(values[index])
    before = np.where(group_start > 0, sums[np.maximum(group_start - 1, 0)], _U64(0))
    out["from_offset"] = sums - np.repeat(before, counts)
    # deltas are unsigned, so a from-offset that goes down inside its group wrapped past 2^64
    wrapped = np.flatnonzero(
        (out["from_offset"][1:] < out["from_offset"][:-1])
        & (np.arange(1, total) != np.repeat(group_start, counts)[1:])
    )
    if wrapped.size:
        raise error(int(index[wrapped[0] + 1]), "from-offset overflows 64 bits")
    return out


def _read_v1(raw: np.ndarray, path: str, base: int) -> np.ndarray:
    # kinds are single bytes below 0x80, so the whole stream reads as ULEB128 numbers
    values, starts = _ulebs(raw, path, base)
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
        if kind not in V1_KINDS or raw[starts[i]] != kind:
            raise MachOFormatError(path, base + int(starts[i]), f"split seg info v1: bad kind {kind:#x}")
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
            path, base + int(starts[i + int(rest[0])]), "split seg info v1: unexpected data after the end"
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


def _uleb_encode_all(values: np.ndarray) -> bytes:
    """ULEB128 encoding of every uint64 in ``values``, concatenated (vectorized)."""
    v = np.asarray(values, dtype=_U64)
    if v.size == 0:
        return b""
    lengths = np.ones(v.size, dtype=np.int64)
    for k in range(1, 10):
        lengths += v >= _U64(1 << (7 * k))
    total = int(lengths.sum())
    owner = np.repeat(np.arange(v.size), lengths)
    first = np.cumsum(lengths) - lengths
    index = np.arange(total) - np.repeat(first, lengths)
    out = ((v[owner] >> (_U64(7) * index.astype(_U64))) & _U64(0x7F)).astype(np.uint8)
    out[index < np.repeat(lengths - 1, lengths)] |= 0x80
    return bytes(out.tobytes())


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
        return _pad8(bytes([C.DYLD_CACHE_ADJ_V2_FORMAT]) + _uleb_encode_all(np.zeros(1, _U64)) + b"\0")
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
    return _pad8(bytes([C.DYLD_CACHE_ADJ_V2_FORMAT]) + _uleb_encode_all(stream) + b"\0")


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
        out += _uleb_encode_all(deltas)
        out.append(0)
    out.append(0)
    return _pad8(bytes(out))
