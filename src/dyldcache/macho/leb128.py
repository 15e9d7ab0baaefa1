"""LEB128 numbers and a bounds-checked byte cursor for the variable-length LINKEDIT streams
(exports trie, dyld info opcodes, split seg info, function starts).

Every read failure becomes a :class:`MachOFormatError` naming the file and the absolute
file offset, so that the stream decoders never leak ``IndexError``.
"""

from __future__ import annotations

import numpy as np

from ..errors import MachOFormatError

#: refuse ULEBs longer than this many bytes (a 64-bit value needs at most 10)
_MAX_LEB_BYTES = 10


def uleb_encode(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"ULEB128 cannot encode negative value {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb_encode(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def uleb_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def uleb_sizes(values: np.ndarray) -> np.ndarray:
    """ULEB128 length in bytes of every value of a uint64 array (vectorized; int64 result)."""
    v = np.asarray(values, dtype=np.uint64)
    sizes = np.ones(v.shape, dtype=np.int64)
    for k in range(1, _MAX_LEB_BYTES):
        sizes += v >= np.uint64(1 << (7 * k))
    return sizes


def uleb_encode_array(values: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    """The ULEB128 encodings of a uint64 array, concatenated, as a uint8 array (vectorized).

    ``sizes`` (from :func:`uleb_sizes`) may be passed when the caller has it already.
    """
    v = np.asarray(values, dtype=np.uint64)
    if sizes is None:
        sizes = uleb_sizes(v)
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if ends.size else 0
    out = np.empty(total, dtype=np.uint8)
    if not total:
        return out
    # byte k of every value: the k-th group of 7 bits, with the high bit set unless it is the last
    starts = ends - sizes
    for k in range(int(sizes.max())):
        has = np.flatnonzero(sizes > k)
        group = (v[has] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (sizes[has] > k + 1).astype(np.uint8) << 7
        out[starts[has] + k] = group.astype(np.uint8) | more
    return out


def uleb_decode(data: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode one ULEB128 at ``offset``; returns (value, offset after it). Raises ValueError."""
    # one to three bytes (offsets, sizes and addresses below 2 MiB) without the loop
    try:
        low = data[offset]
        if low < 0x80:
            return low, offset + 1
        mid = data[offset + 1]
        if mid < 0x80:
            return low & 0x7F | mid << 7, offset + 2
        high = data[offset + 2]
        if high < 0x80:
            return low & 0x7F | (mid & 0x7F) << 7 | high << 14, offset + 3
    except IndexError:
        pass  # the loop below names the problem
    result = shift = 0
    end = len(data)
    pos = offset
    while True:
        if pos >= end:
            raise ValueError("ULEB128 runs past the end of the data")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if pos - offset >= _MAX_LEB_BYTES:
            raise ValueError("ULEB128 is too long")


def uleb_decode_all(data: bytes | memoryview) -> np.ndarray:
    """Decode a buffer that is a plain sequence of ULEB128 numbers (vectorized).

    Returns a uint64 array. Raises ValueError if the last number is unterminated or
    one is longer than 10 bytes.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.uint64)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size == 0 or ends[-1] != raw.size - 1:
        raise ValueError("ULEB128 runs past the end of the data")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > _MAX_LEB_BYTES:
        raise ValueError("ULEB128 is too long")
    values = np.zeros(ends.size, dtype=np.uint64)
    for k in range(int(lengths.max())):
        has = lengths > k
        idx = starts[has] + k
        values[has] |= (raw[idx].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * k)
    return values


def uleb_values(raw: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The ULEB128s of ``lengths[i]`` bytes (1 to 9) at ``starts[i]`` of the uint8 array ``raw``,
    as int64 (vectorized). The caller has found where each ends; the bytes are not checked."""
    values: np.ndarray = (raw[starts] & 0x7F).astype(np.int64)
    for k in range(1, int(lengths.max()) if lengths.size else 0):
        has = np.flatnonzero(lengths > k)
        values[has] |= (raw[starts[has] + k] & 0x7F).astype(np.int64) << (7 * k)
    return values


class Cursor:
    """Sequential reader over a LINKEDIT blob with file-relative error offsets."""

    __slots__ = ("base", "data", "path", "pos", "what")
    data: bytes

    def __init__(self, data: bytes | memoryview, path: str, base: int, what: str) -> None:
        # one copy of the (small) blob makes every later find/slice cheap
        self.data = bytes(data)
        self.path = path
        #: file offset of data[0], used in error messages
        self.base = base
        self.pos = 0
        #: name of the stream, used in error messages
        self.what = what

    def error(self, message: str, pos: int | None = None) -> MachOFormatError:
        at = self.pos if pos is None else pos
        return MachOFormatError(self.path, self.base + at, f"{self.what}: {message}")

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise self.error("unexpected end of data")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self) -> int:
        try:
            value, self.pos = uleb_decode(self.data, self.pos)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        return value

    def sleb(self) -> int:
        result = shift = 0
        start = self.pos
        while True:
            if self.pos >= len(self.data):
                raise self.error("SLEB128 runs past the end of the data", start)
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                if byte & 0x40:
                    result -= 1 << shift
                return result
            if self.pos - start >= _MAX_LEB_BYTES:
                raise self.error("SLEB128 is too long", start)

    def cstring(self) -> bytes:
        start = self.pos
        end = self.data.find(b"\0", start)
        if end < 0:
            raise self.error("string is not NUL-terminated", start)
        self.pos = end + 1
        return self.data[start:end]
