"""LC_DYLD_CHAINED_FIXUPS: decoder and encoder (macho/chained_fixups.py).

Oracles: llvm-objdump-22 (--chained-fixups for the blob structure, --dyld-info for the
pointers of formats 2 and 6), LIEF 1.0.0 for arm64e (bindings, relocations and its own
per-pointer decoder for the auth fields), ld64's own output (re-encoding an Apple-linked
dylib must give its bytes back), hand-worked corruptions, and hypothesis round trips.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import objdump
import pytest
from conftest import python_module, shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyldcache.errors import MachOFormatError
from dyldcache.macho import constants as C
from dyldcache.macho.chain_walk import ChainWalk
from dyldcache.macho.chained_fixups import (
    ChainedFixupsInfo,
    ChainedSegment,
    decode_chained_fixups,
    encode_chained_fixups,
    parse_chained_fixups_blob,
    read_chained_fixups,
)
from dyldcache.macho.chained_pointers import POINTER_FORMATS
from dyldcache.macho.file import parse_macho
from dyldcache.macho.fixups import FixupKind, Fixups, Import, empty_fixups
from dyldcache.macho.format import (
    ChainedFixupsHeader,
    ChainedStartsInSegment,
    LinkeditDataCommand,
    MachHeader64,
    SegmentCommand64,
)

APPLE_DYLIBS = ["fixup-chains-arm64.dylib", "fixup-chains-arm64e.dylib", "libexports.dylib"]
ENCODABLE = [
    C.DYLD_CHAINED_PTR_64,
    C.DYLD_CHAINED_PTR_64_OFFSET,
    C.DYLD_CHAINED_PTR_ARM64E,
    C.DYLD_CHAINED_PTR_ARM64E_USERLAND,
    C.DYLD_CHAINED_PTR_ARM64E_USERLAND24,
]
ARM64E = {C.DYLD_CHAINED_PTR_ARM64E, C.DYLD_CHAINED_PTR_ARM64E_USERLAND, C.DYLD_CHAINED_PTR_ARM64E_USERLAND24}


def _apple(name: str) -> Path:
    return shared_path("data", "macho", name)


def _blob_of(data: bytes) -> tuple[int, int]:
    """(dataoff, datasize) of LC_DYLD_CHAINED_FIXUPS, found by walking the load commands by hand."""
    ncmds = struct.unpack_from("<I", data, 16)[0]
    off = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == C.LC_DYLD_CHAINED_FIXUPS:
            return struct.unpack_from("<II", data, off + 8)
        off += size
    raise AssertionError("no LC_DYLD_CHAINED_FIXUPS")


# ---------------------------------------------------------------------------------------------
# a minimal Mach-O to carry encoded fixups: __TEXT (header), __DATA (one __data section), __LINKEDIT


def _build_image(
    fmt: int,
    page_size: int,
    data_pages: int,
    records: np.ndarray,
    imports: list[Import],
    base: int,
    dylibs: tuple[str, ...] = (),
    fill: bytes = b"",
) -> bytes:
    data_size = data_pages * page_size
    segs = [
        ChainedSegment(base, page_size, 0, "__TEXT"),
        ChainedSegment(base + page_size, data_size, page_size, "__DATA"),
        ChainedSegment(base + page_size + data_size, page_size, page_size + data_size, "__LINKEDIT"),
    ]
    body = bytearray(page_size + data_size)
    body[page_size : page_size + len(fill)] = fill[:data_size]
    blob = encode_chained_fixups(
        segments=segs,
        records=records,
        imports=imports,
        pointer_format=fmt,
        page_size=page_size,
        image=body,
        base_address=base,
    )
    cpusub = C.CPU_SUBTYPE_ARM64E if fmt in ARM64E else C.CPU_SUBTYPE_ARM64_ALL
    cmds = bytearray()
    text = SegmentCommand64(
        C.LC_SEGMENT_64, 72 + 80, b"__TEXT".ljust(16, b"\0"), base, page_size, 0, page_size, 5, 5, 1, 0
    )
    cmds += text.pack()
    cmds += struct.pack(
        "<16s16sQQIIIIIIII",
        b"__text",
        b"__TEXT",
        base + page_size - 0x100,
        0x100,
        page_size - 0x100,
        2,
        0,
        0,
        0x80000400,
        0,
        0,
        0,
    )
    data_cmd = SegmentCommand64(
        C.LC_SEGMENT_64,
        72 + 80,
        b"__DATA".ljust(16, b"\0"),
        base + page_size,
        data_size,
        page_size,
        data_size,
        3,
        3,
        1,
        0,
    )
    cmds += data_cmd.pack()
    cmds += struct.pack(
        "<16s16sQQIIIIIIII", b"__data", b"__DATA", base + page_size, data_size, page_size, 3, 0, 0, 0, 0, 0, 0
    )
    le_off = page_size + data_size
    le = SegmentCommand64(
        C.LC_SEGMENT_64,
        72,
        b"__LINKEDIT".ljust(16, b"\0"),
        base + le_off,
        page_size,
        le_off,
        len(blob),
        1,
        1,
        0,
        0,
    )
    cmds += le.pack()
    cmds += LinkeditDataCommand(C.LC_DYLD_CHAINED_FIXUPS, 16, le_off, len(blob)).pack()
    for cmd, path in [(C.LC_ID_DYLIB, "/usr/lib/libtest.dylib")] + [(C.LC_LOAD_DYLIB, d) for d in dylibs]:
        name = path.encode() + b"\0"
        size = (24 + len(name) + 7) // 8 * 8
        cmds += struct.pack("<6I", cmd, size, 24, 2, 0x10000, 0x10000) + name.ljust(size - 24, b"\0")
    header = MachHeader64(C.MH_MAGIC_64, C.CPU_TYPE_ARM64, cpusub, C.MH_DYLIB, 5 + len(dylibs), len(cmds), 0)
    assert 32 + len(cmds) <= page_size
    body[0:32] = header.pack()
    body[32 : 32 + len(cmds)] = cmds
    return bytes(body) + blob


def _canonical(fixups: Fixups) -> list[tuple[object, ...]]:
    """What a fixup means, independent of import-table layout."""
    out = []
    for r in fixups.records:
        kind = FixupKind(int(r["kind"]))
        if kind in (FixupKind.BIND, FixupKind.AUTH_BIND):
            imp = fixups.imports[int(r["bind"])]
            what: tuple[object, ...] = (imp.name, imp.ordinal, imp.weak, int(r["addend"]))
        else:
            what = (int(r["target"]), int(r["high8"]))
        out.append((int(r["address"]), kind, *what, int(r["key"]), int(r["diversity"]), int(r["addr_div"])))
    return out


def _expected(records: np.ndarray, imports: list[Import]) -> list[tuple[object, ...]]:
    out = []
    for r in records[np.argsort(records["address"], kind="stable")]:
        kind = FixupKind(int(r["kind"]))
        auth = kind in (FixupKind.AUTH_REBASE, FixupKind.AUTH_BIND)
        if kind in (FixupKind.BIND, FixupKind.AUTH_BIND):
            imp = imports[int(r["bind"])]
            what: tuple[object, ...] = (imp.name, imp.ordinal, imp.weak, int(r["addend"]))
        else:
            what = (int(r["target"]), int(r["high8"]))
        auth_fields = (int(r["key"]), int(r["diversity"]), int(r["addr_div"])) if auth else (0, 0, 0)
        out.append((int(r["address"]), kind, *what, *auth_fields))
    return out


def _records(rows: list[dict[str, int]]) -> np.ndarray:
    recs = empty_fixups(len(rows))
    for k, row in enumerate(rows):
        for name, value in row.items():
            recs[k][name] = value
    return recs


# ---------------------------------------------------------------------------------------------
# hypothesis round trips


@st.composite
def _fixup_sets(draw: st.DrawFn) -> tuple[int, int, int, int, np.ndarray, list[Import]]:
    fmt = draw(st.sampled_from(ENCODABLE))
    page_size = draw(st.sampled_from([0x1000, 0x4000]))
    pages = draw(st.integers(1, 3))
    base = draw(st.sampled_from([0, 0x1_0000_0000, 0x7_0000_0000]))
    stride = 8 if fmt in ARM64E else 4
    data_start = base + page_size
    # non-overlapping, stride-aligned slots that do not straddle a page
    gaps = draw(st.lists(st.integers(8 // stride, 700 // stride), min_size=1, max_size=60))
    offsets, off = [], draw(st.integers(0, 40)) * stride
    for g in gaps:
        if off + 8 > pages * page_size:
            break
        if off % page_size <= page_size - 8:
            offsets.append(off)
        off += max(g * stride, 8)
    names = draw(
        st.lists(
            st.text(
                st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]), min_size=1, max_size=12
            ),
            min_size=1,
            max_size=6,
        )
    )
    imports = [
        Import(n, draw(st.sampled_from([-3, -2, -1, 0, 1, 2, 240, 241, 300])), draw(st.booleans()))
        for n in names
    ]
    addends = st.one_of(
        st.just(0),
        st.integers(0, 255),
        st.integers(-(1 << 18), (1 << 18) - 1),
        st.integers(-(1 << 63), (1 << 63) - 1),
        st.integers(0, 0xFFFF_FFFF),
    )
    kinds = [FixupKind.REBASE, FixupKind.BIND]
    if fmt in ARM64E:
        kinds += [FixupKind.AUTH_REBASE, FixupKind.AUTH_BIND]
    # the widest target each format stores for a plain rebase, and whether it is an offset
    plain_bits = 36 if fmt in (C.DYLD_CHAINED_PTR_64, C.DYLD_CHAINED_PTR_64_OFFSET) else 43
    plain_is_offset = fmt not in (C.DYLD_CHAINED_PTR_64, C.DYLD_CHAINED_PTR_ARM64E)
    rows = []
    for off in offsets:
        kind = draw(st.sampled_from(kinds))
        row = {"address": data_start + off, "kind": int(kind), "segment": 1}
        if kind == FixupKind.REBASE:
            if plain_is_offset:
                row["target"] = base + draw(st.integers(0, (1 << plain_bits) - 1))
            else:
                row["target"] = draw(st.integers(base, (1 << plain_bits) - 1))
            row["high8"] = draw(st.integers(0, 255))
        elif kind == FixupKind.AUTH_REBASE:
            row["target"] = base + draw(st.integers(0, 0xFFFF_FFFF))
        else:
            row["bind"] = draw(st.integers(0, len(imports) - 1))
            row["addend"] = draw(addends)
        if kind in (FixupKind.AUTH_REBASE, FixupKind.AUTH_BIND):
            row["key"] = draw(st.integers(0, 3))
            row["diversity"] = draw(st.integers(0, 0xFFFF))
            row["addr_div"] = draw(st.integers(0, 1))
        rows.append(row)
    return fmt, page_size, pages, base, _records(rows), imports


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fixup_sets(), st.binary(min_size=64, max_size=64))
def test_round_trip(case: tuple[int, int, int, int, np.ndarray, list[Import]], noise: bytes) -> None:
    fmt, page_size, pages, base, records, imports = case
    # garbage in the data segment first: the encoder must own every bit of each pointer
    fill = noise * (pages * page_size // 64)
    image = parse_macho(_build_image(fmt, page_size, pages, records, imports, base, fill=fill), "rt.dylib")
    fixups = read_chained_fixups(image)
    assert _canonical(fixups) == _expected(records, imports)
    if len(records):
        assert fixups.pointer_formats == {1: fmt}
    assert fixups.source == "chained"
    assert (fixups.records["segment"] == 1).all()


@settings(max_examples=60, deadline=None)
@given(_fixup_sets())
def test_blob_layout(case: tuple[int, int, int, int, np.ndarray, list[Import]]) -> None:
    """The layout rules of linker-notes §5.1, checked on the structural view."""
    fmt, page_size, pages, base, records, imports = case
    data = _build_image(fmt, page_size, pages, records, imports, base)
    dataoff, datasize = _blob_of(data)
    info = parse_chained_fixups_blob(data[dataoff : dataoff + datasize], "rt", dataoff)
    h = info.header
    assert h.starts_offset == 32 and datasize % 8 == 0
    assert info.seg_count == 3 and info.segments[0] is None and info.segments[2] is None
    entry = {1: 4, 2: 8, 3: 16}[h.imports_format]
    assert h.imports_offset % (8 if h.imports_format == 3 else 4) == 0
    assert h.symbols_offset == h.imports_offset + entry * h.imports_count
    assert data[dataoff + h.symbols_offset] == 0  # the pool starts with "\0"
    # the imports table starts with the given imports, in order, at addend 0
    assert [imp.to_import() for imp in info.imports[: len(imports)]] == imports
    assert all(imp.addend == 0 for imp in info.imports[: len(imports)])
    if len(records) == 0:
        assert info.seg_info_offsets[1] == 0
        return
    seg = info.segments[1]
    assert seg is not None and info.seg_info_offsets[1] % 8 == 0
    offs = records["address"].astype(np.int64) - (base + page_size)
    assert seg.page_count == int(offs.max()) // page_size + 1
    assert seg.record.size == 22 + 2 * seg.page_count
    assert seg.segment_offset == page_size and seg.page_size == page_size and seg.pointer_format == fmt
    for p in range(seg.page_count):
        mine = offs[(offs // page_size) == p]
        expect = int(mine.min()) % page_size if mine.size else C.DYLD_CHAINED_PTR_START_NONE
        assert seg.page_start[p] == expect
    # imports_format: ld64's choice, from the addends the pointers could not hold
    lo, hi = (-(1 << 18), (1 << 18) - 1) if fmt in ARM64E else (0, 255)
    table = [
        int(r["addend"])
        for r in records
        if r["kind"] == FixupKind.AUTH_BIND or (r["kind"] == FixupKind.BIND and not lo <= r["addend"] <= hi)
    ]
    big = any(a < 0 or a > 0x7FFF_FFFF for a in table) or any(imp.ordinal > 240 for imp in imports)
    assert h.imports_format == (3 if big else 2 if any(table) else 1)


def test_addend_boundaries() -> None:
    """Like lld's chained-fixups-addend.s: which addends stay inline and which table each forces."""
    imports = [Import("_sym", 1)]

    def layout(fmt: int, addend: int, kind: FixupKind = FixupKind.BIND) -> tuple[int, int, int]:
        recs = _records([{"address": 0x4000, "kind": int(kind), "bind": 0, "addend": addend}])
        data = _build_image(fmt, 0x4000, 1, recs, imports, 0)
        dataoff, datasize = _blob_of(data)
        info = parse_chained_fixups_blob(data[dataoff : dataoff + datasize], "b", dataoff)
        ptr = struct.unpack_from("<Q", data, 0x4000)[0]
        return info.header.imports_format, info.header.imports_count, ptr

    p64 = C.DYLD_CHAINED_PTR_64_OFFSET
    # _64 bind: ordinal bits 0-23, addend bits 24-31, bind bit 63
    assert layout(p64, 0) == (1, 1, 1 << 63)
    assert layout(p64, 255) == (1, 1, (1 << 63) | (255 << 24))
    assert layout(p64, 256) == (2, 2, (1 << 63) | 1)  # second entry (_sym, 256), nothing inline
    assert layout(p64, 0x7FFF_FFFF)[:2] == (2, 2)
    assert layout(p64, 0x8000_0000)[:2] == (3, 2)  # dyld would sign-extend an int32 here
    assert layout(p64, -1)[:2] == (3, 2)
    assert layout(p64, 1 << 32)[:2] == (3, 2)
    u24 = C.DYLD_CHAINED_PTR_ARM64E_USERLAND24
    # arm64e bind24: ordinal 0-23, addend 32-50 (19-bit signed), bind bit 62
    assert layout(u24, (1 << 18) - 1) == (1, 1, (1 << 62) | (((1 << 18) - 1) << 32))
    assert layout(u24, -(1 << 18)) == (1, 1, (1 << 62) | ((1 << 18) << 32))
    assert layout(u24, 1 << 18) == (2, 2, (1 << 62) | 1)
    assert layout(u24, -(1 << 18) - 1)[:2] == (3, 2)
    # auth binds never inline: addend 5 goes to an ADDEND entry, auth+bind bits 63 and 62
    assert layout(u24, 5, FixupKind.AUTH_BIND) == (2, 2, (3 << 62) | 1)
    assert layout(u24, 0, FixupKind.AUTH_BIND) == (1, 1, 3 << 62)


