"""Relative tables in the constant data of __TEXT: DELTA_32 entries, or a refusal.

On x86_64, LLVM turns a ``switch`` that returns addresses of constant objects into a relative
lookup table in ``__TEXT,__const``: each entry is ``object - table``. When an object lives in
another segment (__DATA_CONST: it holds pointers) the entry changes when the segments move
apart. Such an entry is what ld64 describes with DELTA_32 from the entry to the object: the
builder adds to it how much the object's section moved relative to the entry's, which is the
table's (``builder/adjust.py``; dyld's ``adjustReference`` does the same).

How long a table is only a relocation would say; the code says it in its range check
(``x86_64_tables``). From each table start the code uses outside the code sections
(``x86_64_flow`` finds them; one inside is a jump table there):

- with a count from a range check, exactly those entries are read, and each that reaches
  another segment gets its DELTA_32;
- without one, consecutive 32-bit words are read as long as one of two readings (from the
  table start, or from the word itself) lands inside the image and the word is not 0 (an
  entry for the table itself: no compiler makes one), and one that lands in another segment
  refuses the image, naming the word: true tables are covered completely; the price is an
  occasional refusal when the data after a table happens to look like one.

(arm64 Darwin has no relative lookup tables, and its jump tables are relative to a label in
__text.)
"""

from __future__ import annotations

import numpy as np

from ..macho import constants as C
from ..macho.file import MachOFile
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .image_map import ImageMap

#: the most words read from one starting address without a count
MAX_WORDS = 4096


def relative_table_entries(
    image: MachOFile, imap: ImageMap, taken: list[tuple[int, int | None]]
) -> np.ndarray:
    """DELTA_32 entries for the tables at ``taken`` ((start, entry count or None) pairs), or a
    refusal (see above)."""
    counts: dict[int, int | None] = {}
    for start, count in taken:
        counts[start] = count if counts.get(start, count) == count else None
    lo = int(imap.seg_start.min()) if len(imap.seg_start) else 0
    hi = int(imap.seg_end.max()) if len(imap.seg_end) else 0
    linkedit = np.array([name == "__LINKEDIT" for name in imap.seg_names])
    at_parts: list[np.ndarray] = []
    to_parts: list[np.ndarray] = []
    for start, count in sorted(counts.items()):
        sect = image.section_for_address(start)
        if sect is None or sect.is_zerofill or start + 4 > sect.addr + sect.size:
            raise imap.error(start, f"a relative table at {start:#x} is in no section with content")
        off = start - sect.addr
        if count is not None and off + 4 * count > sect.size:
            raise imap.error(start, f"a relative table of {count} entries runs past its section")
        n = min((sect.size - off) // 4, MAX_WORDS) if count is None else count
        words = np.frombuffer(image.section_content(sect), dtype="<i4", count=n, offset=off).astype(np.int64)
        at = start + 4 * np.arange(n, dtype=np.int64)
        if count is not None:
            at_parts.append(at)
            to_parts.append(start + words)
            continue
        readings = np.stack([start + words, at + words])
        inside = (readings >= lo) & (readings < hi)
        # a zero word would be an entry for the table itself: the data after it
        stop = np.flatnonzero(~inside.any(axis=0) | (words == 0))
        n = int(stop[0]) if len(stop) else n
        if n == 0:
            continue
        segs = imap.segment_of(readings[:, :n].reshape(-1)).reshape(2, n)
        moved = (segs >= 0) & (segs != sect.segment_index) & ~linkedit[np.maximum(segs, 0)]
        away = np.flatnonzero((moved & inside[:, :n]).any(axis=0))
        if len(away):
            k = int(away[0])
            raise imap.error(
                int(at[k]),
                f"may be an entry of a relative table at {start:#x} reaching "
                f"{imap.seg_names[int(segs[:, k].max())]}; only relocations could tell",
            )
    if not at_parts:
        return np.zeros(0, dtype=SPLIT_SEG_DTYPE)
    return imap.entries(
        C.DYLD_CACHE_ADJ_V2_DELTA_32,
        np.concatenate(at_parts),
        np.concatenate(to_parts),
        what="relative table entry",
    )
