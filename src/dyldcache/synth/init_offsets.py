"""``S_INIT_FUNC_OFFSETS`` sections (``__TEXT,__init_offsets``): initializers as 32-bit offsets
from the mach header. An offset whose function is in another segment than the section gets an
IMAGE_OFF_32 entry (initializers are in __text, so normally none does)."""

from __future__ import annotations

import numpy as np

from ..macho import constants as C
from ..macho.file import MachOFile
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .image_map import ImageMap


def init_offset_entries(image: MachOFile, imap: ImageMap) -> np.ndarray:
    parts = []
    for sect in image.sections:
        if sect.type != C.S_INIT_FUNC_OFFSETS or sect.size == 0:
            continue
        values = np.frombuffer(bytes(image.section_content(sect)), dtype="<u4", count=sect.size // 4)
        at = sect.addr + 4 * np.arange(len(values), dtype=np.int64)
        parts.append(
            imap.entries(
                C.DYLD_CACHE_ADJ_V2_IMAGE_OFF_32,
                at,
                imap.base + values.astype(np.int64),
                what="initializer offset",
            )
        )
    return np.concatenate(parts) if parts else np.zeros(0, dtype=SPLIT_SEG_DTYPE)
