"""A cache's memory as the runtime sees it at slide 0: pointer words and C strings by VM address.

On disk, a pointer in a slid mapping is a slide-info chain link: v2 keeps the distance to the
next pointer in bits 40-55, v3 and v5 pack the target with chain and ptrauth bits
(``docs/cache-format.md`` §2.8-2.13). Reading such a word needs the slide info's decoded
target, not the raw bytes. :class:`CacheMemory` decodes each slid mapping's chains once, on
first use, and answers pointer reads from them: a word that is a chain link reads as its
target (with its high8 top byte for plain pointers; an authenticated pointer reads as its
target without PAC), any other word reads as its raw little-endian value. Reads are
vectorized (numpy arrays of addresses) so that walking metadata does not cost one Python
step per pointer.

Every address outside the cache's mappings raises :class:`~dyldcache.errors.CacheFormatError`
naming what was being read.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ..errors import CacheFormatError
from .reader import CacheFile, DyldCache, Mapping

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
#: the longest C string read (ObjC names and selectors are far shorter)
MAX_CSTRING = 1 << 16
#: addresses closer than this are read as one window when C strings are looked up
_WINDOW_GAP = 4096


def as_addresses(addresses: np.ndarray | Sequence[int]) -> np.ndarray:
    """``addresses`` as a flat uint64 array; negative values wrap (and so lie in no mapping)."""
    if isinstance(addresses, np.ndarray):
        return addresses.astype(_U64).reshape(-1)
    return np.fromiter((a & _MASK64 for a in addresses), dtype=_U64, count=len(addresses))


class _SlidMapping:
    """One mapping's decoded chain links: sorted VM addresses and the values they read as."""

    __slots__ = ("addresses", "values")

    def __init__(self, addresses: np.ndarray, values: np.ndarray) -> None:
        self.addresses = addresses
        self.values = values


