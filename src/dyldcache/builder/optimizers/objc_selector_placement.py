"""Where the selector strings of IMP-cached classes go, so that each class's selectors fall into
distinct buckets (objc_imp_caches.py; dyld-1162 solves the same problem in IMPCaches.cpp).

objc_msgSend takes the bucket of a selector as ``((sel - magic selector) >> shift) & mask``. The
selector strings are cut into bags of ``BAG`` bytes from the magic selector on, and every class
uses ``shift = log2(BAG)``: a selector's bucket is then its bag number's low bits. Classes are
taken largest first; for each, the smallest power-of-two bucket count (up to ``GROWTH`` times
its method count, at most 2048) under which the selectors already placed by earlier classes
fall into distinct buckets is chosen, and each of its selectors not placed yet goes to the
lowest bag whose bucket is still free in this class and which has room for the string. A class
for which no bucket count works keeps no placement (objc_imp_caches.py then looks for a shift
and mask over the final offsets, or gives it no cache). Strings longer than a bag are never
placed. The strings of the other selectors fill the bags' gaps afterwards
(ObjCCanonicalSelectors.place_at).

This is a greedy placement without 1162's backtracking: it never moves a string once placed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: bytes per bag, and the shift every placed class uses
BAG_SHIFT = 7
BAG = 1 << BAG_SHIFT
#: the bucket counts tried: from the method count up to this many times it
GROWTH = 8
#: the largest bucket count (cache_mask is 11 bits)
MAX_BUCKETS = 1 << 11


class _Bags:
    """The bytes used in each bag so far (grows on demand)."""

    def __init__(self, first: int) -> None:
        self.fill = np.zeros(64, dtype=np.int64)
        self.fill[0] = first
        self.count = 1

    def room(self, n: int) -> np.ndarray:
        """Free bytes of bags 0..n-1 (bags past the last used one are empty)."""
        if n > len(self.fill):
            grown = np.zeros(max(n, 2 * len(self.fill)), dtype=np.int64)
            grown[: len(self.fill)] = self.fill
            self.fill = grown
        return BAG - self.fill[:n]

    def take(self, bag: int, size: int) -> int:
        at = bag * BAG + int(self.fill[bag])
        self.fill[bag] += size
        self.count = max(self.count, bag + 1)
        return at


def place_selectors(
    classes: Sequence[Sequence[bytes]], first: int
) -> tuple[dict[bytes, int], list[int | None]]:
    """Offsets (from the magic selector, whose ``first`` bytes open bag 0) for the selectors of
    ``classes``, and each class's bucket mask under shift ``BAG_SHIFT`` (None: not placed)."""
    fixed: dict[bytes, int] = {}
    masks: list[int | None] = [None] * len(classes)
    bags = _Bags(first)
    order = sorted(range(len(classes)), key=lambda i: -len(classes[i]))
    for i in order:
        names = classes[i]
        if any(len(n) + 1 > BAG for n in names if n not in fixed):
            continue
        n = len(names)
        buckets = 1 << max(n - 1, 0).bit_length()
        while buckets <= min(MAX_BUCKETS, GROWTH * max(n, 1)):
            mask = buckets - 1
            placed = [(fixed[s] >> BAG_SHIFT) & mask for s in names if s in fixed]
            if len(set(placed)) == len(placed):
                used = np.zeros(buckets, dtype=bool)
                used[placed] = True
                for s in sorted((s for s in names if s not in fixed), key=len, reverse=True):
                    fixed[s] = _put(bags, used, mask, len(s) + 1)
                masks[i] = mask
                break
            buckets <<= 1
    return fixed, masks


def _put(bags: _Bags, used: np.ndarray, mask: int, size: int) -> int:
    """Put a string of ``size`` bytes in the lowest bag whose bucket is free; mark the bucket."""
    limit = bags.count + mask + 1  # past the used bags, some bag of every bucket is empty
    index = np.arange(limit)
    ok = (bags.room(limit) >= size) & ~used[index & mask]
    bag = int(np.flatnonzero(ok)[0])
    used[bag & mask] = True
    return bags.take(bag, size)