# ---------------------------------------------------------------------------------------------
# encoder errors


def test_encoder_rejects() -> None:
    segs = [
        ChainedSegment(0, 0x4000, 0),
        ChainedSegment(0x4000, 0x8000, 0x4000),
        ChainedSegment(0xC000, 0x4000, 0xC000),
    ]
    imports = [Import("_a", 1)]

    def enc(fmt: int, rows: list[dict[str, int]]) -> bytes:
        return encode_chained_fixups(
            segments=segs,
            records=_records(rows),
            imports=imports,
            pointer_format=fmt,
            page_size=0x4000,
            image=bytearray(0x10000),
            base_address=0,
        )

    p64, u24 = C.DYLD_CHAINED_PTR_64_OFFSET, C.DYLD_CHAINED_PTR_ARM64E_USERLAND24
    with pytest.raises(ValueError, match=r"0x4004.*8-byte aligned"):
        enc(u24, [{"address": 0x4004, "kind": 0, "target": 0x10}])
    with pytest.raises(ValueError, match=r"0x4002.*4-byte aligned"):
        enc(p64, [{"address": 0x4002, "kind": 0, "target": 0x10}])
    with pytest.raises(ValueError, match=r"0x7ffc.*straddles"):
        enc(p64, [{"address": 0x7FFC, "kind": 0, "target": 0x10}])
    with pytest.raises(ValueError, match=r"0x4000.*overlaps"):
        enc(p64, [{"address": 0x4000, "kind": 0}, {"address": 0x4004, "kind": 0}])
    with pytest.raises(ValueError, match=r"0x4000.*36 bits"):
        enc(p64, [{"address": 0x4000, "kind": 0, "target": 1 << 36}])
    with pytest.raises(ValueError, match=r"0x4008.*authenticated"):
        enc(p64, [{"address": 0x4008, "kind": int(FixupKind.AUTH_REBASE), "target": 0x10}])
    with pytest.raises(ValueError, match=r"0x4000.*4 GiB"):
        enc(u24, [{"address": 0x4000, "kind": int(FixupKind.AUTH_REBASE), "target": 1 << 32}])
    with pytest.raises(ValueError, match=r"0x4000.*import 1 of 1"):
        enc(u24, [{"address": 0x4000, "kind": 1, "bind": 1}])
    with pytest.raises(ValueError, match=r"0x10000.*not inside any segment"):
        enc(u24, [{"address": 0x10000, "kind": 0}])
    with pytest.raises(ValueError, match=r"0xbffc.*not inside any segment"):
        enc(p64, [{"address": 0xBFFC, "kind": 0}])
    with pytest.raises(ValueError, match="cannot encode"):
        enc(C.DYLD_CHAINED_PTR_32, [])