class CacheMemory:
    """Pointer-sized words and C strings of an open cache, by unslid VM address."""

    def __init__(self, cache: DyldCache) -> None:
        self.cache = cache
        self._slid: dict[tuple[str, int], _SlidMapping | None] = {}

    def error(self, message: str, address: int | None = None) -> CacheFormatError:
        """A format error at the file offset holding ``address`` (no offset when it is unmapped)."""
        found = self.cache.mapping_for(address) if address is not None else None
        if address is None or found is None:
            return CacheFormatError(self.cache.path, None, message)
        f, m = found
        return CacheFormatError(f.path, m.file_offset + address - m.address, message)

    # -- where an address lives ------------------------------------------------------------------

    def locate(self, address: int, size: int, what: str) -> tuple[CacheFile, Mapping]:
        """The file and mapping holding ``size`` bytes at ``address`` (all in one mapping)."""
        found = self.cache.mapping_for(address) if address >= 0 else None
        if found is None or size < 0 or address + size > found[1].end:
            raise self.error(f"{what} ({address:#x}+{size:#x}) does not lie inside one mapping of the cache")
        return found

    def contains(self, address: int, size: int = 1) -> bool:
        found = self.cache.mapping_for(address) if address >= 0 else None
        return found is not None and address + size <= found[1].end

    def read(self, address: int, size: int, what: str) -> memoryview:
        """``size`` bytes at ``address``; they must lie in one mapping."""
        f, m = self.locate(address, size, what)
        off = m.file_offset + (address - m.address)
        return f.data[off : off + size]

    def _slid_mapping(self, f: CacheFile, m: Mapping) -> _SlidMapping | None:
        key = (f.path, m.index)
        if key not in self._slid:
            found = f.slide_info(m.index, null_links=True)
            if found is None:
                self._slid[key] = None
            else:
                p = found[1]
                values = p["target"] | (p["high8"].astype(_U64) << _U64(56))
                self._slid[key] = _SlidMapping(p["offset"] + _U64(m.address), values)
        return self._slid[key]

    # -- pointer-sized words ---------------------------------------------------------------------

    def words(self, addresses: np.ndarray | Sequence[int], what: str) -> np.ndarray:
        """The 64-bit values at ``addresses`` once slid at slide 0 (uint64 array, same order)."""
        addrs = as_addresses(addresses)
        out = np.zeros(addrs.size, dtype=_U64)
        if not addrs.size:
            return out
        order = np.argsort(addrs, kind="stable")
        sorted_addrs = addrs[order]
        i = 0
        while i < sorted_addrs.size:
            first = int(sorted_addrs[i])
            f, m = self.locate(first, 8, what)
            # every address of this mapping at once
            j = int(np.searchsorted(sorted_addrs, _U64(m.end), side="left"))
            group = sorted_addrs[i:j]
            if int(group[-1]) + 8 > m.end:
                self.locate(int(group[-1]), 8, what)
            rel = (group - _U64(m.address)).astype(np.int64) + m.file_offset
            raw = np.frombuffer(f.data, dtype=np.uint8)
            values = raw[rel[:, None] + np.arange(8)].copy().view("<u8").reshape(-1)
            slid = self._slid_mapping(f, m)
            if slid is not None and slid.addresses.size:
                pos = np.searchsorted(slid.addresses, group)
                pos_c = np.minimum(pos, slid.addresses.size - 1)
                hit = slid.addresses[pos_c] == group
                values = np.where(hit, slid.values[pos_c], values)
            out[order[i:j]] = values
            i = j
        return out

    def word(self, address: int, what: str) -> int:
        return int(self.words([address], what)[0])

    # -- C strings -------------------------------------------------------------------------------

    def cstrings(self, addresses: np.ndarray | Sequence[int], what: str) -> list[bytes]:
        """The NUL-terminated strings at ``addresses`` (without their NUL), in the same order.

        Nearby addresses are read as one window whose NULs numpy finds; a window never spans a
        gap wider than :data:`_WINDOW_GAP`, so scattered strings do not scan what lies between.
        """
        addrs = as_addresses(addresses)
        out: list[bytes] = [b""] * addrs.size
        if not addrs.size:
            return out
        order = np.argsort(addrs, kind="stable")
        sorted_addrs = addrs[order]
        # clusters: runs of sorted addresses without a gap wider than _WINDOW_GAP
        breaks = np.flatnonzero(np.diff(sorted_addrs) > _U64(_WINDOW_GAP)) + 1
        bounds = [0, *breaks.tolist(), int(sorted_addrs.size)]
        for lo_i, hi_i in itertools.pairwise(bounds):
            i = lo_i
            while i < hi_i:
                f, m = self.locate(int(sorted_addrs[i]), 1, what)
                j = min(hi_i, int(np.searchsorted(sorted_addrs, _U64(m.end), side="left")))
                first = int(sorted_addrs[i]) - m.address
                last = int(sorted_addrs[j - 1]) - m.address
                window = f.data[m.file_offset + first : m.file_offset + min(last + _WINDOW_GAP, m.size)]
                nuls = np.flatnonzero(np.frombuffer(window, dtype=np.uint8) == 0)
                starts = (sorted_addrs[i:j] - _U64(m.address + first)).astype(np.int64)
                pos = np.searchsorted(nuls, starts)
                ends = np.full(starts.size, -1, dtype=np.int64)
                inside = pos < nuls.size
                ends[inside] = nuls[pos[inside]]
                for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
                    if e < 0:  # longer than the window: look further, in its own mapping
                        out[int(order[i + k])] = self._long_cstring(f, m, first + s, what)
                    else:
                        out[int(order[i + k])] = bytes(window[s:e])
                i = j
        return out

    def _long_cstring(self, f: CacheFile, m: Mapping, offset: int, what: str) -> bytes:
        """The string at mapping offset ``offset`` that did not end inside its window."""
        tail = bytes(f.data[m.file_offset + offset : m.file_offset + min(offset + MAX_CSTRING + 1, m.size)])
        end = tail.find(b"\0")
        if end < 0:
            where = m.address + offset
            if len(tail) > MAX_CSTRING:
                raise self.error(f"{what}: the string at {where:#x} is over {MAX_CSTRING} bytes long", where)
            raise self.error(f"{what}: the string at {where:#x} has no NUL inside its mapping", where)
        return tail[:end]

    def cstring(self, address: int, what: str) -> bytes:
        return self.cstrings([address], what)[0]
