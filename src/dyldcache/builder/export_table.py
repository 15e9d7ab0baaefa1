"""A dylib's exports as the builder keeps them between phases: a few numpy arrays and one blob of
names, instead of a Python object per export.

A real cache has millions of exports; as ``Export`` objects, a list per dylib and a name
dictionary per dylib they cost about 300 bytes each and were the largest thing the builder
process held (issue 12). Here an export costs its name's bytes plus 36 bytes, and it
pickles as a handful of buffers (phase 1's workers send it back to the builder process).
Phase 1 reads the trie straight into these arrays (``read_export_arrays``): no ``Export``
and no decoded name per export.

Lookups hash the name's bytes (Python's ``hash``, the same in the forked workers as in the
builder process) and binary-search a sorted array of hashes; only a hit builds an ``Export``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..macho import constants as C
from ..macho.exports_trie import Export, ExportArrays, read_export_arrays
from ..macho.file import MachOFile
from ..names import decode_name, encode_name

_NOT_REEXPORTED = (0, "")
#: how a name's bytes are hashed (a module global, so that a test can force collisions)
name_hash = hash


class ExportTable:
    """The exports of one image, in the order of its trie (the order ``read_exports`` gives)."""

    __slots__ = (
        "_address",
        "_flags",
        "_hash_order",
        "_hashes",
        "_name_ends",
        "_names",
        "_reexports",
        "_resolvers",
    )

    def __init__(self, exports: Sequence[Export] | ExportArrays) -> None:
        arrays = exports if isinstance(exports, ExportArrays) else ExportArrays.of(exports)
        names = arrays.names
        self._names = b"".join(names)
        self._name_ends = np.cumsum(np.fromiter(map(len, names), dtype=np.int64, count=len(names)))
        self._flags = arrays.flags
        self._address = arrays.address
        # re-exports and resolvers are few: index -> (ordinal, import name) / resolver offset
        self._reexports = arrays.reexports
        self._resolvers = arrays.resolvers
        hashes = np.fromiter(map(name_hash, names), dtype=np.int64, count=len(names))
        order = np.argsort(hashes, kind="stable")
        self._hash_order = order.astype(np.int32)
        self._hashes = hashes[order]

    @classmethod
    def of_image(cls, image: MachOFile) -> ExportTable:
        """The exports of ``image``, read from its trie into the table's arrays."""
        found = image.exports_trie_bytes()
        if found is None:
            return cls([])
        raw, offset = found
        return cls(read_export_arrays(raw, image.path, offset + image.file_offset))

    def __len__(self) -> int:
        return len(self._flags)

    def __iter__(self) -> Iterator[Export]:
        ends = self._name_ends.tolist()
        starts = [0, *ends[:-1]] if ends else []
        names, reexports, resolvers = self._names, self._reexports, self._resolvers
        fields = zip(starts, ends, self._flags.tolist(), self._address.tolist(), strict=True)
        for i, (a, b, flags, address) in enumerate(fields):
            ordinal, import_name = reexports.get(i, _NOT_REEXPORTED)
            name = decode_name(names[a:b])
            yield Export(name, flags, address, resolvers.get(i, 0), ordinal, import_name)

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for slot, value in zip(self.__slots__, state, strict=True):
            setattr(self, slot, value)

    @property
    def flags(self) -> np.ndarray:
        """Per export: EXPORT_SYMBOL_FLAGS_* (uint64; do not modify)."""
        return self._flags

    @property
    def address(self) -> np.ndarray:
        """Per export: :attr:`Export.address` (uint64; do not modify)."""
        return self._address

    @property
    def name_bytes(self) -> bytes:
        """Every name's bytes, one after the other."""
        return self._names

    @property
    def name_ends(self) -> np.ndarray:
        """Per export: where its name ends in :attr:`name_bytes` (int64; do not modify)."""
        return self._name_ends

    @property
    def resolvers(self) -> dict[int, int]:
        """Export index -> resolver offset, for the stub-and-resolver exports."""
        return self._resolvers

    @property
    def reexports(self) -> dict[int, tuple[int, str]]:
        """Export index -> (ordinal, import name), for the re-exports."""
        return self._reexports

    @property
    def has_resolver(self) -> bool:
        """Some export is a stub-and-resolver one."""
        return bool(np.any(self._flags & C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER))

    def _name_bytes(self, i: int) -> bytes:
        start = int(self._name_ends[i - 1]) if i else 0
        return self._names[start : int(self._name_ends[i])]

    def name(self, i: int) -> str:
        return decode_name(self._name_bytes(i))

    def export(self, i: int) -> Export:
        """Export ``i`` (in trie order)."""
        ordinal, import_name = self._reexports.get(i, _NOT_REEXPORTED)
        return Export(
            self.name(i),
            int(self._flags[i]),
            int(self._address[i]),
            self._resolvers.get(i, 0),
            ordinal,
            import_name,
        )

    def _find(self, key: bytes, h: int, at: int) -> int:
        """The index of the export named ``key`` (of hash ``h``, first looked for at ``at`` in
        the sorted hashes), or -1."""
        hashes, order, ends, names = self._hashes, self._hash_order, self._name_ends, self._names
        n = hashes.size
        while at < n and hashes[at] == h:
            i = int(order[at])
            if names[int(ends[i - 1]) if i else 0 : int(ends[i])] == key:
                return i
            at += 1
        return -1

    def index(self, name: str) -> int:
        """The index of the export named ``name``, or -1."""
        key = encode_name(name)
        h = name_hash(key)
        return self._find(key, h, int(self._hashes.searchsorted(h)))

    def get(self, name: str) -> Export | None:
        """The export named ``name``, or None."""
        key = encode_name(name)
        h = name_hash(key)
        i = self._find(key, h, int(self._hashes.searchsorted(h)))
        if i < 0:
            return None
        ordinal, import_name = self._reexports.get(i, _NOT_REEXPORTED)
        flags, address = int(self._flags[i]), int(self._address[i])
        return Export(decode_name(key), flags, address, self._resolvers.get(i, 0), ordinal, import_name)

    def lookup_many(self, names: Sequence[str]) -> np.ndarray:
        """Per name: the index of the export of that name, or -1 (int64)."""
        keys = [encode_name(n) for n in names]
        hashes = np.fromiter(map(name_hash, keys), dtype=np.int64, count=len(keys))
        at = np.searchsorted(self._hashes, hashes)
        out = np.full(len(keys), -1, dtype=np.int64)
        if not self._hashes.size:
            return out
        hit = np.flatnonzero(self._hashes[np.minimum(at, self._hashes.size - 1)] == hashes)
        found = self._hash_order[at[hit]].astype(np.int64)
        # a hash hit is a name hit but for a collision, which the probe loop tells apart
        ends = self._name_ends[found]
        starts = np.where(found > 0, self._name_ends[found - 1], 0)
        names_blob, keys_at = self._names, hit.tolist()
        for j, (k, a, b) in enumerate(zip(keys_at, starts.tolist(), ends.tolist(), strict=True)):
            key = keys[k]
            out[k] = found[j] if names_blob[a:b] == key else self._find(key, int(hashes[k]), int(at[k]))
        return out
