"""Writing symbol tables: the string pool and nlist_64 arrays (reading is in ``file.py``)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..names import encode_name
from .format import NLIST64_DTYPE


class StringPool:
    """A de-duplicating C-string pool, as ld64 starts it: " \\0" (so offset 1 is the empty name)."""

    def __init__(self, prefix: bytes = b" \0") -> None:
        self._buf = bytearray(prefix)
        self._index: dict[bytes, int] = {b"": prefix.index(b"\0")}

    def add(self, name: str | bytes) -> int:
        raw = encode_name(name) if isinstance(name, str) else name
        found = self._index.get(raw)
        if found is not None:
            return found
        off = len(self._buf)
        self._buf += raw + b"\0"
        self._index[raw] = off
        return off

    def __len__(self) -> int:
        return len(self._buf)

    def bytes(self, align: int = 8) -> bytes:
        return bytes(self._buf) + bytes(-len(self._buf) % align)


def nlist_array(entries: Iterable[tuple[int, int, int, int, int]]) -> np.ndarray:
    """(n_strx, n_type, n_sect, n_desc, n_value) tuples -> a packed nlist_64 array."""
    rows = list(entries)
    arr = np.zeros(len(rows), dtype=NLIST64_DTYPE)
    if rows:
        cols = list(zip(*rows, strict=True))
        for name, col in zip(("n_strx", "n_type", "n_sect", "n_desc", "n_value"), cols, strict=True):
            arr[name] = col
    return arr
