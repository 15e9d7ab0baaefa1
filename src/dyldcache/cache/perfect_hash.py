"""The perfect hash of libobjc's string tables: Bob Jenkins' lookup8 and the slot rule.

dyld's selector, class and protocol tables (``docs/cache-format.md`` §5.2; dyld
``common/PerfectHash.cpp``, objc4/dyld ``objc-shared-cache.h``) find a key's slot as::

    v    = lookup8(key, salt)                       # 64-bit Jenkins hash, public domain
    slot = (v >> shift if shift < 64 else 0) ^ scramble[tab[v & mask]]

and reject it unless the slot's check byte is ``(key[0] & 7) << 5 | (len(key) & 0x1f)``,
its string offset is not 0 and the string there equals the key. ``lookup8`` consumes the key
in 24-byte blocks (three little-endian u64 added to a, b, c, then mixed), then adds the
length to c and the last 0..23 bytes to a, b and c (c's low byte is kept for the length), and
mixes once more; everything wraps modulo 2**64.

:func:`lookup8_many` hashes many keys at once with numpy (keys grouped by block count, one
numpy step per block); :func:`lookup8` is the single-key form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_U64 = np.uint64
#: the golden ratio, lookup8's initial c
GOLDEN = 0x9E3779B97F4A7C13
_BLOCK = 24
#: (shift amount, True for a left shift) of the twelve steps of mix64, as (a,b,c) rotate
_MIX_SHIFTS = (
    (43, False),
    (9, True),
    (8, False),
    (38, False),
    (23, True),
    (5, False),
    (35, False),
    (49, True),
    (11, False),
    (12, False),
    (18, True),
    (22, False),
)


def _mix(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jenkins' mix64 on uint64 arrays: each step is x -= y; x -= z; x ^= z (or y) shifted."""
    regs = [a, b, c]
    for step, (amount, left) in enumerate(_MIX_SHIFTS):
        x, y, z = step % 3, (step + 1) % 3, (step + 2) % 3
        regs[x] = regs[x] - regs[y] - regs[z]
        # the shifted register is the one updated last: z for a's steps, etc.
        src = regs[z]
        regs[x] = regs[x] ^ ((src << _U64(amount)) if left else (src >> _U64(amount)))
    return regs[0], regs[1], regs[2]


def _padded(keys: Sequence[bytes], width: int) -> np.ndarray:
    """``keys`` as rows of ``width`` bytes (zero padded)."""
    buf = b"".join(k.ljust(width, b"\0") for k in keys)
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(keys), width)


def lookup8_many(keys: Sequence[bytes], level: int) -> np.ndarray:
    """lookup8 of every key with the same ``level`` (the table's salt); uint64 array."""
    n = len(keys)
    out = np.zeros(n, dtype=_U64)
    if not n:
        return out
    lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=n)
    blocks = lengths // _BLOCK
    for nb in np.unique(blocks).tolist():
        rows = np.flatnonzero(blocks == nb)
        width = (nb + 1) * _BLOCK
        words = _padded([keys[i] for i in rows.tolist()], width).copy().view("<u8")  # (rows, 3*(nb+1))
        a = np.full(rows.size, level & (2**64 - 1), dtype=_U64)
        b = a.copy()
        c = np.full(rows.size, GOLDEN, dtype=_U64)
        for blk in range(nb):
            a = a + words[:, 3 * blk]
            b = b + words[:, 3 * blk + 1]
            c = c + words[:, 3 * blk + 2]
            a, b, c = _mix(a, b, c)
        # the tail: bytes 0-7 into a, 8-15 into b, 16-22 into c above its length byte
        a = a + words[:, 3 * nb]
        b = b + words[:, 3 * nb + 1]
        c = c + (words[:, 3 * nb + 2] << _U64(8)) + lengths[rows].astype(_U64)
        out[rows] = _mix(a, b, c)[2]
    return out


def lookup8(key: bytes, level: int) -> int:
    return int(lookup8_many([key], level)[0])


def check_byte(key: bytes) -> int:
    """The check byte a table keeps for ``key`` (rejects most misses without reading strings)."""
    first = key[0] if key else 0
    return ((first & 7) << 5) | (len(key) & 0x1F)


def check_bytes(keys: Sequence[bytes]) -> np.ndarray:
    first = np.fromiter((k[0] if k else 0 for k in keys), dtype=np.uint8, count=len(keys))
    length = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
    return (((first & 7).astype(np.uint8) << np.uint8(5)) | (length & 0x1F).astype(np.uint8)).astype(np.uint8)