# ---------------------------------------------------------------------------------------------
# Apple-linked dylibs: llvm-objdump, LIEF, and ld64's own bytes


def check_structure(listing: objdump.ChainedListing, info: ChainedFixupsInfo) -> None:
    """llvm-objdump's --chained-fixups listing == our parse of the blob: header, starts in image,
    starts per segment, imports."""
    h = info.header
    assert listing.header == {
        "fixups_version": h.fixups_version,
        "starts_offset": h.starts_offset,
        "imports_offset": h.imports_offset,
        "symbols_offset": h.symbols_offset,
        "imports_count": h.imports_count,
        "imports_format": h.imports_format,
        "symbols_format": h.symbols_format,
    }
    assert listing.seg_count == info.seg_count
    assert listing.seg_offsets == list(info.seg_info_offsets)
    ours = {}
    for s in info.segments:
        if s is not None:
            r = s.record
            ours[s.segment_index] = {
                "size": r.size,
                "page_size": r.page_size,
                "pointer_format": r.pointer_format,
                "segment_offset": r.segment_offset,
                "max_valid_pointer": r.max_valid_pointer,
                "page_count": r.page_count,
                "page_start": list(s.page_start),
            }
    assert listing.segments == ours
    assert listing.imports == [
        (i.lib_ordinal, int(i.weak), i.name_offset, i.name, i.addend) for i in info.imports
    ]


