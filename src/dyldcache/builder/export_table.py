"""A dylib's exports as the builder keeps them between phases: a few numpy arrays and one blob of
names, instead of a Python object per export.

A real cache has millions of exports; as ``Export`` objects, a list per dylib and a name
dictionary per dylib they cost about 300 bytes each and were the largest thing the builder
process held (issue 12). Here an export costs its name's bytes plus 36 bytes, and it
pickles as a handful of buffers (phase 1's workers send it back to the builder process).

Lookups hash the name (Python's ``hash``, the same in the forked workers as in the builder
process) and binary-search a sorted array of hashes; only a hit builds an ``Export``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..macho import constants as C
from ..macho.exports_trie import Export
from ..names import decode_name, encode_name

_EMPTY = np.zeros(0, dtype=np.int64)
_NOT_REEXPORTED = (0, "")


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

    def __init__(self, exports: Sequence[Export]) -> None:
        encoded = [encode_name(e.name) for e in exports]
        self._names = b"".join(encoded)
        self._name_ends = np.cumsum([len(n) for n in encoded], dtype=np.int64) if encoded else _EMPTY
        self._flags = np.array([e.flags for e in exports], dtype=np.uint64)
        self._address = np.array([e.address for e in exports], dtype=np.uint64)
        # re-exports and resolvers are few: index -> (ordinal, import name) / resolver offset
        self._reexports = {
            i: (e.ordinal, e.import_name) for i, e in enumerate(exports) if e.ordinal or e.import_name
        }
        self._resolvers = {i: e.resolver for i, e in enumerate(exports) if e.resolver}
        hashes = np.array([hash(e.name) for e in exports], dtype=np.int64)
        order = np.argsort(hashes, kind="stable")
        self._hash_order = order.astype(np.int32)
        self._hashes = hashes[order]

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
    def has_resolver(self) -> bool:
        """Some export is a stub-and-resolver one."""
        return bool(np.any(self._flags & C.EXPORT_SYMBOL_FLAGS_STUB_AND_RESOLVER))

    def name(self, i: int) -> str:
        start = int(self._name_ends[i - 1]) if i else 0
        return decode_name(self._names[start : int(self._name_ends[i])])

    def _export(self, i: int) -> Export:
        ordinal, import_name = self._reexports.get(i, _NOT_REEXPORTED)
        return Export(
            self.name(i),
            int(self._flags[i]),
            int(self._address[i]),
            self._resolvers.get(i, 0),
            ordinal,
            import_name,
        )

    def export(self, i: int) -> Export:
        """Export number ``i`` (trie order)."""
        return self._export(i)

    @property
    def flags(self) -> np.ndarray:
        """EXPORT_SYMBOL_FLAGS_* of every export (read-only view)."""
        return self._flags

    @property
    def addresses(self) -> np.ndarray:
        """The address field of every export (read-only view)."""
        return self._address

    def lookup(self, name: str) -> int:
        """Index of the export named ``name``, or -1."""
        h = hash(name)
        at = int(np.searchsorted(self._hashes, h))
        n = len(self._hashes)
        while at < n and int(self._hashes[at]) == h:
            i = int(self._hash_order[at])
            if self.name(i) == name:
                return i
            at += 1
        return -1

    def lookup_many(self, names: Sequence[str]) -> np.ndarray:
        """Index of the export named by each of ``names`` (-1 where there is none): one search of
        the hashes for all of them; only hash hits compare names."""
        out = np.full(len(names), -1, dtype=np.int64)
        n = len(self._hashes)
        if not names or not n:
            return out
        hashes = np.fromiter((hash(x) for x in names), dtype=np.int64, count=len(names))
        at = np.searchsorted(self._hashes, hashes)
        hit = np.flatnonzero(self._hashes[np.minimum(at, n - 1)] == hashes)
        order, ends, blob = self._hash_order, self._name_ends, self._names
        for k, a in zip(hit.tolist(), at[hit].tolist(), strict=True):
            want = encode_name(names[k])
            h = int(hashes[k])
            while a < n and int(self._hashes[a]) == h:
                i = int(order[a])
                if blob[int(ends[i - 1]) if i else 0 : int(ends[i])] == want:
                    out[k] = i
                    break
                a += 1
        return out

    def get(self, name: str) -> Export | None:
        """The export named ``name``, or None."""
        i = self.lookup(name)
        return None if i < 0 else self._export(i)
