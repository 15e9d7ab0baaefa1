"""A dylib's export trie as the cache holds it: the input's exports without the linker-only
ones, each offset moved by how far its segment moved relative to __TEXT, padded to 8 bytes.

Phase 1's workers build the trie's shape (its nodes: which key ends where, the edge labels as
ranges of the export table's names) and size it: an upper bound that holds whatever the layout
(every offset bumped by 2 GiB, since ULEB128 lengths only grow with the value), so that phase 3
places the LINKEDIT piece without building any trie in the builder process. The nodes go to
the build's scratch files; the per-dylib pass (``optimizers/remove_unused_linkedit.py``) reads
them back and only fills in the final addresses.
"""

from __future__ import annotations

import numpy as np

from ..macho import constants as C
from ..macho.exports_trie import ExportPayloads, TrieShape, export_payload, trie_nodes
from ..names import encode_name
from .export_table import ExportTable

#: exports the linker reads and the cache drops
SKIPPED_EXPORT_PREFIXES = (b"$ld$", b".objc_class_name", b".objc_category_name")
#: added to every moved offset for the size bound
ESTIMATE_DELTA = 1 << 31


def rebuilt_trie_nodes(table: ExportTable) -> np.ndarray:
    """The nodes (``trie_nodes``) of the cached trie of ``table``'s exports: its entries are
    the table's export indexes, its labels ranges of the table's names. ValueError on duplicates."""
    ends = table.name_ends
    starts = ends - np.diff(ends, prepend=0)
    names = table.name_bytes
    kept = np.flatnonzero(_kept(table))
    keys = [names[a:b] for a, b in zip(starts[kept].tolist(), ends[kept].tolist(), strict=True)]
    nodes = trie_nodes(keys)
    if kept.size:
        terminal = nodes["terminal"]
        terminal[terminal >= 0] = kept[terminal[terminal >= 0]]
        nodes["label_key"] = kept[nodes["label_key"]]
    return nodes


def exports_size_bound(table: ExportTable, nodes: np.ndarray) -> int:
    """Bytes the rebuilt trie can take at most, whatever the layout: the length of
    :func:`encode_exports` with every move ``ESTIMATE_DELTA``, without writing it."""
    payloads = _payloads(table, nodes, np.full(len(table), ESTIMATE_DELTA, dtype=np.int64))
    size = _shape(table, nodes).size(payloads.sizes)
    return size + -size % 8


def encode_exports(table: ExportTable, nodes: np.ndarray, moves: np.ndarray) -> bytes:
    """The trie of the cached exports of ``table`` (``nodes`` from :func:`rebuilt_trie_nodes`),
    each regular or thread-local offset (and resolver) moved by ``moves[i]`` (int64 per export
    of the table; the others ignore theirs), padded to 8 bytes."""
    payloads = _payloads(table, nodes, moves)
    raw = _shape(table, nodes).encode_packed(payloads.encode(), payloads.sizes)
    return raw + bytes(-len(raw) % 8)


def moving(flags: np.ndarray) -> np.ndarray:
    """Per export: whether its address is an offset in the image, which moves with its segment
    (not a re-export's, nor an absolute value)."""
    reexport = flags & np.uint64(C.EXPORT_SYMBOL_FLAGS_REEXPORT) != 0
    kind = flags & np.uint64(C.EXPORT_SYMBOL_FLAGS_KIND_MASK)
    result: np.ndarray = ~reexport & (kind != np.uint64(C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE))
    return result


def _kept(table: ExportTable) -> np.ndarray:
    """Per export: whether the cache keeps it (its name has no linker-only prefix)."""
    names = np.frombuffer(table.name_bytes, dtype=np.uint8)
    ends = table.name_ends
    starts = ends - np.diff(ends, prepend=0)
    kept = np.ones(ends.size, dtype=bool)
    for prefix in SKIPPED_EXPORT_PREFIXES:
        has = starts + len(prefix) <= ends
        for k, byte in enumerate(prefix):
            at = np.flatnonzero(has)
            has[at] = names[starts[at] + k] == byte
        kept &= ~has
    return kept


def _shape(table: ExportTable, nodes: np.ndarray) -> TrieShape:
    return TrieShape.of_nodes(nodes, np.frombuffer(table.name_bytes, dtype=np.uint8), table.name_ends)


def _payloads(table: ExportTable, nodes: np.ndarray, moves: np.ndarray) -> ExportPayloads:
    """The payloads of the table's exports that the trie holds (the others get a neutral one
    that no node uses), the moving ones moved by ``moves``. ValueError as export_payload gives
    it, and when a moved offset leaves 64 bits."""
    count = len(table)
    terminal = nodes["terminal"]
    cached = np.zeros(count, dtype=bool)
    cached[terminal[terminal >= 0]] = True
    flags = np.where(cached, table.flags, np.uint64(0))
    move = np.where(cached & moving(flags), moves, 0)
    resolver = np.zeros(count, dtype=np.uint64)
    ordinal = np.zeros(count, dtype=np.uint64)
    import_names: dict[int, bytes] = {}
    for i, value in table.resolvers.items():
        resolver[i] = value if cached[i] else 0
    for i, (number, name) in table.reexports.items():
        if cached[i]:
            ordinal[i] = number
            if name:
                import_names[i] = encode_name(name)
    has_resolver = flags & np.uint64(C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER) != 0
    address, address_ok = _moved(np.where(cached, table.address, np.uint64(0)), move)
    resolver, resolver_ok = _moved(resolver, np.where(has_resolver, move, 0))
    payloads = None
    if address_ok.all() and resolver_ok.all():
        payloads = ExportPayloads.of_arrays(flags, address, resolver, ordinal, import_names)
    if payloads is None:
        # name the first problem as export_payload does (a table of inconsistent exports,
        # which no trie holds, or an offset moved out of 64 bits)
        for i in np.flatnonzero(cached).tolist():
            e = table.export(i)
            if not (address_ok[i] and resolver_ok[i]):
                raise ValueError(f"export {e.name!r}: a field does not fit in 64 bits")
            export_payload(e)
        raise AssertionError("ExportPayloads and export_payload disagree")
    return payloads


def _moved(values: np.ndarray, moves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values + moves`` (uint64 and int64) and, per value, whether it stays in 64 bits."""
    moved = values + moves.astype(np.uint64)
    ok = np.where(moves >= 0, moved >= values, moved < values)
    return moved, ok
