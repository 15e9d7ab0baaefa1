"""The VM layout rules of ``docs/cache-format.md`` §7.2-§7.3, checked on built caches through the
test-side reader (the mapping arrays of every file, in build order, and the dynamic data reserve
the main header names):

- contiguous layouts (arm64, arm64e): 32 MiB of padding between two consecutive regions exactly
  where §7.2's table asks for it, none elsewhere;
- discontiguous layout (x86_64): every file starts on 1 GiB, and inside a file a region starts on
  1 GiB exactly when the write bit of its max protection differs from the previous region's.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from cache_fixtures import CacheFactory, RawCache

from dyldcache.builder.layout import RegionKind, needs_padding

MiB = 1 << 20
GiB = 1 << 30
REGION_PADDING = 32 * MiB
_R, _W, _X = 1, 2, 4
#: dyld_cache_mapping_and_slide_info.flags
_AUTH_DATA = 0x1
#: the dynamic data reserve dyld maps after the last LINKEDIT (§12.1), rounded like a region
_REGION_ALIGN = 0x4000


@dataclass(frozen=True)
class Span:
    """An address-reserving region of the cache: a mapping, or the dynamic data reserve."""

    kind: str  # text, data_const, data, auth, auth_const, linkedit, dynamic_config
    address: int
    end: int
    max_prot: int
    file: int  # index of its file in build order


def _kind(max_prot: int, init_prot: int, flags: int) -> str:
    if max_prot == _R | _X:
        return "text"
    if max_prot == _R:
        return "linkedit"
    auth = bool(flags & _AUTH_DATA)
    if not init_prot & _W:
        return "auth_const" if auth else "data_const"
    return "auth" if auth else "data"


def _spans(raw: RawCache) -> list[Span]:
    files = raw.files + ([raw.symbols] if raw.symbols is not None else [])
    spans = []
    for k, f in enumerate(files):
        for mp in f.mappings:
            spans.append(Span(_kind(mp.max_prot, mp.init_prot, mp.flags), mp.address, mp.end, mp.max_prot, k))
        if k == len(raw.files) - 1:  # the reserve follows the last mapped file's LINKEDIT
            start = raw.base + raw.main.field("dynamicDataOffset")
            size = -(-raw.main.field("dynamicDataMaxSize") // _REGION_ALIGN) * _REGION_ALIGN
            spans.append(Span("dynamic_config", start, start + size, _R, k))
    return sorted(spans, key=lambda s: s.address)


def _needs_padding(prev: Span, nxt: Span) -> bool:
    """§7.2's table: is there 32 MiB between ``prev`` and ``nxt``?"""
    writable_init = nxt.kind in ("data", "auth")
    if prev.kind == "text":
        return writable_init
    if prev.kind in ("data", "auth"):
        if prev.kind == "auth" and nxt.kind == "auth_const":
            return False
        return not writable_init
    if prev.kind in ("data_const", "auth_const"):
        return nxt.kind not in ("data_const", "auth_const")
    if prev.kind in ("linkedit", "dynamic_config"):
        return bool(nxt.max_prot & _W)
    raise AssertionError(prev.kind)


@pytest.mark.parametrize(
    "key", ["arm64", "arm64-multi", "arm64e-macos", "arm64e-ios", "arm64e-ios-multi", "arm64e-macos-multi"]
)
def test_contiguous_layout_pads_where_page_tables_must_differ(cache_factory: CacheFactory, key: str) -> None:
    raw = RawCache(cache_factory.build(key).main)
    spans = _spans(raw)
    assert spans[0].address == raw.base
    padded = 0
    for prev, nxt in itertools.pairwise(spans):
        gap = nxt.address - prev.end
        expected = REGION_PADDING if _needs_padding(prev, nxt) else 0
        assert gap == expected, f"{prev.kind} -> {nxt.kind} at {nxt.address:#x}: gap {gap:#x}"
        padded += gap == REGION_PADDING
    assert padded >= 2, "every such cache has TEXT -> DATA and DATA -> LINKEDIT pads"