@pytest.mark.parametrize("name", APPLE_DYLIBS)
def test_structure_matches_llvm_objdump(name: str) -> None:
    path = _apple(name)
    data = path.read_bytes()
    dataoff, datasize = _blob_of(data)
    info = parse_chained_fixups_blob(data[dataoff : dataoff + datasize], str(path), dataoff)
    check_structure(objdump.chained_fixups(path), info)
    assert len(info.imports) > 0


def _dyld_info_rows(path: Path) -> list[tuple[object, ...]]:
    """llvm-objdump --dyld-info rows: (addr, "rebase", target) or (addr, "bind", addend, dylib, symbol)."""
    return [
        (r.address, "rebase", r.target)
        if r.kind == "rebase"
        else (r.address, "bind", r.addend, r.dylib, r.symbol)
        for r in objdump.dyld_info(path)
    ]


def _ours_as_dyld_info(path: Path) -> list[tuple[object, ...]]:
    image = parse_macho(path.read_bytes(), str(path))
    fixups = read_chained_fixups(image)
    rows: list[tuple[object, ...]] = []
    for r in fixups.records:
        if r["kind"] == FixupKind.REBASE:
            rows.append((int(r["address"]), "rebase", int(r["target"])))
        else:
            imp = fixups.imports[int(r["bind"])]
            # llvm-objdump names the dylib by the leaf of its install name, without extension
            leaf = image.dylibs[imp.ordinal - 1].path.rsplit("/", 1)[-1].split(".", 1)[0]
            rows.append((int(r["address"]), "bind", int(r["addend"]), leaf, imp.name))
    return rows


