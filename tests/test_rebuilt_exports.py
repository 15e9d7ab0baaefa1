"""The export trie the cache writes per dylib (builder/rebuilt_exports.py): linker-only exports
dropped, offsets moved, padded to 8, and the phase 1 size bound, against trie_oracle's writer."""

from __future__ import annotations

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

from dyldcache.builder.rebuilt_exports import ESTIMATE_DELTA, encode_exports, exports_size_bound
from dyldcache.macho.exports_trie import Export
from dyldcache.names import encode_name

# names the linker reads and the cache drops (ld64's $ld$ hints, the old ObjC class symbols)
_DROPPED = ("$ld$", ".objc_class_name", ".objc_category_name")
_names = st.one_of(NAMES, st.tuples(st.sampled_from(_DROPPED), NAMES).map("".join))
# input offsets below 2**40: moved by up to 2 GiB they stay within 64 bits
_exports = export_fields(_names, st.integers(0, 2**40)).map(lambda fields: [Export(**f) for f in fields])  # type: ignore[arg-type]


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

    def moved_by(e: Export) -> int:
        # only offsets in the image move: a re-export's or an absolute value's never asks
        assert _moves(e), e
        return delta[e.name]

    raw = encode_exports(exports, moved_by)
    assert raw == _expected(exports, delta)
    # the bound is the trie with every offset moved by 2 GiB, and no layout's trie is larger
    bound = exports_size_bound(exports)
    assert bound == len(_expected(exports, dict.fromkeys(delta, ESTIMATE_DELTA)))
    if all(d >= 0 for d in delta.values()):
        assert len(raw) <= bound


def test_moves_past_64_bits_are_rejected() -> None:
    near_top = Export("_f", 0, 2**64 - 0x1000)
    with pytest.raises(ValueError, match="64 bits"):
        exports_size_bound([Export("_a", 0, 0x10), near_top])
    with pytest.raises(ValueError, match="64 bits"):
        encode_exports([near_top], lambda _e: 0x1000)
    assert encode_exports([near_top], lambda _e: 0xFFF) == _expected([near_top], {"_f": 0xFFF})
    # an absolute value does not move, so it may sit anywhere
    top = Export("_abs", KIND_ABSOLUTE, 2**64 - 1)
    assert exports_size_bound([top]) == len(_expected([top], {}))


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        exports_size_bound([Export("_a", 0, 1), Export("_a", 0, 2)])