@pytest.mark.parametrize("key", ["x86_64", "x86_64-multi", "x86_64-v1"])
def test_discontiguous_layout_puts_files_and_write_changes_on_1_gib(
    cache_factory: CacheFactory, key: str
) -> None:
    raw = RawCache(cache_factory.build(key).main)
    spans = _spans(raw)
    assert spans[0].address == raw.base
    aligned = 0
    for prev, nxt in itertools.pairwise(spans):
        if nxt.file != prev.file or (prev.max_prot & _W) != (nxt.max_prot & _W):
            assert nxt.address % GiB == 0, f"{prev.kind} -> {nxt.kind} at {nxt.address:#x}"
            aligned += 1
        else:
            assert nxt.address == prev.end, f"{prev.kind} -> {nxt.kind}: {prev.end:#x} != {nxt.address:#x}"
    assert aligned >= 2
    for f in raw.files:
        assert f.field("sharedRegionStart") % GiB == 0


#: dyld_cache_slide_pointer3/5: bit 63 is `auth`; the chain step is an 11-bit count of 8 bytes
_NEXT_SHIFT = {3: 51, 5: 52}
_NO_REBASE = 0xFFFF


def _authenticated_locations(raw: RawCache) -> dict[int, list[int]]:
    """Mapping flags -> the cache addresses of every authenticated pointer slid in mappings
    with those flags (slide info v3 and v5, §2.11 and §2.13, walked here from the file bytes)."""
    out: dict[int, list[int]] = {}
    for f in raw.files:
        for mp in f.mappings:
            if not mp.slide_info_size:
                continue
            version, page_size, count = struct.unpack_from("<3I", f.data, mp.slide_info_offset)
            assert version in _NEXT_SHIFT
            starts = struct.unpack_from(f"<{count}H", f.data, mp.slide_info_offset + 24)
            for page, start in enumerate(starts):
                if start == _NO_REBASE:
                    continue
                offset = page * page_size + start
                while True:
                    (value,) = struct.unpack_from("<Q", f.data, mp.file_offset + offset)
                    if value >> 63:
                        out.setdefault(mp.flags, []).append(mp.address + offset)
                    step = (value >> _NEXT_SHIFT[version]) & 0x7FF
                    if not step:
                        break
                    offset += step * 8
    return out


@pytest.mark.parametrize("key", ["arm64e-ios", "arm64e-macos", "arm64e-ios-multi"])
def test_authenticated_pointers_lie_in_auth_mappings(cache_factory: CacheFactory, key: str) -> None:
    """The kernel slides a mapping without AUTH_DATA with VM_PROT_NOAUTH (§12.1): a signed
    pointer there would never be signed, so every one must be in an AUTH or AUTH_CONST mapping."""
    raw = RawCache(cache_factory.build(key).main)
    found = _authenticated_locations(raw)
    assert sum(len(v) for v in found.values()) > 0, "the arm64e examples have signed pointers"
    misplaced = {flags: [hex(a) for a in v[:3]] for flags, v in found.items() if not flags & _AUTH_DATA}
    assert misplaced == {}


_LC_SEGMENT_64 = 0x19
_LC_SEGMENT_SPLIT_INFO = 0x1E
_SECTION_SIZE = 80
_OBJC_CLASS_LISTS = {"__objc_classlist", "__objc_catlist", "__objc_catlist2"}


@dataclass(frozen=True)
class InputSegment:
    name: str
    vmaddr: int
    vmsize: int
    init_prot: int
    sections: frozenset[str]


def _input_segments(data: bytes) -> list[InputSegment]:
    (ncmds,) = struct.unpack_from("<I", data, 16)
    out, off = [], 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == _LC_SEGMENT_64:
            name = data[off + 8 : off + 24].split(b"\0")[0].decode()
            vmaddr, vmsize = struct.unpack_from("<2Q", data, off + 24)
            init_prot, nsects = struct.unpack_from("<iI", data, off + 60)
            sects = frozenset(
                data[off + 72 + k * _SECTION_SIZE : off + 88 + k * _SECTION_SIZE].split(b"\0")[0].decode()
                for k in range(nsects)
            )
            out.append(InputSegment(name, vmaddr, vmsize, init_prot, sects))
        off += size
    return out


