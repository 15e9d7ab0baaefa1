"""A guard for relative tables in the constant data of __TEXT.

On x86_64, LLVM turns a ``switch`` that returns addresses of constant objects into a relative
lookup table in ``__TEXT,__const``: each entry is ``object - table``. When an object lives in
__DATA_CONST (it holds pointers) the entry changes when the segments move apart, and only a
relocation would say how long the table is. We do not guess: from each table start the code
uses (``x86_64_code`` finds them), consecutive 32-bit words are read as long as one of two
readings (from the table start, or from the word itself) lands inside the image; if one lands
in another segment the image is refused, naming the word. True tables are covered completely;
the price is an occasional refusal when the data after a table happens to look like one.
(arm64 Darwin has no relative lookup tables, and its jump tables are relative to a label in
__text.)
"""

from __future__ import annotations

import numpy as np

from ..macho.file import MachOFile
from .code_sections import is_code
from .image_map import ImageMap
from .sections import PARSED

#: the most words read from one starting address
MAX_WORDS = 4096


def check_relative_tables(image: MachOFile, imap: ImageMap, taken: np.ndarray) -> None:
    """Refuse the image if a word of a table at ``taken`` reaches another segment (see above)."""
    lo = int(imap.seg_start.min()) if len(imap.seg_start) else 0
    hi = int(imap.seg_end.max()) if len(imap.seg_end) else 0
    for sect in image.sections:
        if (
            sect.size < 4
            or is_code(sect)
            or sect.is_zerofill
            or sect.sectname in PARSED
            or sect.type != 0
            or sect.segment_index != imap.sect_seg[0]
        ):
            continue
        starts = taken[(taken >= sect.addr) & (taken < sect.addr + sect.size - 3)]
        if not len(starts):
            continue
        data = bytes(image.section_content(sect))
        own = sect.segment_index
        for start in np.unique(starts).tolist():
            off = start - sect.addr
            n = min((sect.size - off) // 4, MAX_WORDS)
            words = np.frombuffer(data, dtype="<i4", count=n, offset=off).astype(np.int64)
            at = start + 4 * np.arange(n, dtype=np.int64)
            readings = np.stack([start + words, at + words])
            inside = (readings >= lo) & (readings < hi)
            stop = np.flatnonzero(~inside.any(axis=0))
            n = int(stop[0]) if len(stop) else n
            if n == 0:
                continue
            segs = imap.segment_of(readings[:, :n].reshape(-1)).reshape(2, n)
            linkedit = np.array([name == "__LINKEDIT" for name in imap.seg_names])
            moved = (segs >= 0) & (segs != own) & ~linkedit[np.maximum(segs, 0)]
            away = np.flatnonzero((moved & inside[:, :n]).any(axis=0))
            if len(away):
                k = int(away[0])
                raise imap.error(
                    int(at[k]),
                    f"may be an entry of a relative table at {start:#x} reaching "
                    f"{imap.seg_names[int(segs[:, k].max())]}; only relocations could tell",
                )