@pytest.mark.parametrize("name", ["fixup-chains-arm64.dylib", "libexports.dylib"])
def test_pointers_match_llvm_objdump(name: str) -> None:
    path = _apple(name)
    expected = _dyld_info_rows(path)
    assert len(expected) > 1
    assert _ours_as_dyld_info(path) == expected


@pytest.mark.parametrize("name", ["fixup-chains-arm64.dylib", "fixup-chains-arm64e.dylib"])
def test_pointers_match_lief(name: str) -> None:
    python_module("lief")
    import lief

    path = _apple(name)
    binary = lief.MachO.parse(str(path)).at(0)
    cf = binary.dyld_chained_fixups
    data = path.read_bytes()
    image = parse_macho(data, str(path))
    fixups = read_chained_fixups(image)
    ptr_format = cf.chained_starts_in_segments[1].pointer_format
    auth_kinds = (
        lief.MachO.ChainedPointerAnalysis.dyld_chained_ptr_arm64e_auth_rebase_t,
        lief.MachO.ChainedPointerAnalysis.dyld_chained_ptr_arm64e_auth_bind24_t,
        lief.MachO.ChainedPointerAnalysis.dyld_chained_ptr_arm64e_auth_bind_t,
    )

    def auth_of(address: int) -> tuple[int, int, int, bool]:
        # LIEF's own bitfield decoder for the raw pointer gives the auth fields
        off = image.address_to_offset(address)
        assert off is not None
        raw = struct.unpack_from("<Q", data, off)[0]
        view = lief.MachO.ChainedPointerAnalysis.from_value(raw, 8).get_as(ptr_format)
        if isinstance(view, auth_kinds):
            return int(view.key), int(view.diversity), int(view.addr_div), True
        return 0, 0, 0, False

    expected = []
    for b in cf.bindings:
        key, div, addr_div, auth = auth_of(b.address)
        # sign_extended_addend is the pointer's inline addend; addend the import's (0 here)
        expected.append(
            (
                b.address,
                FixupKind.AUTH_BIND if auth else FixupKind.BIND,
                b.symbol.name,
                b.library_ordinal,
                b.addend + b.sign_extended_addend,
                key,
                div,
                addr_div,
            )
        )
    for rel in binary.relocations:
        key, div, addr_div, auth = auth_of(rel.address)
        expected.append(
            (
                rel.address,
                FixupKind.AUTH_REBASE if auth else FixupKind.REBASE,
                rel.target,
                None,
                None,
                key,
                div,
                addr_div,
            )
        )
    ours = []
    for r in fixups.records:
        kind = FixupKind(int(r["kind"]))
        if kind in (FixupKind.BIND, FixupKind.AUTH_BIND):
            imp = fixups.imports[int(r["bind"])]
            what: tuple[object, ...] = (imp.name, imp.ordinal, int(r["addend"]))
        else:
            what = (int(r["target"]), None, None)
        ours.append((int(r["address"]), kind, *what, int(r["key"]), int(r["diversity"]), int(r["addr_div"])))
    assert sorted(ours, key=lambda t: t[0]) == sorted(expected, key=lambda t: t[0])  # type: ignore[arg-type,return-value]
    if "arm64e" in name:
        assert {FixupKind.AUTH_BIND, FixupKind.AUTH_REBASE} <= {row[1] for row in ours}


@pytest.mark.parametrize("name", APPLE_DYLIBS)
def test_reencode_gives_ld64_bytes(name: str) -> None:
    """Decoding an ld64 output and encoding it again reproduces ld64's blob and pointers exactly."""
    path = _apple(name)
    data = path.read_bytes()
    image = parse_macho(data, str(path))
    fixups = read_chained_fixups(image)
    (fmt,) = set(fixups.pointer_formats.values())
    blob_bytes, blob_offset = _blob_slice(data)
    info = parse_chained_fixups_blob(blob_bytes, str(path), blob_offset)
    starts = next(s for s in info.segments if s is not None)
    out = bytearray(data)
    for r in fixups.records:  # wipe every pointer: the encoder must rewrite it completely
        off = image.address_to_offset(int(r["address"]))
        out[off : off + 8] = b"\xa5" * 8
    segs = [ChainedSegment(s.vmaddr, s.vmsize, s.fileoff, s.name) for s in image.segments]
    blob = encode_chained_fixups(
        segments=segs,
        records=fixups.records,
        imports=fixups.imports,
        pointer_format=fmt,
        page_size=starts.page_size,
        image=out,
        base_address=image.base_address,
    )
    dataoff, datasize = _blob_of(data)
    assert blob == data[dataoff : dataoff + datasize]
    assert bytes(out) == data


