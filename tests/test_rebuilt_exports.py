"""The export trie the cache writes per dylib (builder/rebuilt_exports.py): linker-only exports
dropped, offsets moved, padded to 8, and the phase 1 size bound, against trie_oracle's writer;
and the moves of the exported offsets (remove_unused_linkedit.export_moves) against dyld's rule."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trie_oracle import (
    KIND_ABSOLUTE,
    NAMES,
    REEXPORT,
    STUB_AND_RESOLVER,
    export_fields,
    reference_payload,
    reference_trie,
)

from dyldcache.builder.export_table import ExportTable
from dyldcache.builder.optimizers.remove_unused_linkedit import export_moves
from dyldcache.builder.rebuilt_exports import (
    ESTIMATE_DELTA,
    encode_exports,
    exports_size_bound,
    rebuilt_trie_nodes,
)
from dyldcache.macho.exports_trie import Export
from dyldcache.names import encode_name

# names the linker reads and the cache drops (ld64's $ld$ hints, the old ObjC class symbols)
_DROPPED = ("$ld$", ".objc_class_name", ".objc_category_name")
_names = st.one_of(NAMES, st.tuples(st.sampled_from(_DROPPED), NAMES).map("".join))
# input offsets below 2**40: moved by up to 2 GiB they stay within 64 bits
_exports = export_fields(_names, st.integers(0, 2**40)).map(lambda fields: [Export(**f) for f in fields])  # type: ignore[arg-type]


def _encode(exports: list[Export], delta: dict[str, int]) -> bytes:
    """The builder's trie, the moves given per name (an export that does not move gets a
    bogus one, which it must ignore)."""
    table = ExportTable(exports)
    moves = [delta[e.name] if _moves(e) else 1 << 40 for e in exports]
    return encode_exports(table, rebuilt_trie_nodes(table), np.array(moves, dtype=np.int64))


def _bound(exports: list[Export]) -> int:
    table = ExportTable(exports)
    return exports_size_bound(table, rebuilt_trie_nodes(table))


def _moves(e: Export) -> bool:
    return not e.flags & REEXPORT and e.flags & 3 != KIND_ABSOLUTE


def _expected(exports: list[Export], delta: dict[str, int]) -> bytes:
    entries = {}
    for e in exports:
        if e.name.startswith(_DROPPED):
            continue
        d = delta[e.name] if _moves(e) else 0
        resolver = e.resolver + d if e.flags & STUB_AND_RESOLVER else e.resolver
        payload = reference_payload(e.flags, e.address + d, resolver, e.ordinal, encode_name(e.import_name))
        entries[encode_name(e.name)] = payload
    raw = reference_trie(entries)
    return raw + bytes(-len(raw) % 8)


@settings(max_examples=300)
@given(_exports, st.data())
def test_rebuilt_trie_matches_reference(exports: list[Export], data: st.DataObject) -> None:
    delta = {e.name: data.draw(st.integers(-min(e.address, e.resolver), ESTIMATE_DELTA)) for e in exports}
    raw = _encode(exports, delta)
    assert raw == _expected(exports, delta)
    # the bound is the trie with every offset moved by 2 GiB, and no layout's trie is larger
    bound = _bound(exports)
    assert bound == len(_expected(exports, dict.fromkeys(delta, ESTIMATE_DELTA)))
    if all(d >= 0 for d in delta.values()):
        assert len(raw) <= bound


def test_moves_past_64_bits_are_rejected() -> None:
    near_top = Export("_f", 0, 2**64 - 0x1000)
    with pytest.raises(ValueError, match="'_f': a field does not fit in 64 bits"):
        _bound([Export("_a", 0, 0x10), near_top])
    with pytest.raises(ValueError, match="'_f': a field does not fit in 64 bits"):
        _encode([near_top], {"_f": 0x1000})
    # below 0 is out of 64 bits too
    with pytest.raises(ValueError, match="'_f': a field does not fit in 64 bits"):
        _encode([Export("_a", 0, 0x10), Export("_f", 0, 0x10)], {"_a": 0, "_f": -0x11})
    assert _encode([near_top], {"_f": 0xFFF}) == _expected([near_top], {"_f": 0xFFF})
    # an absolute value does not move, so it may sit anywhere; nor does a dropped export count
    top = Export("_abs", KIND_ABSOLUTE, 2**64 - 1)
    dropped = Export("$ld$hide$_g", 0, 2**64 - 1)
    assert _bound([top, dropped]) == len(_expected([top], {}))


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        _bound([Export("_a", 0, 1), Export("_a", 0, 2)])


@dataclass
class _Segment:
    input_vmaddr: int
    input: SimpleNamespace
    chunk: object | None
    slide: int


@settings(max_examples=200)
@given(
    st.integers(0, 2**40),
    st.lists(
        st.tuples(st.integers(0, 2**33), st.integers(0, 2**20), st.integers(-(2**32), 2**32), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.one_of(st.integers(0, 2**34), st.integers(2**64 - 2**34, 2**64 - 1)), max_size=30),
)
def test_export_moves_follow_the_segment_holding_each_offset(
    base: int, segments: list[tuple[int, int, int, bool]], offsets: list[int]
) -> None:
    # dyld's rule for an exported offset: the first segment (in load command order) whose
    # [vmaddr, vmaddr + vmsize) holds base + offset decides; it moves by that segment's slide
    # less __TEXT's, unless the segment is not copied (no chunk: __LINKEDIT); none: no move
    segs = [
        _Segment(start, SimpleNamespace(vmsize=size), object() if copied else None, slide)
        for start, size, slide, copied in segments
    ]
    segs[0].chunk = object()
    dylib = SimpleNamespace(image=SimpleNamespace(base_address=base), text=segs[0], segments=segs)
    # offsets that land in the segments, at their edges, and anywhere
    offsets += [s.input_vmaddr + d - base for s in segs for d in (0, s.input.vmsize - 1, s.input.vmsize)]
    # and offsets so large that base + offset, cut to 64 bits, would land in one (it does not)
    offsets += [2**64 - base + s.input_vmaddr for s in segs]
    offsets = [o for o in offsets if 0 <= o < 2**64]

    def expected(offset: int) -> int:
        for s in segs:
            if s.input_vmaddr <= base + offset < s.input_vmaddr + s.input.vmsize:
                return s.slide - segs[0].slide if s.chunk is not None else 0
        return 0

    got = export_moves(dylib, np.array(offsets, dtype=np.uint64))  # type: ignore[arg-type]
    assert got.tolist() == [expected(o) for o in offsets]
