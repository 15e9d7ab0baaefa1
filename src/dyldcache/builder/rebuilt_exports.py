"""A dylib's export trie as the cache holds it: the input's exports without the linker-only
ones, each offset moved by how far its segment moved relative to __TEXT, padded to 8 bytes.

Phase 1's workers size it (an upper bound that holds whatever the layout: every offset bumped
by 2 GiB, since ULEB128 lengths only grow with the value), so that phase 3 places the LINKEDIT
piece without building any trie in the builder process; phase 5 builds the real one, per dylib
(``optimizers/remove_unused_linkedit.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..macho.exports_trie import Export, TrieShape, export_payload
from ..names import encode_name

#: exports the linker reads and the cache drops
SKIPPED_EXPORT_PREFIXES = ("$ld$", ".objc_class_name", ".objc_category_name")
#: added to every moved offset for the size bound
ESTIMATE_DELTA = 1 << 31


def encode_exports(exports: list[Export], delta: Callable[[Export], int]) -> bytes:
    """The trie of the cached ``exports`` (the input's, in trie order), each regular or
    thread-local offset (and resolver) moved by ``delta(export)``; padded to 8 bytes."""
    kept = [e for e in exports if not e.name.startswith(SKIPPED_EXPORT_PREFIXES)]
    shape = TrieShape(encode_name(e.name) for e in kept)
    payloads = []
    for e in kept:
        if e.is_reexport or e.is_absolute:
            payloads.append(export_payload(e))
            continue
        d = delta(e)
        resolver = e.resolver + d if e.is_resolver else e.resolver
        payloads.append(
            export_payload(Export(e.name, e.flags, e.address + d, resolver, e.ordinal, e.import_name))
        )
    raw = shape.encode(payloads)
    return raw + bytes(-len(raw) % 8)


def exports_size_bound(exports: list[Export]) -> int:
    """Bytes the rebuilt trie can take at most, whatever the layout."""
    return len(encode_exports(exports, lambda _e: ESTIMATE_DELTA))
