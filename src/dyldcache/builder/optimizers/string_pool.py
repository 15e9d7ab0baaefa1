"""A deduplicated string pool: a LINKEDIT region's symbol strings, or the .symbols file's."""

from __future__ import annotations

from ...names import encode_name


class StringPool:
    """One deduplicated string pool (a LINKEDIT region's, or the .symbols file's); starts with ""."""

    def __init__(self, first: tuple[str, ...] = ()) -> None:
        self.offsets: dict[bytes, int] = {b"": 0}
        self.size = 1
        for s in first:
            self.add(encode_name(s))

    def add(self, s: bytes) -> int:
        off = self.offsets.get(s)
        if off is None:
            off = self.size
            self.offsets[s] = off
            self.size += len(s) + 1
        return off

    def bytes(self) -> bytes:
        buf = bytearray(self.size)
        for s, off in self.offsets.items():
            buf[off : off + len(s)] = s
        return bytes(buf)