def _expected_region(
    seg: InputSegment, arm64e: bool, split_v2: bool, const_ok: bool, auth_fixups: bool
) -> str:
    """§7.6 "Segment -> region" (with §8.3 for the *_CONST segments)."""
    if seg.init_prot in (_R | _X, _R):
        return "text"
    if not split_v2:
        return "data"
    if seg.name == "__OBJC_CONST":
        return "auth_const" if arm64e else "data_const"
    if seg.name == "__DATA_DIRTY":
        return "auth" if arm64e else "data"
    auth = arm64e and (
        seg.name in ("__AUTH", "__AUTH_CONST")
        or auth_fixups
        or bool(seg.sections & {"__objc_const", "__objc_data"})
    )
    const = seg.name.endswith("_CONST")
    if auth:
        return "auth_const" if const and const_ok else "auth"
    return "data_const" if const and const_ok else "data"


@pytest.mark.parametrize(
    "key", ["arm64", "arm64e-ios", "arm64e-macos", "x86_64", "x86_64-v1", "arm64-opcodes"]
)
def test_every_segment_goes_to_the_region_of_its_kind(cache_factory: CacheFactory, key: str) -> None:
    """Each cached segment lies in the mapping §7.6 gives it, from the input's protections,
    names, sections, split seg version and (LIEF) signed fixups."""
    from oracles import AUTH_BIND, AUTH_REBASE, lief_chained_fixups, load_command_payload

    built = cache_factory.build(key)
    raw = RawCache(built.main)
    arm64e = built.spec.arch == "arm64e"
    regions: dict[str, int] = {}
    for path, _addr in raw.images:
        data = Path(built.input_path(path)).read_bytes()
        split = load_command_payload(data, _LC_SEGMENT_SPLIT_INFO)
        split_v2 = split is not None and split[:1] == b"\x7f"
        names = set().union(*(s.sections for s in _input_segments(data)))
        # pointer-based method lists (no __objc_methlist) may be written by libobjc (§8.3)
        const_ok = not (names & _OBJC_CLASS_LISTS and "__objc_methlist" not in names)
        signed = (
            [
                f.address
                for f in lief_chained_fixups(built.input_path(path))
                if f.kind in (AUTH_REBASE, AUTH_BIND)
            ]
            if arm64e
            else []
        )
        cached = {s.name: s for s in raw.segments(path)}
        for seg in _input_segments(data):
            if seg.name == "__LINKEDIT":
                continue
            auth_fixups = any(seg.vmaddr <= a < seg.vmaddr + seg.vmsize for a in signed)
            want = _expected_region(seg, arm64e, split_v2, const_ok, auth_fixups)
            _f, mp = raw.locate(cached[seg.name].vmaddr)
            got = _kind(mp.max_prot, mp.init_prot, mp.flags)
            assert got == want, f"{path} {seg.name}: in {got}, expected {want}"
            regions[want] = regions.get(want, 0) + 1
    assert len(regions) >= 2, regions


#: §7.2's regions that reserve addresses, with (initProt writable, maxProt writable) from §7.1
_REGION_WRITES = {
    "TEXT": (False, False),
    "DATA_CONST": (False, True),
    "DATA": (True, True),
    "AUTH": (True, True),
    "AUTH_CONST": (False, True),
    "LINKEDIT": (False, False),
    "DYNAMIC_CONFIG": (False, False),
}


def _table_pads(prev: str, nxt: str) -> bool:
    """§7.2's table by region name (written from the doc, not from the builder)."""
    init_w, max_w = _REGION_WRITES[nxt]
    if prev == "TEXT":
        return init_w
    if prev in ("DATA", "AUTH"):
        return not (prev == "AUTH" and nxt == "AUTH_CONST") and not init_w
    if prev in ("DATA_CONST", "AUTH_CONST"):
        return nxt not in ("DATA_CONST", "AUTH_CONST")
    assert prev in ("LINKEDIT", "DYNAMIC_CONFIG")
    return max_w


@pytest.mark.parametrize("prev", sorted(_REGION_WRITES))
def test_needs_padding_follows_the_table_for_every_pair_of_regions(prev: str) -> None:
    """Every pair, also those the test caches never put side by side (LINKEDIT or the dynamic
    config before a writable region happens only across files)."""
    for nxt in _REGION_WRITES:
        expected = _table_pads(prev, nxt)
        assert needs_padding(RegionKind[prev], RegionKind[nxt]) is expected, (prev, nxt)
