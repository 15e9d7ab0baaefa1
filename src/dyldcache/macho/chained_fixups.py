"""LC_DYLD_CHAINED_FIXUPS: the chained-fixups blob and the pointer chains it describes.

The blob (``<mach-o/fixup-chains.h>``; cache-format.md §10, linker-notes §5.1) is a
``dyld_chained_fixups_header``, a ``dyld_chained_starts_in_image`` (one offset per
segment), one ``dyld_chained_starts_in_segment`` per segment with fixups (the offset of
the first fixup of every page), an imports table (``DYLD_CHAINED_IMPORT``, ``_ADDEND``
or ``_ADDEND64``) and a pool of symbol names. The fixups themselves live in the segments:
each pointer slot holds its rebase target or import index plus the distance to the next
fixup of the same page (``next``, in stride units; 0 ends the chain).

Decoding yields the uniform :data:`~dyldcache.macho.fixups.FIXUP_DTYPE` records, with
every rebase target turned into an absolute VM address as linked (formats that store an
offset from the mach header get the image's base address added). Encoding takes the same
records, writes every chained pointer into the output file buffer and returns the blob. The
bit layout of each pointer format is :mod:`dyldcache.macho.chained_pointers`; following the
chains through a segment's bytes is :mod:`dyldcache.macho.chain_walk`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import MachOFormatError
from . import constants as C
from .chain_walk import ChainWalk
from .chained_pointers import (
    ENCODABLE_FORMATS,
    INLINE_ADDEND,
    POINTER_FORMATS,
    Fail,
    PointerFormat,
    decode_pointers,
    encode_pointers,
    pointer_format_name,
)
from .fixups import FIXUP_DTYPE, FixupKind, Fixups, Import, empty_fixups
from .format import ChainedFixupsHeader, ChainedStartsInSegment
from .image import MachOImage

#: bytes of one imports-table entry, by imports_format
_IMPORT_ENTRY_SIZE = {
    C.DYLD_CHAINED_IMPORT: 4,
    C.DYLD_CHAINED_IMPORT_ADDEND: 8,
    C.DYLD_CHAINED_IMPORT_ADDEND64: 16,
}
_IMPORT_FORMAT_NAMES = {
    C.DYLD_CHAINED_IMPORT: "DYLD_CHAINED_IMPORT",
    C.DYLD_CHAINED_IMPORT_ADDEND: "DYLD_CHAINED_IMPORT_ADDEND",
    C.DYLD_CHAINED_IMPORT_ADDEND64: "DYLD_CHAINED_IMPORT_ADDEND64",
}

_STARTS_OFFSET = 32  # sizeof(dyld_chained_fixups_header) rounded up to 8
_SEG_HEADER = ChainedStartsInSegment.SIZE  # 22: the fixed part before page_start[]
_U64 = np.uint64


def import_format_name(value: int) -> str:
    return _IMPORT_FORMAT_NAMES.get(value, f"imports format {value}")


# ---------------------------------------------------------------------------------------------
# structural view of the blob


@dataclass(frozen=True, slots=True)
class ChainedImport:
    """One entry of the imports table, as stored."""

    #: library ordinal, sign-extended: 1.. = LC_*_DYLIB index, 0 self, -1 main executable,
    #: -2 flat lookup, -3 weak lookup (8-bit values above 0xF0, 16-bit above 0xFFF0 are negative)
    lib_ordinal: int
    weak: bool
    #: offset of the name in the symbol pool
    name_offset: int
    name: str
    #: 0 for DYLD_CHAINED_IMPORT
    addend: int

    def to_import(self) -> Import:
        return Import(self.name, self.lib_ordinal, self.weak)


@dataclass(frozen=True, slots=True)
class SegmentStarts:
    """One ``dyld_chained_starts_in_segment`` with its ``page_start[]`` array resolved."""

    segment_index: int
    record: ChainedStartsInSegment
    #: page_start[0..page_count) as stored (DYLD_CHAINED_PTR_START_NONE for pages without fixups)
    page_start: tuple[int, ...]
    #: for every page, the offsets in the page where a chain starts (several only for
    #: 32-bit formats using DYLD_CHAINED_PTR_START_MULTI; none when the page has no fixups)
    chain_starts: tuple[tuple[int, ...], ...]
    #: absolute file offset of the record (for error messages)
    file_offset: int

    @property
    def pointer_format(self) -> int:
        return self.record.pointer_format

    @property
    def page_size(self) -> int:
        return self.record.page_size

    @property
    def page_count(self) -> int:
        return self.record.page_count

    @property
    def segment_offset(self) -> int:
        return self.record.segment_offset


@dataclass(frozen=True, slots=True)
class ChainedFixupsInfo:
    """Everything in an LC_DYLD_CHAINED_FIXUPS blob, decoded but not applied to an image."""

    header: ChainedFixupsHeader
    #: dyld_chained_starts_in_image.seg_info_offset[] (0 = segment without fixups)
    seg_info_offsets: tuple[int, ...]
    #: per segment index (seg_count entries): its starts, or None
    segments: tuple[SegmentStarts | None, ...]
    imports: tuple[ChainedImport, ...]
    #: absolute file offset of the blob
    file_offset: int

    @property
    def seg_count(self) -> int:
        return len(self.seg_info_offsets)

    def import_list(self) -> list[Import]:
        return [imp.to_import() for imp in self.imports]


def parse_chained_fixups_blob(data: bytes | memoryview, path: str, base_offset: int = 0) -> ChainedFixupsInfo:
    """Decode and validate the blob of LC_DYLD_CHAINED_FIXUPS (``base_offset`` = its file offset)."""
    blob = bytes(data)
    size = len(blob)

    def error(offset: int, message: str) -> MachOFormatError:
        return MachOFormatError(path, base_offset + offset, f"chained fixups: {message}")

    if size < ChainedFixupsHeader.SIZE:
        raise error(0, f"blob ({size} bytes) is smaller than dyld_chained_fixups_header")
    h = ChainedFixupsHeader.unpack_from(blob, 0)
    if h.fixups_version != 0:
        raise error(0, f"unknown fixups_version {h.fixups_version}")
    entry_size = _IMPORT_ENTRY_SIZE.get(h.imports_format)
    if entry_size is None:
        raise error(20, f"unknown imports_format {h.imports_format}")
    if h.symbols_format != 0:
        raise error(24, f"symbols_format {h.symbols_format} (compressed symbols) is not supported")
    if h.starts_offset + 4 > size:
        raise error(4, f"starts_offset {h.starts_offset:#x} is outside the blob ({size:#x} bytes)")
    imports_end = h.imports_offset + entry_size * h.imports_count
    if imports_end > size:
        raise error(
            8, f"imports table ({h.imports_count} entries at {h.imports_offset:#x}) extends past the blob"
        )
    if h.symbols_offset > size:
        raise error(12, f"symbols_offset {h.symbols_offset:#x} is outside the blob ({size:#x} bytes)")
    if h.imports_count and imports_end > h.symbols_offset:
        raise error(8, "imports table overlaps the symbol strings")

    seg_count = struct.unpack_from("<I", blob, h.starts_offset)[0]
    if h.starts_offset + 4 + 4 * seg_count > size:
        raise error(
            h.starts_offset, f"seg_count {seg_count} makes dyld_chained_starts_in_image overrun the blob"
        )
    seg_info_offsets = struct.unpack_from(f"<{seg_count}I", blob, h.starts_offset + 4)
    segments = tuple(
        _parse_segment_starts(blob, h.starts_offset, i, off, error, base_offset) if off else None
        for i, off in enumerate(seg_info_offsets)
    )
    imports = _parse_imports(blob, h, entry_size, error)
    return ChainedFixupsInfo(h, seg_info_offsets, segments, imports, base_offset)


class _ErrorFactory(Protocol):
    def __call__(self, offset: int, message: str) -> MachOFormatError: ...


def _parse_segment_starts(
    blob: bytes, starts_offset: int, index: int, seg_info_offset: int, error: _ErrorFactory, base_offset: int
) -> SegmentStarts:
    rec_off = starts_offset + seg_info_offset
    if rec_off + _SEG_HEADER > len(blob):
        raise error(
            starts_offset + 4 + 4 * index, f"starts of segment {index} (at {rec_off:#x}) are outside the blob"
        )
    rec = ChainedStartsInSegment.unpack_from(blob, rec_off)
    if rec.size < _SEG_HEADER + 2 * rec.page_count:
        raise error(rec_off, f"segment {index}: size {rec.size} cannot hold page_count {rec.page_count}")
    if rec_off + rec.size > len(blob):
        raise error(rec_off, f"segment {index}: starts ({rec.size} bytes) extend past the blob")
    if rec.page_size not in (0x1000, 0x4000):
        raise error(rec_off + 4, f"segment {index}: page_size {rec.page_size:#x} is not 4 KiB or 16 KiB")
    if rec.pointer_format not in POINTER_FORMATS:
        raise error(rec_off + 6, f"segment {index}: unknown pointer_format {rec.pointer_format}")
    entries = struct.unpack_from(f"<{(rec.size - _SEG_HEADER) // 2}H", blob, rec_off + _SEG_HEADER)
    chains: list[tuple[int, ...]] = []
    for page in range(rec.page_count):
        value = entries[page]
        at = rec_off + _SEG_HEADER + 2 * page
        if value == C.DYLD_CHAINED_PTR_START_NONE:
            chains.append(())
        elif value & C.DYLD_CHAINED_PTR_START_MULTI:
            # 32-bit formats: an index into the overflow list that follows page_start[]; the
            # list for this page ends at the entry with DYLD_CHAINED_PTR_START_LAST
            k = value & ~C.DYLD_CHAINED_PTR_START_MULTI
            starts: list[int] = []
            while True:
                if k >= len(entries):
                    raise error(at, f"segment {index} page {page}: chain start index {k} is out of range")
                entry = entries[k]
                start = entry & ~C.DYLD_CHAINED_PTR_START_LAST
                if start >= rec.page_size:
                    raise error(
                        rec_off + _SEG_HEADER + 2 * k,
                        f"segment {index} page {page}: chain start {start:#x} is outside the page",
                    )
                if starts and start <= starts[-1]:
                    raise error(
                        rec_off + _SEG_HEADER + 2 * k,
                        f"segment {index} page {page}: chain starts are not ascending",
                    )
                starts.append(start)
                if entry & C.DYLD_CHAINED_PTR_START_LAST:
                    break
                k += 1
            chains.append(tuple(starts))
        else:
            if value >= rec.page_size:
                raise error(at, f"segment {index}: page_start[{page}] {value:#x} is outside the page")
            chains.append((value,))
    return SegmentStarts(index, rec, entries[: rec.page_count], tuple(chains), base_offset + rec_off)


def _parse_imports(
    blob: bytes, h: ChainedFixupsHeader, entry_size: int, error: _ErrorFactory
) -> tuple[ChainedImport, ...]:
    count = h.imports_count
    if count == 0:
        return ()
    if h.imports_format == C.DYLD_CHAINED_IMPORT_ADDEND64:
        table = np.frombuffer(
            blob, dtype=[("v", "<u8"), ("addend", "<i8")], count=count, offset=h.imports_offset
        )
        word = table["v"]
        ordinals = (word & _U64(0xFFFF)).astype(np.int64)
        ordinals[ordinals > 0xFFF0] -= 0x10000
        weak = (word >> _U64(16)) & _U64(1)
        name_offsets = word >> _U64(32)
        addends = table["addend"].astype(np.int64)
    else:
        if h.imports_format == C.DYLD_CHAINED_IMPORT_ADDEND:
            table = np.frombuffer(
                blob, dtype=[("v", "<u4"), ("addend", "<i4")], count=count, offset=h.imports_offset
            )
            word32, addends = table["v"], table["addend"].astype(np.int64)
        else:
            word32 = np.frombuffer(blob, dtype="<u4", count=count, offset=h.imports_offset)
            addends = np.zeros(count, dtype=np.int64)
        ordinals = (word32 & 0xFF).astype(np.int64)
        ordinals[ordinals > 0xF0] -= 0x100
        weak = ((word32 >> 8) & 1).astype(np.uint64)
        name_offsets = (word32 >> 9).astype(np.uint64)
    pool_size = len(blob) - h.symbols_offset
    bad = np.flatnonzero(name_offsets >= pool_size)
    if bad.size:
        k = int(bad[0])
        raise error(
            h.imports_offset + entry_size * k,
            f"import {k}: name_offset {int(name_offsets[k]):#x} is outside the symbol pool "
            f"({pool_size:#x} bytes)",
        )
    names: dict[int, str] = {}
    out = []
    for k, (ordinal, is_weak, name_offset, addend) in enumerate(
        zip(ordinals.tolist(), weak.tolist(), name_offsets.tolist(), addends.tolist(), strict=True)
    ):
        name = names.get(name_offset)
        if name is None:
            start = h.symbols_offset + name_offset
            end = blob.find(b"\0", start)
            if end < 0:
                raise error(h.imports_offset + entry_size * k, f"import {k}: name is not NUL-terminated")
            # surrogateescape keeps names that are not UTF-8 byte-exact for the encoder
            name = names[name_offset] = blob[start:end].decode("utf-8", "surrogateescape")
        out.append(ChainedImport(ordinal, bool(is_weak), name_offset, name, addend))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# decoding the chains


class SegmentLike(Protocol):
    """What the chain walker needs to know about a segment (``file.Segment`` fits)."""

    @property
    def vmaddr(self) -> int: ...
    @property
    def fileoff(self) -> int: ...
    @property
    def filesize(self) -> int: ...


def read_chained_fixups(image: MachOImage) -> Fixups:
    """All fixups of an image with LC_DYLD_CHAINED_FIXUPS, sorted by address."""
    lc = image.linkedit_commands.get(C.LC_DYLD_CHAINED_FIXUPS)
    if lc is None:
        return Fixups(empty_fixups(), [], "none")
    blob_offset = lc.dataoff + image.file_offset
    if image.in_cache:
        # the cache builder binds every chain in place; what is left cannot be walked
        raise MachOFormatError(
            image.path, blob_offset, "chained fixups of an image inside a dyld cache cannot be walked"
        )
    info = parse_chained_fixups_blob(
        image.linkedit[lc.dataoff : lc.dataoff + lc.datasize], image.path, blob_offset
    )
    if info.seg_count > len(image.segments):
        raise MachOFormatError(
            image.path,
            blob_offset + info.header.starts_offset,
            f"chained fixups: seg_count {info.seg_count} exceeds the "
            f"{len(image.segments)} segments of the image",
        )
    base = image.base_address
    for starts in info.segments:
        if starts is None:
            continue
        seg = image.segments[starts.segment_index]
        if starts.segment_offset != seg.vmaddr - base:
            raise MachOFormatError(
                image.path,
                starts.file_offset + 8,
                f"chained fixups: segment_offset {starts.segment_offset:#x} of segment "
                f"{starts.segment_index} ({seg.name}) does not match its vmaddr {seg.vmaddr:#x}",
            )
    return decode_chained_fixups(info, image.segments, image.data, image.path, base, image.file_offset)


def decode_chained_fixups(
    info: ChainedFixupsInfo,
    segments: Sequence[SegmentLike],
    data: bytes | bytearray | memoryview,
    path: str,
    base_address: int,
    data_file_offset: int = 0,
) -> Fixups:
    """Walk every chain of ``info`` through the segment bytes in ``data`` (file layout).

    ``segments`` are the image's segments in load-command order; ``base_address`` is the
    VM address of the mach header; ``data_file_offset`` is where ``data`` starts in its
    file (for error offsets).
    """
    if info.seg_count > len(segments):
        raise MachOFormatError(
            path,
            info.file_offset + info.header.starts_offset,
            f"chained fixups: seg_count {info.seg_count} exceeds the {len(segments)} segments",
        )
    import_addends = np.array([imp.addend for imp in info.imports], dtype=np.int64)
    parts = []
    formats: dict[int, int] = {}
    for starts in info.segments:
        if starts is None:
            continue
        formats[starts.segment_index] = starts.pointer_format
        seg = segments[starts.segment_index]
        parts.append(_decode_segment(starts, seg, data, path, base_address, data_file_offset, import_addends))
    records = _joined(parts)
    address = records["address"]
    if len(records) > 1 and (address[1:] < address[:-1]).any():
        # (each segment's records come out by address; segments are usually in address order)
        records = records[np.argsort(address, kind="stable")]
    if len(records) > 1:
        dup = np.flatnonzero(records["address"][1:] == records["address"][:-1])
        if dup.size:
            rec = records[int(dup[0])]
            seg = segments[int(rec["segment"])]
            at = data_file_offset + seg.fileoff + int(rec["address"]) - seg.vmaddr
            raise MachOFormatError(
                path, at, f"chained fixups: two chains reach the pointer at {int(rec['address']):#x}"
            )
    return Fixups(records, info.import_list(), "chained", pointer_formats=formats)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The FIXUP_DTYPE arrays one after the other, joined as bytes (np.concatenate and slice
    assignment copy a structured array field by field, twenty times slower)."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return empty_fixups()
    joined: np.ndarray = np.concatenate([p.view(np.uint8) for p in parts]).view(FIXUP_DTYPE)
    return joined


@dataclass(frozen=True, slots=True)
class _ChainError:
    """A problem met while walking the chains, and where a sequential walk would meet it."""

    page: int
    offset: int
    error: MachOFormatError


def _decode_segment(
    starts: SegmentStarts,
    seg: SegmentLike,
    data: bytes | bytearray | memoryview,
    path: str,
    base: int,
    data_file_offset: int,
    import_addends: np.ndarray,
) -> np.ndarray:
    fmt = POINTER_FORMATS[starts.pointer_format]
    page_size = starts.page_size
    # the segment's file bytes, as far as ``data`` has them
    seg_end = max(0, min(seg.filesize, memoryview(data).nbytes - seg.fileoff))
    per_page = [len(c) for c in starts.chain_starts]
    start_page = np.repeat(np.arange(len(per_page), dtype=np.int64), per_page)
    start_pos = start_page * page_size + np.array(
        [s for c in starts.chain_starts for s in c], dtype=np.int64
    ).reshape(-1)
    # a chain stays inside its page and inside the segment's file bytes
    start_end = np.minimum((start_page + 1) * page_size, seg_end)
    outside = start_pos + fmt.size > start_end
    problems: list[_ChainError] = []
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        page = int(start_page[k])
        problems.append(
            _ChainError(
                page,
                int(start_pos[k]),
                MachOFormatError(
                    path,
                    starts.file_offset + _SEG_HEADER + 2 * page,
                    f"chained fixups: segment {starts.segment_index} page {page}: chain start "
                    f"{int(start_pos[k] - page * page_size):#x} is outside the segment's file content",
                ),
            )
        )
    walk = ChainWalk(fmt, page_size, seg_end, data, seg.fileoff)
    pos_arr, values, bad = walk.pointers(start_pos[~outside], start_page[~outside])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        at = int(pos_arr[k])
        page_off = at // page_size * page_size
        step = (int(values[k]) >> fmt.next_shift) & ((1 << fmt.next_bits) - 1)
        problems.append(
            _ChainError(
                at // page_size,
                at,
                MachOFormatError(
                    path,
                    data_file_offset + seg.fileoff + at,
                    f"chained fixups: next {step} of the pointer at segment offset {at:#x} "
                    f"leaves its page ({page_off:#x}..{min(page_off + page_size, seg_end):#x})",
                ),
            )
        )
    if problems:
        raise min(problems, key=lambda p: (p.page, p.offset)).error
    if not len(pos_arr):
        return empty_fixups()
    file_pos = pos_arr + seg.fileoff
    recs = decode_pointers(fmt, values, base, starts.record.max_valid_pointer)
    recs["address"] = _U64(seg.vmaddr) + pos_arr.astype(_U64)
    recs["segment"] = starts.segment_index
    keep = recs["kind"] != 0xFF  # 0xFF marks DYLD_CHAINED_PTR_32 non-pointers
    bind_mask = (recs["kind"] == FixupKind.BIND) | (recs["kind"] == FixupKind.AUTH_BIND)
    bad_bind = np.flatnonzero(bind_mask & (recs["bind"] >= len(import_addends)))
    if bad_bind.size:
        k = int(bad_bind[0])
        raise MachOFormatError(
            path,
            data_file_offset + int(file_pos[k]),
            f"chained fixups: bind to import {int(recs['bind'][k])}, "
            f"but there are {len(import_addends)} imports",
        )
    if bind_mask.any():
        recs["addend"][bind_mask] += import_addends[recs["bind"][bind_mask]]
    cache_level = recs["flags"] & 0x80
    if cache_level.any():
        k = int(np.flatnonzero(cache_level)[0])
        raise MachOFormatError(
            path,
            data_file_offset + int(file_pos[k]),
            "chained fixups: kernel-collection pointer refers to another collection (cacheLevel != 0)",
        )
    kept: np.ndarray = recs if keep.all() else recs[keep]
    return kept


# ---------------------------------------------------------------------------------------------
# encoding


@dataclass(frozen=True, slots=True)
class ChainedSegment:
    """One segment of the image being written, as the encoder needs it."""

    vmaddr: int
    vmsize: int
    #: file offset of the segment in the output file (where its chained pointers go)
    fileoff: int
    name: str = ""


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def encode_chained_fixups(
    *,
    segments: Sequence[ChainedSegment],
    records: np.ndarray,
    imports: Sequence[Import],
    pointer_format: int,
    page_size: int,
    image: bytearray | memoryview | None,
    base_address: int,
) -> bytes:
    """Write the chained pointers of ``records`` into ``image`` and return the LC_DYLD_CHAINED_FIXUPS blob.

    - ``segments``: **all** segments of the image in load-command order (seg_count counts
      them all, __TEXT and __LINKEDIT included);
    - ``records``: FIXUP_DTYPE records; rebases carry absolute targets (VM addresses as
      linked) and high8, binds an index into ``imports`` and their whole addend, auth
      records key/diversity/addr_div. Their ``segment`` field is ignored: the segment is
      found from the address;
    - ``imports``: the imported symbols; they keep their indexes in the imports table;
    - ``image``: the output file (file layout, writable), or None to build the blob only;
    - ``base_address``: VM address of the mach header.

    The import table format follows ld64: an addend is inlined in the pointer when the format
    allows it (0..255 for the _64 formats, -2^18..2^18-1 for arm64e plain binds, never for
    auth binds); otherwise one extra entry per (import, addend), in order of first use, is
    appended after ``imports`` and the table becomes DYLD_CHAINED_IMPORT_ADDEND (addends in
    0..2^31-1) or _ADDEND64 (other addends, ordinals above 240, or a symbol pool of 8 MiB or
    more). Unlike ld64, addends 2^31..2^32-1 use _ADDEND64, because dyld sign-extends the
    32-bit field.

    Raises ValueError, naming the address, for a location that is unaligned, outside every
    segment, straddling a page or overlapping another, and for a value that does not fit.
    """
    fmt = POINTER_FORMATS.get(pointer_format)
    if fmt is None or pointer_format not in ENCODABLE_FORMATS:
        raise ValueError(f"cannot encode chained fixups in {pointer_format_name(pointer_format)}")
    if page_size not in (0x1000, 0x4000):
        raise ValueError(f"chained fixups page size {page_size:#x} is not 4 KiB or 16 KiB")
    if records.dtype != FIXUP_DTYPE:
        raise ValueError("records must be a FIXUP_DTYPE array")
    r = records[np.argsort(records["address"], kind="stable")]
    addr = r["address"].astype(_U64)
    kind = r["kind"]

    def fail(mask: np.ndarray, message: str) -> None:
        bad = np.flatnonzero(mask)
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"chained fixup at {int(addr[k]):#x}: " + message.format(rec=r[k]))

    fail(kind > FixupKind.AUTH_BIND, "unknown fixup kind {rec[kind]}")
    fail(addr % _U64(fmt.stride) != 0, f"location is not {fmt.stride}-byte aligned ({fmt.name})")
    if len(r) > 1:
        gap = np.diff(addr)
        fail(np.r_[gap < _U64(fmt.size), False], "overlaps the next fixup")

    seg_index, seg_off = _locate(segments, addr, fail)
    page = seg_off // _U64(page_size)
    in_page = seg_off % _U64(page_size)
    fail(in_page + _U64(fmt.size) > _U64(page_size), "pointer straddles a page boundary")
    same_chain = (seg_index[1:] == seg_index[:-1]) & (page[1:] == page[:-1])
    nxt = np.zeros(len(r), dtype=_U64)
    nxt[:-1] = np.where(same_chain, (addr[1:] - addr[:-1]) // _U64(fmt.stride), _U64(0))

    table, table_index, inline = _import_table(r, imports, pointer_format, fail)
    ordinal_bits = (
        16 if pointer_format in (C.DYLD_CHAINED_PTR_ARM64E, C.DYLD_CHAINED_PTR_ARM64E_USERLAND) else 24
    )
    is_bind = (kind == FixupKind.BIND) | (kind == FixupKind.AUTH_BIND)
    fail(
        is_bind & (table_index >= 1 << ordinal_bits),
        f"import table index does not fit the {ordinal_bits}-bit ordinal of {fmt.name}",
    )
    values = encode_pointers(r, fmt, nxt, table_index, inline, base_address, fail)

    if image is not None:
        file_off = np.array([s.fileoff for s in segments], dtype=_U64)[seg_index] + seg_off
        length = memoryview(image).nbytes
        fail(
            file_off + _U64(fmt.size) > _U64(length),
            f"pointer is past the end of the output ({length:#x} bytes)",
        )
        if len(r):
            dst = np.ndarray(shape=(length - fmt.size + 1,), dtype="<u8", buffer=image, strides=(1,))
            dst[file_off.astype(np.int64)] = values
            del dst
    return _build_blob(segments, seg_index, page, in_page, table, fmt, page_size, base_address)


def _locate(
    segments: Sequence[ChainedSegment], addr: np.ndarray, fail: Fail
) -> tuple[np.ndarray, np.ndarray]:
    """(segment index, offset in segment) of every address."""
    live = sorted((s.vmaddr, i) for i, s in enumerate(segments) if s.vmsize > 0)
    if not live:
        fail(np.ones(len(addr), dtype=bool), "no segment to hold it")
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=_U64)
    starts = np.array([v for v, _ in live], dtype=_U64)
    order = np.array([i for _, i in live], dtype=np.int64)
    k = np.searchsorted(starts, addr, side="right") - 1
    fail(k < 0, "location is not inside any segment")
    seg_index = order[k]
    vmaddr = np.array([s.vmaddr for s in segments], dtype=_U64)[seg_index]
    vmsize = np.array([s.vmsize for s in segments], dtype=_U64)[seg_index]
    seg_off = addr - vmaddr
    fail(seg_off + _U64(8) > vmsize, "location is not inside any segment")
    return seg_index, seg_off


def _import_table(
    r: np.ndarray, imports: Sequence[Import], pointer_format: int, fail: Fail
) -> tuple[list[tuple[Import, int]], np.ndarray, np.ndarray]:
    """The imports table as (import, addend) entries, each bind's table index and inline addend."""
    kind = r["kind"]
    is_bind = (kind == FixupKind.BIND) | (kind == FixupKind.AUTH_BIND)
    is_auth_bind = kind == FixupKind.AUTH_BIND
    bind = r["bind"].astype(np.int64)
    fail(is_bind & ((bind < 0) | (bind >= len(imports))), f"bind to import {{rec[bind]}} of {len(imports)}")
    addend = r["addend"].astype(np.int64)
    lo, hi = INLINE_ADDEND[pointer_format]
    inline_ok = is_bind & ~is_auth_bind & (addend >= lo) & (addend <= hi)
    inline = np.where(inline_ok, addend, 0)
    table_addend = np.where(is_bind & ~inline_ok, addend, 0)
    table: list[tuple[Import, int]] = [(imp, 0) for imp in imports]
    table_index = np.where(is_bind, bind, 0)
    extra: dict[tuple[int, int], int] = {}
    for k in np.flatnonzero(table_addend).tolist():
        key = (int(bind[k]), int(table_addend[k]))
        idx = extra.get(key)
        if idx is None:
            idx = extra[key] = len(table)
            table.append((imports[key[0]], key[1]))
        table_index[k] = idx
    return table, table_index, inline