def _blob_slice(data: bytes) -> tuple[bytes, int]:
    dataoff, datasize = _blob_of(data)
    return data[dataoff : dataoff + datasize], dataoff


def test_encoder_output_read_by_llvm_objdump(tmp_path: Path) -> None:
    """Our encoder's formats 2 and 6 decoded by llvm-objdump --dyld-info, pointer by pointer."""
    imports = [Import("_alpha", 1), Import("_beta", 2, weak=True), Import("_gamma", 1)]
    for fmt, base in ((C.DYLD_CHAINED_PTR_64_OFFSET, 0), (C.DYLD_CHAINED_PTR_64, 0x1_0000_0000)):
        d = base + 0x4000
        rows = [
            {"address": d + 0x0, "kind": 1, "bind": 0, "addend": 0},
            {"address": d + 0x8, "kind": 0, "target": base + 0x3F00},
            {"address": d + 0x18, "kind": 1, "bind": 1, "addend": 200},
            {"address": d + 0x1000, "kind": 1, "bind": 2, "addend": 0x12345},  # not inline: ADDEND table
            {"address": d + 0x4008, "kind": 0, "target": base + 0x4010},  # second page
            {"address": d + 0x7FF8, "kind": 1, "bind": 0, "addend": 8},
        ]
        recs = _records(rows)
        raw = _build_image(
            fmt, 0x4000, 2, recs, imports, base, dylibs=("/usr/lib/libone.dylib", "/usr/lib/libtwo.dylib")
        )
        path = tmp_path / f"enc{fmt}.dylib"
        path.write_bytes(raw)
        got = _dyld_info_rows(path)
        leaf = {1: "libone", 2: "libtwo"}
        want: list[tuple[object, ...]] = []
        for row in rows:
            if row["kind"] == 0:
                want.append((row["address"], "rebase", row["target"]))
            else:
                imp = imports[row["bind"]]
                want.append((row["address"], "bind", row["addend"], leaf[imp.ordinal], imp.name))
        assert got == want
        structure = objdump.chained_fixups(path)
        assert structure.header["imports_format"] == C.DYLD_CHAINED_IMPORT_ADDEND
        assert [(o, w, name, a) for o, w, _, name, a in structure.imports] == [
            (1, 0, "_alpha", 0),
            (2, 1, "_beta", 0),
            (1, 0, "_gamma", 0),
            (1, 0, "_gamma", 0x12345),
        ]
        assert structure.segments[1]["page_start"] == [0, 8]


# ---------------------------------------------------------------------------------------------
# robustness: corruptions at known offsets, random bytes, fuzzed files

# fixup-chains-arm64.dylib, by hand from llvm-objdump: __DATA at vmaddr 0x4000 = file 0x4000;
# the blob at 0x8000: starts_in_image at +32, seg_info_offset[1] = 16 so the __DATA starts at
# 0x8030 and page_start[0] at 0x8030 + 22 = 0x8046; imports at 0x8000 + 72 = 0x8048.
# Chain: 0x4000 -> 0x4008 -> 0x4110 -> 0x4118 -> 0x4220 -> 0x4228 -> 0x4330 (next 0).


def _corrupt(patch: dict[int, bytes]) -> bytes:
    data = bytearray(_apple("fixup-chains-arm64.dylib").read_bytes())
    for off, raw in patch.items():
        data[off : off + len(raw)] = raw
    return bytes(data)


def _error_of(data: bytes) -> MachOFormatError:
    with pytest.raises(MachOFormatError) as exc:
        read_chained_fixups(parse_macho(data, "bad.dylib"))
    return exc.value


def test_corrupt_next_out_of_page() -> None:
    # last pointer (bind _close, 0x8000000000000000) given next = 0xFFF: 0x330 + 0xFFF*4 > 0x4000
    value = (1 << 63) | (0xFFF << 51)
    err = _error_of(_corrupt({0x4330: struct.pack("<Q", value)}))
    assert err.offset == 0x4330 and "leaves its page" in err.message


def test_corrupt_bind_ordinal_out_of_range() -> None:
    # first pointer: bind import 2 (_errno), next 2 -> make it import 3 of 3
    value = (1 << 63) | (2 << 51) | 3
    err = _error_of(_corrupt({0x4000: struct.pack("<Q", value)}))
    assert err.offset == 0x4000 and "import 3" in err.message


def test_corrupt_page_start_outside_page() -> None:
    err = _error_of(_corrupt({0x8046: struct.pack("<H", 0x4000)}))
    assert err.offset == 0x8046


def test_corrupt_import_name_offset() -> None:
    # import 0: lib_ordinal 1, name_offset 1 -> name_offset 0x7FFFFF (past the 20-byte pool)
    err = _error_of(_corrupt({0x8048: struct.pack("<I", 1 | (0x7FFFFF << 9))}))
    assert err.offset == 0x8048 and "name_offset" in err.message


def test_corrupt_unterminated_name() -> None:
    # the pool ends with "_errno\0" at blob offset 84+13 = 97..103: overwrite the final NUL
    err = _error_of(_corrupt({0x8000 + 103: b"x"}))
    assert err.offset == 0x8048 + 2 * 4 and "NUL" in err.message


