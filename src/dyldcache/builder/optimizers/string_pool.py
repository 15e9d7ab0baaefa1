"""A deduplicated string pool: a LINKEDIT region's symbol strings, or the .symbols file's.

Strings are added in batches (a dylib's names at a time) and each gets the offset of its first
occurrence; the pool's bytes are the distinct strings in order of first occurrence, each with
its NUL, after the empty string at offset 0.

A real cache has millions of distinct symbol names. A dictionary keyed by the names costs about
190 bytes per name; here the index is an open-addressing table of 64-bit keys and offsets in
numpy (32 bytes per name at most) beside the pool's own bytes. The key of a name is a
polynomial hash of its bytes modulo 2**64, computed for all names of a string table at once
from prefix sums. Keys only find a candidate: every string is checked against the pool's bytes
at the offset found, and a string whose key belongs to another one is kept in a small side
dictionary. The result is exactly what adding the strings one by one to a dictionary gives
(unless two distinct names share a key, which only reorders the strings after them; the key
is deterministic, so the pool still is).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...byteviews import words_at
from ...names import encode_name

_P = np.uint64(0x100000001B3)  # FNV's 64-bit prime: odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_MIX = np.uint64(0x9E3779B97F4A7C15)
_LEN_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_EMPTY_SLOT = np.uint64(0)
_FIRST_BITS = 12
#: zero bytes kept past the pool's end, so that 8-byte reads at any string of it stay inside
_PAD = 8
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
#: the builtin, under a name the class's own ``bytes`` method does not hide
_Bytes = bytes


class _Powers:
    """_P**i and _P**-i modulo 2**64 for i up to the longest table seen, grown on demand (every
    string table of a build would otherwise compute its own)."""

    def __init__(self) -> None:
        self.up = np.ones(1, dtype=np.uint64)
        self.down = np.ones(1, dtype=np.uint64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.up) > n:
            return self.up[: n + 1], self.down[: n + 1]
        size = max(n + 1, min(2 * len(self.up), _KEPT_POWERS))
        up, down = _powers(_P, size), _powers(_P_INV, size)
        if size <= _KEPT_POWERS:  # a huge table's are not kept (16 bytes per byte of it)
            self.up, self.down = up, down
        return up[: n + 1], down[: n + 1]


def _powers(base: np.uint64, size: int) -> np.ndarray:
    out = np.empty(size, dtype=np.uint64)
    out[0] = 1
    out[1:] = base
    with np.errstate(over="ignore"):
        np.cumprod(out, out=out)
    return out


#: string tables up to this many bytes share the powers (64 MiB of them at most)
_KEPT_POWERS = 1 << 22


_POWERS = _Powers()


def string_keys(table: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The key of every string ``table[starts[i]:ends[i]]`` (``table`` a uint8 array)."""
    if not len(starts):
        return np.zeros(0, dtype=np.uint64)
    # a key does not depend on where its string is: only the bytes the strings span are summed
    # (a symbol table's locals, exports and imports each have their own part of the table)
    lo = int(starts.min())
    window = table[lo : max(int(ends.max()), lo)]
    n = len(window)
    powers, inverse = _POWERS.upto(n)
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(window.astype(np.uint64) * powers[:n], out=prefix[1:])
        a = starts.astype(np.int64) - lo
        b = ends.astype(np.int64) - lo
        keys = (prefix[b] - prefix[a]) * inverse[a]
        keys ^= (b - a).astype(np.uint64) * _LEN_MIX
    keys[keys == _EMPTY_SLOT] = _MIX  # 0 marks an empty slot
    out: np.ndarray = keys
    return out


