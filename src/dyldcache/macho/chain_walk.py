"""Walking the pointer chains of chained fixups (``<mach-o/fixup-chains.h>``) through a segment's
bytes: which slots hold the pointers of each chain, without a Python step per pointer.

A chain starts at a page's ``page_start``; each pointer's ``next`` field (in ``stride`` units;
0 ends the chain) names the next pointer, which must still end inside the same page and inside
the segment's file bytes. The blob around the chains is :mod:`dyldcache.macho.chained_fixups`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chained_pointers import PointerFormat
from .jump_chains import JumpTable, forward_reach, index_dtype

_U64 = np.uint64

#: pointer-doubling levels kept for the chain walks (pieces of 2**6 pointers; see jump_chains)
_CHAIN_LEVELS = 6
#: pointer slots looked at together (pages are walked in batches of about this many slots)
_BATCH_SLOTS = 1 << 20
#: rounds the direct walk (:func:`forward_reach`) may take before the chains are doubled instead
_REACH_ROUNDS = 4


@dataclass(frozen=True, slots=True)
class ChainWalk:
    """The chains of one segment, walked a batch of pages at a time.

    Every pointer slot of a batch (every ``stride`` bytes from the chain starts) gets the slot
    its ``next`` names, or the end: ``next`` is 0, or it leaves the slot's page (the slot is
    then marked bad). The chains are then listed by pointer doubling (:class:`JumpTable`).
    Linkers put 8-byte pointers 8 bytes apart, so for the usual chains only the slots a pointer
    apart from the starts are looked at, and the chains are listed without doubling
    (:func:`forward_reach`: the other words there, zeros and data, seldom name a next slot).
    """

    fmt: PointerFormat
    page_size: int
    #: the segment's file bytes that ``data`` holds
    seg_end: int
    data: bytes | bytearray | memoryview
    #: where the segment starts in ``data``
    fileoff: int

    def pointers(
        self, chain_starts: np.ndarray, pages: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(segment offset, value, bad) of every pointer on the chains from ``chain_starts``
        (segment offsets, each inside the page in ``pages`` and the segment's bytes), by
        segment offset; a pointer that two chains reach comes twice."""
        found = [self.batch(chain_starts, lo, hi) for lo, hi in self.batches(pages)]
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=_U64), np.zeros(0, dtype=bool)
        offsets, values, bad = (np.concatenate(parts) for parts in zip(*found, strict=True))
        return offsets, values, bad

    def batches(self, pages: np.ndarray) -> list[tuple[int, int]]:
        """[first, last) page ranges of about _BATCH_SLOTS slots that hold the given pages."""
        if not pages.size:
            return []
        per_batch = max(1, _BATCH_SLOTS * self.fmt.stride // self.page_size)
        used = np.unique(pages // per_batch)
        return [(int(b) * per_batch, (int(b) + 1) * per_batch) for b in used]

    def batch(
        self, chain_starts: np.ndarray, first_page: int, last_page: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(segment offset, value, bad) of every pointer on the chains that start in pages
        [first_page, last_page), by segment offset (a pointer two chains reach comes twice)."""
        lo, hi = first_page * self.page_size, min(last_page * self.page_size, self.seg_end)
        mine = chain_starts[(chain_starts >= lo) & (chain_starts < hi)]
        direct = self._direct(mine, lo, hi)
        return direct if direct is not None else self._doubled(mine, lo, hi)

    def _doubled(self, mine: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`batch` by pointer doubling, for any chains (the starts ``mine`` lie in [lo, hi))."""
        stride = self.fmt.stride
        found = []
        # chains from starts at different offsets modulo the stride never meet
        for residue in np.unique(mine % stride).tolist():
            first = lo + (residue - lo) % stride
            words, pos, step, leaves = self._slots(first, hi, stride)
            count = words.size
            slot = np.arange(count, dtype=np.int64)
            bad = leaves & (step != 0)
            table = np.where((step == 0) | leaves, count, slot + step).astype(index_dtype(count + 1))
            chains = JumpTable(np.append(table, count), _CHAIN_LEVELS)
            heads = (mine[mine % stride == residue] - first) // stride
            firsts, counts, _ = chains.pieces(heads, np.full(heads.size, self.page_size // stride + 1))
            nodes, _ = chains.members(firsts, counts)
            nodes = np.sort(nodes)
            found.append((pos[nodes], words[nodes].astype(_U64), bad[nodes]))
        if len(found) > 1:
            at = np.concatenate([f[0] for f in found])
            order = np.argsort(at, kind="stable")
            return (
                at[order],
                np.concatenate([f[1] for f in found])[order],
                np.concatenate([f[2] for f in found])[order],
            )
        return found[0] if found else (np.zeros(0, np.int64), np.zeros(0, _U64), np.zeros(0, bool))

    def _slots(
        self, first: int, hi: int, spacing: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The pointer slots every ``spacing`` bytes from segment offset ``first`` that end below
        ``hi``: their words (a view of ``data``), segment offsets, ``next`` (in stride units) and
        whether that leaves the slot's page (or the segment's bytes)."""
        fmt = self.fmt
        count = (hi - fmt.size - first) // spacing + 1
        words = np.ndarray(
            shape=(count,),
            dtype="<u8" if fmt.size == 8 else "<u4",
            buffer=self.data,
            offset=self.fileoff + first,
            strides=(spacing,),
        )
        step = ((words >> fmt.next_shift) & ((1 << fmt.next_bits) - 1)).astype(np.int64)
        pos = np.arange(first, first + count * spacing, spacing, dtype=np.int64)
        page_end = np.minimum((pos // self.page_size + 1) * self.page_size, self.seg_end)
        leaves = pos + step * fmt.stride + fmt.size > page_end
        return words, pos, step, leaves

    def _direct(self, mine: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """:meth:`batch` without doubling, for the usual chains: one start a page, all at the same
        offset modulo the pointer size, and every step a whole number of pointers (so that only
        the slots a pointer apart from the starts can be on a chain). None when that does not
        hold or :func:`forward_reach` cannot settle the chains quickly."""
        fmt = self.fmt
        unit = max(fmt.size, fmt.stride)  # slots a pointer apart
        per_unit = unit // fmt.stride
        if not mine.size:
            return np.zeros(0, np.int64), np.zeros(0, _U64), np.zeros(0, bool)
        first = int(mine[0])
        pages = mine // self.page_size
        if ((mine - first) % unit).any() or (pages[1:] <= pages[:-1]).any():
            return None
        first = lo + (first - lo) % unit
        words, pos, step, leaves = self._slots(first, hi, unit)
        count = words.size
        bad = leaves & (step != 0)
        # a step between the units (odd, for 8-byte pointers at a 4-byte stride) ends the walk
        # here; such a pointer on a chain sends the batch to the doubling walk
        between = (step % per_unit != 0) & ~leaves
        stops = (step == 0) | leaves | between
        table = np.where(stops, count, np.arange(count) + step // per_unit).astype(index_dtype(count + 1))
        reach = forward_reach(np.append(table, count), (mine - first) // unit, _REACH_ROUNDS)
        if reach is None or (between & reach).any():
            return None
        return pos[reach], words[reach].astype(_U64), bad[reach]
