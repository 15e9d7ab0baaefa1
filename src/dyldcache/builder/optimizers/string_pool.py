"""A deduplicated string pool: a LINKEDIT region's symbol strings, or the .symbols file's."""

from __future__ import annotations

from ...names import encode_name


class StringPool:
    """One deduplicated string pool (a LINKEDIT region's, or the .symbols file's); starts with ""."""

    def __init__(self, first: tuple[str, ...] = ()) -> None:
        self.offsets: dict[bytes, int] = {b"": 0}
        self.size = 1
        #: the pool's bytes once :meth:`freeze` dropped the dictionary
        self._frozen: bytes | None = None
        for s in first:
            self.add(encode_name(s))

    def freeze(self) -> None:
        """Keep only the bytes: no string is added from now on (a dictionary entry per symbol
        string is several times the string's size, and the pool lives until phase 6)."""
        self._frozen = self.bytes()
        self.offsets = {}

    def add(self, s: bytes) -> int:
        if self._frozen is not None:
            raise AssertionError("string added to a frozen pool")
        off = self.offsets.get(s)
        if off is None:
            off = self.size
            self.offsets[s] = off
            self.size += len(s) + 1
        return off

    def bytes(self) -> bytes:
        if self._frozen is not None:
            return self._frozen
        buf = bytearray(self.size)
        for s, off in self.offsets.items():
            buf[off : off + len(s)] = s
        return bytes(buf)