def _build_blob(
    segments: Sequence[ChainedSegment],
    seg_index: np.ndarray,
    page: np.ndarray,
    in_page: np.ndarray,
    table: list[tuple[Import, int]],
    fmt: PointerFormat,
    page_size: int,
    base_address: int,
) -> bytes:
    seg_count = len(segments)
    # -- layout: starts in image, per-segment starts (8-aligned), imports, symbols
    first_of_page = np.ones(len(seg_index), dtype=bool)
    if len(seg_index) > 1:
        first_of_page[1:] = (seg_index[1:] != seg_index[:-1]) | (page[1:] != page[:-1])
    seg_records: list[tuple[int, bytes]] = []
    cursor = 4 + 4 * seg_count  # relative to dyld_chained_starts_in_image
    seg_info_offsets = [0] * seg_count
    for i in np.unique(seg_index).tolist():
        mine = (seg_index == i) & first_of_page
        pages = page[mine].astype(np.int64)
        page_count = int(pages[-1]) + 1
        if page_count > 0xFFFF:
            raise ValueError(f"segment {i} needs {page_count} chained-fixup pages (at most 65535)")
        seg = segments[i]
        if seg.vmaddr < base_address:
            raise ValueError(f"segment {i} ({seg.name}) starts below the mach header")
        page_start = np.full(page_count, C.DYLD_CHAINED_PTR_START_NONE, dtype="<u2")
        page_start[pages] = in_page[mine]
        size = _SEG_HEADER + 2 * page_count
        rec = ChainedStartsInSegment(size, page_size, fmt.value, seg.vmaddr - base_address, 0, page_count)
        cursor = _align(cursor, 8)
        seg_info_offsets[i] = cursor
        seg_records.append((cursor, rec.pack() + page_start.tobytes()))
        cursor += size

    imports_format, entries, pool = _pack_imports(table)
    entry_size = _IMPORT_ENTRY_SIZE[imports_format]
    imports_offset = _align(
        _STARTS_OFFSET + cursor, 8 if imports_format == C.DYLD_CHAINED_IMPORT_ADDEND64 else 4
    )
    symbols_offset = imports_offset + entry_size * len(table)
    total = _align(symbols_offset + len(pool), 8)

    blob = bytearray(total)
    ChainedFixupsHeader(
        0, _STARTS_OFFSET, imports_offset, symbols_offset, len(table), imports_format, 0
    ).pack_into(blob, 0)
    struct.pack_into(f"<I{seg_count}I", blob, _STARTS_OFFSET, seg_count, *seg_info_offsets)
    for off, raw in seg_records:
        blob[_STARTS_OFFSET + off : _STARTS_OFFSET + off + len(raw)] = raw
    blob[imports_offset:symbols_offset] = entries
    blob[symbols_offset : symbols_offset + len(pool)] = pool
    return bytes(blob)