def slots(hashes: np.ndarray, shift: int, mask: int, scramble: np.ndarray, tab: np.ndarray) -> np.ndarray:
    """The slot each hash selects in a table with this shift, mask, scramble and tab (int64)."""
    h = np.asarray(hashes, dtype=_U64)
    high = np.zeros_like(h) if shift >= 64 else h >> _U64(shift)
    index = tab[(h & _U64(mask)).astype(np.intp)].astype(np.intp)
    return ((high & _U64(0xFFFFFFFF)) ^ scramble[index].astype(_U64)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# building a table (the cache builder)

#: tab[] entries are bytes: each bucket picks one of this many scramble values
SCRAMBLE_CHOICES = 256
#: salts tried for each tab size before the tab doubles
_SALT_TRIES = 32


@dataclass(frozen=True, slots=True)
class PerfectHash:
    """A perfect hash over a key set: the parameters a table stores and the slot of each key."""

    capacity: int
    shift: int
    mask: int
    salt: int
    scramble: np.ndarray  # uint32[256]
    tab: np.ndarray  # uint8[mask + 1]
    #: int64 slot of each key, in the order the keys were given (all distinct, < capacity)
    key_slots: np.ndarray


def table_capacity(count: int) -> int:
    """The power of two dyld-1162 sizes a table of ``count`` keys with (10% headroom)."""
    padded = max(count * 11 // 10, 1)
    return 1 << max(padded - 1, 0).bit_length()


def make_perfect_hash(keys: Sequence[bytes], seed: int = 0) -> PerfectHash:
    """A perfect hash of distinct ``keys`` in the form dyld's tables use (see the module
    docstring): each key's 64-bit hash gives a high part ``a`` (the top log2(capacity) bits) and
    a bucket ``b`` (the low bits, ``mask``); every bucket picks the scramble value that moves
    all its keys to free slots (``slot = a ^ scramble[tab[b]]``), fullest buckets first. A
    bucket that cannot be placed makes the builder try another salt, then a tab twice as long
    (at most capacity/2 entries, the size dyld-1162 estimates). Deterministic for a seed."""
    n = len(keys)
    cap = table_capacity(n)
    bits = cap.bit_length() - 1
    shift = 64 - bits
    rng = np.random.default_rng(seed)
    if cap >= SCRAMBLE_CHOICES:
        scramble = rng.permutation(cap)[:SCRAMBLE_CHOICES].astype(np.uint32)
    else:
        scramble = rng.integers(0, cap, SCRAMBLE_CHOICES).astype(np.uint32)
    blen = max(1, cap // 16)
    while True:
        for _ in range(_SALT_TRIES):
            salt = int(rng.integers(0, 2**63, dtype=np.int64))
            hashes = lookup8_many(keys, salt)
            tab = _place_buckets(hashes, shift, blen, cap, scramble)
            if tab is not None:
                key_slots = slots(hashes, shift, blen - 1, scramble, tab)
                return PerfectHash(cap, shift, blen - 1, salt, scramble, tab, key_slots)
        if blen * 2 > max(cap // 2, 1):
            raise ValueError(f"no perfect hash found for {n} keys")
        blen *= 2


def _place_buckets(
    hashes: np.ndarray, shift: int, blen: int, cap: int, scramble: np.ndarray
) -> np.ndarray | None:
    """tab[] placing every key in a distinct slot, or None when some bucket cannot be placed."""
    high = np.zeros_like(hashes) if shift >= 64 else hashes >> _U64(shift)
    a = high.astype(np.int64)
    b = (hashes & _U64(blen - 1)).astype(np.int64)
    order = np.argsort(b, kind="stable")
    starts = np.searchsorted(b[order], np.arange(blen + 1))
    sizes = np.diff(starts)
    used = np.zeros(cap, dtype=bool)
    tab = np.zeros(blen, dtype=np.uint8)
    choices = scramble.astype(np.int64)
    for bucket in np.argsort(-sizes, kind="stable").tolist():
        if not sizes[bucket]:
            break
        members = a[order[starts[bucket] : starts[bucket + 1]]]
        cand = members[:, None] ^ choices[None, :]  # (keys, 256) slots
        ok = ~used[cand].any(axis=0)
        if len(members) > 1:
            srt = np.sort(cand, axis=0)
            ok &= ~(srt[1:] == srt[:-1]).any(axis=0)
        hit = np.flatnonzero(ok)
        if not len(hit):
            return None
        t = int(hit[0])
        used[cand[:, t]] = True
        tab[bucket] = t
    return tab
