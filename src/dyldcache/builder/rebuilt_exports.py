"""A dylib's export trie as the cache holds it: the input's exports without the linker-only
ones, each offset moved by how far its segment moved relative to __TEXT, padded to 8 bytes.

Phase 1's workers size it (an upper bound that holds whatever the layout: every offset bumped
by 2 GiB, since ULEB128 lengths only grow with the value), so that phase 3 places the LINKEDIT
piece without building any trie in the builder process; phase 5 builds the real one, per dylib
(``optimizers/remove_unused_linkedit.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..macho import constants as C
from ..macho.exports_trie import Export, TrieShape, export_payload_sizes, packed_export_payloads
from ..names import encode_name

#: exports the linker reads and the cache drops
SKIPPED_EXPORT_PREFIXES = ("$ld$", ".objc_class_name", ".objc_category_name")
#: added to every moved offset for the size bound
ESTIMATE_DELTA = 1 << 31


def encode_exports(exports: list[Export], delta: Callable[[Export], int]) -> bytes:
    """The trie of the cached ``exports`` (the input's, in trie order), each regular or
    thread-local offset (and resolver) moved by ``delta(export)``; padded to 8 bytes."""
    kept = _kept(exports)
    shape = TrieShape(encode_name(e.name) for e in kept)
    moves = [delta(e) if _moves(e.flags) else 0 for e in kept]
    raw = shape.encode_packed(*packed_export_payloads(kept, moves))
    return raw + bytes(-len(raw) % 8)


def exports_size_bound(exports: list[Export]) -> int:
    """Bytes the rebuilt trie can take at most, whatever the layout: the length of
    :func:`encode_exports` with every delta ``ESTIMATE_DELTA``, without writing it."""
    kept = _kept(exports)
    shape = TrieShape(encode_name(e.name) for e in kept)
    moves = [ESTIMATE_DELTA if _moves(e.flags) else 0 for e in kept]
    size = shape.size(export_payload_sizes(kept, moves))
    return size + -size % 8


def _kept(exports: list[Export]) -> list[Export]:
    return [e for e in exports if not e.name.startswith(SKIPPED_EXPORT_PREFIXES)]


def _moves(flags: int) -> bool:
    """Whether an export's address is an offset in the image, which moves with its segment
    (not a re-export's, nor an absolute value)."""
    return not flags & C.EXPORT_SYMBOL_FLAGS_REEXPORT and (
        flags & C.EXPORT_SYMBOL_FLAGS_KIND_MASK != C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE
    )
