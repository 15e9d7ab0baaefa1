"""__TEXT,__objc_methlist: Objective-C method lists with relative offsets.

Each list is ``u32 entsizeAndFlags, u32 count`` and ``count`` entries of three int32 offsets,
each from its own field: the selector reference (a pointer slot in __objc_selrefs, in a data
segment), the type string (__objc_methtype, in __TEXT) and the implementation (__text; 0 when
absent). ``entsizeAndFlags`` must be 12 with the relative flag (0x80000000); the flag the shared
cache sets (0x40000000, selectors as direct offsets) and any other size refuse the image. The
linker lays the lists out back to back, 4-byte aligned; zero words between them are padding.
"""

from __future__ import annotations

import numpy as np

from ..errors import SplitSegSynthesisError
from ..macho import constants as C
from ..macho.file import MachOFile
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .image_map import ImageMap

#: method_list_t flags (objc4 objc-runtime-new.h)
RELATIVE_METHODS = 0x80000000
SELECTORS_ARE_DIRECT = 0x40000000
RELATIVE_ENTRY_SIZE = 12


def method_list_entries(image: MachOFile, imap: ImageMap) -> np.ndarray:
    """DELTA_32 entries for the relative offsets of every method list that cross segments."""
    parts: list[np.ndarray] = []
    for sect in image.sections:
        if sect.sectname != "__objc_methlist" or sect.size == 0 or sect.is_zerofill:
            continue
        words = np.frombuffer(bytes(image.section_content(sect))[: sect.size // 4 * 4], dtype="<u4")
        fields: list[int] = []  # word indexes of the offsets
        k = 0
        while k < len(words):
            header = int(words[k])
            if header == 0:
                k += 1
                continue
            if header != RELATIVE_METHODS | RELATIVE_ENTRY_SIZE:
                raise SplitSegSynthesisError(
                    image.path,
                    sect.full_name,
                    4 * k,
                    f"method list flags and size {header:#x} are not a relative list of 12-byte entries",
                )
            if k + 1 >= len(words):
                raise SplitSegSynthesisError(image.path, sect.full_name, 4 * k, "truncated method list")
            count = int(words[k + 1])
            end = k + 2 + 3 * count
            if end > len(words):
                raise SplitSegSynthesisError(
                    image.path, sect.full_name, 4 * k, f"method list of {count} entries runs past the section"
                )
            fields.extend(range(k + 2, end))
            k = end
        if not fields:
            continue
        at = sect.addr + 4 * np.array(fields, dtype=np.int64)
        values = words[fields].astype(np.int32).astype(np.int64)
        keep = values != 0  # an absent implementation
        parts.append(
            imap.entries(
                C.DYLD_CACHE_ADJ_V2_DELTA_32, at[keep], at[keep] + values[keep], what="method list offset"
            )
        )
    return np.concatenate(parts) if parts else np.zeros(0, dtype=SPLIT_SEG_DTYPE)