def _gathered(table: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> _Bytes:
    """The strings ``table[starts[i]:starts[i] + lengths[i] - 1]``, each followed by a NUL, as one
    bytes object (``lengths`` count the NUL)."""
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    chars = lengths - 1
    owner = np.repeat(np.arange(len(starts)), chars)
    dest_start = np.cumsum(lengths) - lengths
    step = np.arange(len(owner)) - (np.cumsum(chars) - chars)[owner]
    out[dest_start[owner] + step] = table[starts[owner] + step]
    return out.tobytes()


def _joined(strings: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separate strings as one table and the span of each in it: (table, starts, ends)."""
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    ends = np.cumsum(lengths)
    return np.frombuffer(b"".join(strings), dtype=np.uint8), ends - lengths, ends


def keys_of(strings: Sequence[bytes]) -> np.ndarray:
    """:func:`string_keys` of separate strings."""
    return string_keys(*_joined(strings))


class StringPool:
    """One deduplicated string pool (a LINKEDIT region's, or the .symbols file's); starts with ""."""

    def __init__(self, first: tuple[str, ...] = ()) -> None:
        self._buf = bytearray(b"\0" + bytes(_PAD))  # the pool, then _PAD zero bytes
        self._bits = _FIRST_BITS
        self._keys = np.zeros(1 << self._bits, dtype=np.uint64)
        self._offsets = np.zeros(1 << self._bits, dtype=np.int64)
        self._used = 0
        #: strings whose key is taken by another string: string -> offset
        self._side: dict[_Bytes, int] = {}
        #: the pool's bytes once :meth:`freeze` dropped the index
        self._frozen: _Bytes | None = None
        empty = keys_of([b""])  # the empty string is the pool's first byte
        slots, _ = self._place(empty)
        self._offsets[slots] = 0
        self._used = 1
        if first:
            self.add_many([encode_name(s) for s in first])

    @property
    def size(self) -> int:
        return len(self._frozen) if self._frozen is not None else len(self._buf) - _PAD

    def freeze(self) -> None:
        """Keep only the bytes: no string is added from now on."""
        self._frozen = bytes(memoryview(self._buf)[:-_PAD])
        self._buf = bytearray()
        self._keys = self._offsets = np.zeros(0, dtype=np.uint64)
        self._side = {}

    def bytes(self) -> _Bytes:
        return self._frozen if self._frozen is not None else bytes(memoryview(self._buf)[:-_PAD])

    def add(self, s: _Bytes) -> int:
        return int(self.add_many([s])[0])

    def add_many(self, strings: list[_Bytes], keys: np.ndarray | None = None) -> np.ndarray:
        """The offset of each string, adding those not in the pool yet, in order. ``keys`` are
        their :func:`string_keys` when the caller has them."""
        table, starts, ends = _joined(strings)
        return self.add_table(table, starts, ends, keys)

    def add_table(
        self, table: np.ndarray, starts: np.ndarray, ends: np.ndarray, keys: np.ndarray | None = None
    ) -> np.ndarray:
        """:meth:`add_many` of the strings ``table[starts[i]:ends[i]]`` (``table`` a uint8 array,
        e.g. an input's string table), without making a Python object per string."""
        if self._frozen is not None:
            raise AssertionError("string added to a frozen pool")
        if not len(starts):
            return np.zeros(0, dtype=np.int64)
        starts = starts.astype(np.int64)
        ends = ends.astype(np.int64)
        if keys is None:
            keys = string_keys(table, starts, ends)
        self._grow(self._used + len(keys))
        slots, added = self._place(keys)
        taken = np.flatnonzero(added)
        if taken.size:
            # equal keys take the same slot: a slot's first taker is its string; a table rarely
            # repeats a name, so the slots tell first whether any key came twice
            self._offsets[slots[taken]] = taken
            if not np.array_equal(self._offsets[slots[taken]], taken):
                _, first = np.unique(slots[taken], return_index=True)
                taken = taken[np.sort(first)]
            lengths = ends[taken] - starts[taken] + 1  # with the NUL
            self._offsets[slots[taken]] = self.size + np.cumsum(lengths) - lengths
            self._append(_gathered(table, starts[taken], lengths))
            self._used += len(taken)
        out: np.ndarray = self._offsets[slots]
        # a key only names a candidate: check every string against the bytes at its offset
        # (but those just copied into the pool from their own span)
        check = np.ones(len(keys), dtype=bool)
        check[taken] = False
        check = np.flatnonzero(check)
        if check.size:
            bad = self._mismatches(table, starts[check], ends[check], out[check])
            for i in check[bad].tolist():
                out[i] = self._side_add(table[starts[i] : ends[i]].tobytes())
        return out

    def _append(self, data: _Bytes) -> None:
        del self._buf[-_PAD:]
        self._buf += data
        self._buf += bytes(_PAD)

    def _mismatches(
        self, table: np.ndarray, starts: np.ndarray, ends: np.ndarray, offsets: np.ndarray
    ) -> np.ndarray:
        """Which strings ``table[starts[i]:ends[i]]`` are not (the string, then a NUL) at their
        offset in the pool: compared 8 bytes at a time, all strings at once."""
        lengths = ends - starts
        lo = int(starts.min())
        starts = starts - lo
        padded = np.concatenate([table[lo : max(int(ends.max()), lo)], np.zeros(_PAD, dtype=np.uint8)])
        words = (lengths + 7) >> 3
        owner = np.repeat(np.arange(len(starts)), words)
        first_word = np.cumsum(words) - words
        at = (np.arange(len(owner)) - first_word[owner]) * 8  # byte of its string each word starts at
        left = lengths[owner] - at  # bytes of the string from there on (at least 1)
        tail_bits = (np.minimum(left, 7) * 8).astype(np.uint64)
        mask = np.where(left >= 8, _ALL_ONES, (np.uint64(1) << tail_bits) - np.uint64(1))
        pool = np.frombuffer(self._buf, dtype=np.uint8)
        try:
            bad: np.ndarray = pool[offsets + lengths] != 0
            mine = words_at(padded)[starts[owner] + at]
            theirs = words_at(pool)[offsets[owner] + at]
        finally:
            del pool  # the bytearray cannot grow while a view of it exists
        bad[owner[((mine ^ theirs) & mask) != 0]] = True
        return bad

    def _side_add(self, s: _Bytes) -> int:
        off = self._side.get(s)
        if off is None:
            off = self.size
            self._append(s + b"\0")
            self._side[s] = off
        return off

    def _home(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((keys * _MIX) >> np.uint64(64 - self._bits)).astype(np.int64)

    def _place(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key, the slot that holds it, or the empty slot of its probe sequence that it
        takes now (the caller sets its offset); and which were taken. Keys that reach the same
        empty slot in a round all write it: the one whose write stayed has it (with any equal to
        it: equal keys go the same way, and all count as taking it), the others probe on."""
        mask = (1 << self._bits) - 1
        slots = self._home(keys)
        added = np.zeros(len(keys), dtype=bool)
        todo = np.arange(len(keys))
        while todo.size:
            at, want = slots[todo], keys[todo]
            here = self._keys[at]
            empty = here == _EMPTY_SLOT
            claimed = at[empty]
            self._keys[claimed] = want[empty]
            won = self._keys[claimed] == want[empty]
            added[todo[empty][won]] = True
            settled = here == want
            settled[empty] = won
            todo = todo[~settled]
            slots[todo] = (slots[todo] + 1) & mask
        return slots, added

    def _grow(self, wanted: int) -> None:
        """Keep the table at most half full."""
        if wanted * 2 <= len(self._keys):
            return
        live = self._keys != _EMPTY_SLOT
        keys, offsets = self._keys[live], self._offsets[live]
        del live  # the old table goes before the new one comes
        while wanted * 2 > (1 << self._bits):
            self._bits += 1
        self._keys = np.zeros(1 << self._bits, dtype=np.uint64)
        self._offsets = np.zeros(1 << self._bits, dtype=np.int64)
        self._rehash(keys, offsets)

    def _rehash(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        """Put distinct keys in the (empty) table in order of their home slot: each takes the
        first slot from its home on that the ones before left free, a running maximum (no probing
        round trips). Those pushed past the table's end wrap around by probing."""
        homes = self._home(keys)
        order = np.argsort(homes, kind="stable")  # the old table holds them almost in this order
        slots = homes[order]
        del homes
        rank = np.arange(len(keys))
        slots -= rank
        np.maximum.accumulate(slots, out=slots)
        slots += rank
        del rank
        inside = int(np.searchsorted(slots, len(self._keys)))  # the slots are increasing
        self._keys[slots[:inside]] = keys[order[:inside]]
        self._offsets[slots[:inside]] = offsets[order[:inside]]
        rest = order[inside:]
        if rest.size:
            wrapped, _ = self._place(keys[rest])
            self._offsets[wrapped] = offsets[rest]