def test_corrupt_seg_count_and_format() -> None:
    assert _error_of(_corrupt({0x8000 + 32: struct.pack("<I", 0x4000_0000)})).offset == 0x8020
    # seg_count 3 given only two segments
    data = _corrupt({})
    image = parse_macho(data, "two.dylib")
    blob, off = _blob_slice(data)
    with pytest.raises(MachOFormatError) as exc:
        decode_chained_fixups(
            parse_chained_fixups_blob(blob, "two.dylib", off), image.segments[:2], data, "two.dylib", 0
        )
    assert exc.value.offset == 0x8020 and "seg_count 3" in exc.value.message
    assert _error_of(_corrupt({0x8030 + 6: struct.pack("<H", 14)})).offset == 0x8036  # pointer_format
    assert _error_of(_corrupt({0x8030 + 8: struct.pack("<Q", 0x8000)})).offset == 0x8038  # segment_offset


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_blobs_raise_only_format_errors(blob: bytes) -> None:
    try:
        parse_chained_fixups_blob(blob, "random", 0x1000)
    except MachOFormatError as exc:
        assert exc.offset is not None and 0x1000 <= exc.offset <= 0x1000 + len(blob)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(APPLE_DYLIBS),
    st.lists(st.tuples(st.integers(0, 0x4400), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_dylibs_raise_only_format_errors(name: str, edits: list[tuple[int, int]]) -> None:
    data = bytearray(_apple(name).read_bytes())
    for where, value in edits:
        # half the edits land in __DATA (the chains), half in the blob at 0x8000
        off = 0x4000 + where if where < 0x4000 else 0x8000 + (where - 0x4000) % 104
        if off < len(data):
            data[off] = value
    with contextlib.suppress(MachOFormatError):
        read_chained_fixups(parse_macho(bytes(data), name))


def test_fuzzed_files() -> None:
    folder = shared_path("data", "fuzzed")
    parsed = 0
    for entry in sorted(os.listdir(folder)):
        raw = (folder / entry).read_bytes()
        # every window of the file as a blob
        for start in range(0, min(len(raw), 1 << 16), 61):
            with contextlib.suppress(MachOFormatError):
                parse_chained_fixups_blob(raw[start : start + 512], entry, start)
        try:
            image = parse_macho(raw, entry)
        except MachOFormatError:
            continue
        parsed += 1
        if image.has_chained_fixups:
            with contextlib.suppress(MachOFormatError):
                read_chained_fixups(image)
    assert parsed > 0


# ---------------------------------------------------------------------------------------------
# the chain walk against a walker written here from <mach-o/fixup-chains.h>, one pointer at a time:
# a chain starts at page_start[page] and each pointer's ``next`` (bits 51.., in stride units; 0
# ends the chain) must land on a pointer that still ends inside the page and the segment's bytes

#: (stride, width of next, the top bits a plain rebase keeps clear, target bits, high8 shift)
_WALK_FORMATS = {
    C.DYLD_CHAINED_PTR_64: (4, 12, 1, 36, 36),
    C.DYLD_CHAINED_PTR_ARM64E: (8, 11, 2, 43, 43),
}


@dataclass(frozen=True)
class _Seg:
    vmaddr: int
    fileoff: int
    filesize: int


def _walk_blob(fmt: int, page_size: int, page_start: list[int]) -> bytes:
    """An LC_DYLD_CHAINED_FIXUPS blob by hand: segment 0 without fixups, segment 1 with these
    page starts, no imports."""
    seg = ChainedStartsInSegment(22 + 2 * len(page_start), page_size, fmt, page_size, 0, len(page_start))
    starts = (
        struct.pack("<3I", 2, 0, 16)
        + bytes(4)
        + seg.pack()
        + struct.pack(f"<{len(page_start)}H", *page_start)
    )
    imports_offset = (32 + len(starts) + 3) // 4 * 4
    header = ChainedFixupsHeader(0, 32, imports_offset, imports_offset, 0, C.DYLD_CHAINED_IMPORT, 0)
    return header.pack().ljust(32, b"\0") + starts.ljust(imports_offset - 32, b"\0") + b"\0\0\0\0"


def _reference_walk(
    fmt: int, page_size: int, page_start: list[int], data: bytes, seg: _Seg, blob_offset: int
) -> list[tuple[int, int, int]] | tuple[int, str]:
    """(address, target, high8) of every pointer on the chains, or the first (offset, message)."""
    stride, next_bits, _, target_bits, high8_shift = _WALK_FORMATS[fmt]
    seg_end = min(seg.filesize, len(data) - seg.fileoff)
    out = []
    for page, start in enumerate(page_start):
        if start == C.DYLD_CHAINED_PTR_START_NONE:
            continue
        page_off = page * page_size
        end = min(page_off + page_size, seg_end)
        pos = page_off + start
        if pos + 8 > end:
            return (
                blob_offset + 32 + 16 + 22 + 2 * page,
                f"chained fixups: segment 1 page {page}: chain start {start:#x} "
                "is outside the segment's file content",
            )
        while True:
            word = int.from_bytes(data[seg.fileoff + pos : seg.fileoff + pos + 8], "little")
            out.append((seg.vmaddr + pos, word & ((1 << target_bits) - 1), (word >> high8_shift) & 0xFF))
            step = (word >> 51) & ((1 << next_bits) - 1)
            if step == 0:
                break
            if pos + step * stride + 8 > end:
                return (
                    seg.fileoff + pos,
                    f"chained fixups: next {step} of the pointer at segment offset {pos:#x} leaves its page "
                    f"({page_off:#x}..{end:#x})",
                )
            pos += step * stride
    return sorted(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_WALK_FORMATS)), st.sampled_from([0x1000, 0x4000]), st.data())