def _pack_imports(table: list[tuple[Import, int]]) -> tuple[int, bytes, bytes]:
    """(imports_format, packed table, symbol pool) for the (import, addend) entries."""
    pool = bytearray(b"\0")  # a name offset of 0 is never a real name
    name_offsets = []
    for imp, _ in table:
        try:
            raw = imp.name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise ValueError(f"import name {imp.name!r} cannot be encoded as UTF-8") from None
        if b"\0" in raw:
            raise ValueError(f"import name {imp.name!r} contains a NUL byte")
        name_offsets.append(len(pool))
        pool += raw + b"\0"
    ordinals = [imp.ordinal for imp, _ in table]
    addends = [addend for _, addend in table]
    for imp in (imp for imp, _ in table if not -15 <= imp.ordinal <= 0xFFF0):
        raise ValueError(f"import {imp.name!r}: library ordinal {imp.ordinal} cannot be encoded")
    need64 = (
        any(a < 0 or a > 0x7FFF_FFFF for a in addends)
        or any(o > 0xF0 for o in ordinals)
        or (bool(name_offsets) and name_offsets[-1] >= 1 << 23)
    )
    weak = np.array([imp.weak for imp, _ in table], dtype=np.uint64)
    offs = np.array(name_offsets, dtype=np.uint64)
    if need64:
        ords = np.array([o & 0xFFFF for o in ordinals], dtype=np.uint64)
        packed = np.zeros(len(table), dtype=[("v", "<u8"), ("addend", "<u8")])
        packed["v"] = ords | (weak << _U64(16)) | (offs << _U64(32))
        packed["addend"] = np.array([a & 0xFFFF_FFFF_FFFF_FFFF for a in addends], dtype=np.uint64)
        return C.DYLD_CHAINED_IMPORT_ADDEND64, packed.tobytes(), bytes(pool)
    word = np.array([o & 0xFF for o in ordinals], dtype=np.uint64) | (weak << _U64(8)) | (offs << _U64(9))
    if any(addends):
        packed = np.zeros(len(table), dtype=[("v", "<u4"), ("addend", "<i4")])
        packed["v"] = word
        packed["addend"] = addends
        return C.DYLD_CHAINED_IMPORT_ADDEND, packed.tobytes(), bytes(pool)
    return C.DYLD_CHAINED_IMPORT, word.astype("<u4").tobytes(), bytes(pool)
