"""The code sections of an image, with their function starts and data-in-code ranges.

A code section is one with ``S_ATTR_PURE_INSTRUCTIONS`` or ``S_ATTR_SOME_INSTRUCTIONS``. Its
functions run from each LC_FUNCTION_STARTS address to the next (the section start counts as one:
stubs and stub helpers have no function starts). LC_DATA_IN_CODE ranges are data, not
instructions: jump tables on x86_64, literal pools in hand-written code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..macho import constants as C
from ..macho.file import MachOFile, Section
from .image_map import ImageMap

CODE_ATTRIBUTES = C.S_ATTR_PURE_INSTRUCTIONS | C.S_ATTR_SOME_INSTRUCTIONS


def is_code(section: Section) -> bool:
    return bool(section.flags & CODE_ATTRIBUTES)


@dataclass(slots=True)
class CodeRegion:
    """One code section: its bytes, its function starts, its data-in-code ranges."""

    section: Section
    content: bytes
    #: sorted VM addresses of function starts inside the section, the section start first
    starts: np.ndarray
    #: (start, end) VM address ranges of data in code inside the section
    data_in_code: list[tuple[int, int]]

    def data_in_code_mask(self, unit: int) -> np.ndarray:
        """One bool per ``unit`` bytes of the section: True where any byte is data in code."""
        n = -(-len(self.content) // unit)
        mask = np.zeros(n, dtype=bool)
        for start, end in self.data_in_code:
            mask[(start - self.section.addr) // unit : -(-(end - self.section.addr) // unit)] = True
        return mask


def code_regions(image: MachOFile, imap: ImageMap) -> list[CodeRegion]:
    """Every code section of ``image`` with content."""
    starts = np.asarray(image.function_starts, dtype=np.int64)
    dic = image.data_in_code
    dic_start = imap.base + dic["offset"].astype(np.int64)
    dic_end = dic_start + dic["length"].astype(np.int64)
    out = []
    for sect in image.sections:
        if not is_code(sect) or sect.size == 0 or sect.is_zerofill:
            continue
        inside = starts[(starts >= sect.addr) & (starts < sect.addr + sect.size)]
        bounds = np.unique(np.concatenate([np.array([sect.addr], dtype=np.int64), inside]))
        ranges = [
            (max(int(a), sect.addr), min(int(b), sect.addr + sect.size))
            for a, b in zip(dic_start, dic_end, strict=True)
            if a < sect.addr + sect.size and b > sect.addr
        ]
        content = bytes(image.section_content(sect))
        out.append(CodeRegion(sect, content, bounds, ranges))
    return out