def test_chain_walk_matches_a_pointer_by_pointer_walk(fmt: int, page_size: int, data: st.DataObject) -> None:
    stride, next_bits, clear_bits, _, _ = _WALK_FORMATS[fmt]
    pages = data.draw(st.integers(1, 4))
    size = pages * page_size - data.draw(st.sampled_from([0, 0, 8, 0x300, page_size - 8]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    body = bytearray(rng.integers(0, 256, page_size + size, dtype=np.uint8).tobytes())
    # every word a plain rebase (no bind or auth bits), so that only the chains can go wrong
    for at in range(page_size + 7, len(body), stride):
        body[at] &= 0xFF >> clear_bits
    # as linkers lay pointers out (8-byte aligned, so steps a whole pointer apart: the walk
    # without doubling), or anywhere on the stride
    unit = 8 if data.draw(st.booleans()) else stride
    page_start = []
    for page in range(pages):
        if data.draw(st.integers(0, 5)) == 0:
            page_start.append(C.DYLD_CHAINED_PTR_START_NONE)
            continue
        pos = data.draw(st.integers(0, page_size // unit - 2)) * unit
        page_start.append(pos)

        def put(at: int, step: int, page: int = page) -> None:
            word_at = page_size + page * page_size + at
            if word_at + 8 <= len(body):
                word = int.from_bytes(body[word_at : word_at + 8], "little") & ~(((1 << next_bits) - 1) << 51)
                body[word_at : word_at + 8] = (word | step << 51).to_bytes(8, "little")

        # a chain of small steps (sometimes a few large ones), ended by next = 0 or, now and
        # then, by any next at all (mostly one that leaves the page)
        for _ in range(data.draw(st.integers(0, 3) | st.integers(0, 600))):
            step = data.draw(st.integers(2 if stride == 4 else 1, 5) | st.integers(0, 1 << (next_bits - 3)))
            step = step // (unit // stride) * (unit // stride) if data.draw(st.integers(0, 9)) else step
            # 0 here: to the last pointer that fits in the page (or in the segment's bytes)
            room = min(page_size, size - page * page_size) - 8 - pos
            step = step or data.draw(st.sampled_from([room // stride, (page_size - 8 - pos) // stride]))
            if step <= 0 or step >> next_bits or pos + step * stride + 8 > page_size:
                break
            put(pos, step)
            pos += step * stride
        # one past the last pointer that fits, or anything
        past = (min(page_size, size - page * page_size) - 8 - pos) // stride + 1
        bad = data.draw(st.sampled_from([past, past, 1]) | st.integers(1, (1 << next_bits) - 1))
        put(pos, 0 if data.draw(st.integers(0, 5)) else min(max(bad, 1), (1 << next_bits) - 1))
    blob = _walk_blob(fmt, page_size, page_start)
    blob_offset = len(body)
    info = parse_chained_fixups_blob(blob, "walk", blob_offset)
    segments = [_Seg(0x10000, 0, page_size), _Seg(0x10000 + page_size, page_size, size)]
    expected = _reference_walk(fmt, page_size, page_start, bytes(body), segments[1], blob_offset)
    try:
        fixups = decode_chained_fixups(info, segments, bytes(body), "walk", 0x10000)
    except MachOFormatError as exc:
        assert (exc.offset, exc.message) == expected
    else:
        got = [(int(r["address"]), int(r["target"]), int(r["high8"])) for r in fixups.records]
        assert got == expected
        assert (fixups.records["kind"] == FixupKind.REBASE).all()


@pytest.mark.parametrize(
    ("chains", "expected"),
    [
        # 8-byte aligned, whole-pointer steps: walked without doubling
        ({0: [(8, 2), (16, 4), (32, 0)], 1: [(0x1000, 0)]}, [8, 16, 32, 0x1000]),
        # a 12-byte step between pointers (next 3 at a 4-byte stride) mid-chain
        ({0: [(8, 3), (20, 2), (28, 0)]}, [8, 20, 28]),
        # chains of two pages at different offsets modulo 8
        ({0: [(8, 2), (16, 0)], 1: [(0x1004, 2), (0x100C, 0)]}, [8, 16, 0x1004, 0x100C]),
    ],
)
def test_chain_walk_steps_between_pointers(
    chains: dict[int, list[tuple[int, int]]], expected: list[int]
) -> None:
    """Chains written by hand (DYLD_CHAINED_PTR_64: next at bit 51, in 4-byte units), walked with
    and without the fast path for 8-byte aligned chains; a few other words hold next fields that
    would lead a walk astray."""
    fmt = POINTER_FORMATS[C.DYLD_CHAINED_PTR_64]
    data = bytearray(0x1000 * len(chains) + 0x100)
    for decoy in (0, 12, 24, 40, 0x1008):
        data[decoy : decoy + 8] = (1 << 52).to_bytes(8, "little")
    for links in chains.values():
        for at, step in links:
            data[at : at + 8] = (0x5000 + at | step << 51).to_bytes(8, "little")
    walk = ChainWalk(fmt, 0x1000, len(data), bytes(data), 0)
    starts = np.array([links[0][0] for links in chains.values()], dtype=np.int64)
    for at, values, bad in (walk.batch(starts, 0, 2), walk._doubled(starts, 0, len(data))):
        assert at.tolist() == expected
        assert (values & ((1 << 36) - 1)).tolist() == [0x5000 + a for a in expected]
        assert not bad.any()
