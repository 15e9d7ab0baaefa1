"""The driver: split seg info v2 entries for a dylib that has none (docs/split-seg-synthesis.md).

``synthesize_split_seg(image)`` returns SPLIT_SEG_DTYPE records shaped like the decoded
LC_SEGMENT_SPLIT_INFO v2 entries of ``image.split_seg.entries``, so the builder applies them
unchanged (``builder/adjust.py``), or raises SplitSegSynthesisError naming the section and
offset that make the dylib ineligible. Any existing split seg info is ignored.
"""

from __future__ import annotations

import numpy as np

from ..errors import SplitSegSynthesisError
from ..macho.file import MachOFile
from ..macho.split_seg import SPLIT_SEG_DTYPE, SplitSegInfo
from .arm64_code import scan_arm64
from .eh_frame import eh_frame_entries
from .image_map import ImageMap
from .init_offsets import init_offset_entries
from .lsda import landing_pads, lsda_entries
from .objc_method_lists import method_list_entries
from .pointers import pointer_entries
from .relative_tables import relative_table_entries
from .sections import check_sections
from .unwind_info import unwind_info_entries
from .x86_64_code import scan_x86_64

#: ADRP works on 4 KiB pages whatever the OS page size
ADRP_PAGE = 0x1000
SUPPORTED_ARCHS = ("arm64", "arm64e", "x86_64")


def synthesize_split_seg(image: MachOFile, *, keep_page_offsets: bool = False) -> np.ndarray:
    """Every reference of ``image`` the cache builder must adjust when it moves its segments.

    ``keep_page_offsets``: the builder promises to place each segment at an address congruent
    to its linked address modulo 4 KiB. Then the low 12 bits of every target stay the same, only
    ADRP page deltas change, and an ADRP whose page-offset users cannot all be found is still
    adjusted correctly; without the promise such an ADRP refuses the image.
    """
    if image.arch not in SUPPORTED_ARCHS:
        raise SplitSegSynthesisError(
            image.path, None, None, f"cannot synthesize split seg info for {image.arch}"
        )
    for seg in image.segments:
        if seg.vmaddr % ADRP_PAGE:
            raise SplitSegSynthesisError(
                image.path, None, None, f"segment {seg.name} at {seg.vmaddr:#x} is not 4 KiB aligned"
            )
    imap = ImageMap.of(image)
    check_sections(image, imap.moving_segments())
    parts = [pointer_entries(image, imap)]
    eh, functions, lsdas_eh = eh_frame_entries(image, imap)
    unwind, lsdas_unwind = unwind_info_entries(image, imap)
    lsdas = lsdas_eh + lsdas_unwind
    if image.arch == "x86_64":
        # code only the unwinder enters is known from the unwind information
        known = functions + landing_pads(image, imap, lsdas)
        code, tables, _ = scan_x86_64(image, imap, known)
        parts.append(relative_table_entries(image, imap, tables))
    else:
        # LLVM builds no relative lookup tables for arm64 Darwin, and its jump tables are
        # relative to a label in __text: nothing in __TEXT,__const reaches another segment
        code = scan_arm64(image, imap, keep_page_offsets=keep_page_offsets).entries
    parts += [code, eh, unwind, lsda_entries(image, imap, [lsda for _, lsda in lsdas])]
    parts += [method_list_entries(image, imap), init_offset_entries(image, imap)]
    entries = np.concatenate(parts) if parts else np.zeros(0, dtype=SPLIT_SEG_DTYPE)
    order = np.lexsort(
        (
            entries["to_offset"],
            entries["from_offset"],
            entries["kind"],
            entries["to_section"],
            entries["from_section"],
        )
    )
    entries = entries[order]
    keep = np.ones(len(entries), dtype=bool)
    if len(entries) > 1:
        same = entries[1:] == entries[:-1]
        keep[1:] = ~same
    return entries[keep]


def synthesized_split_seg_info(image: MachOFile, *, keep_page_offsets: bool = False) -> SplitSegInfo:
    """The same entries as a decoded v2 SplitSegInfo (what ``image.split_seg`` would hold)."""
    return SplitSegInfo(2, synthesize_split_seg(image, keep_page_offsets=keep_page_offsets))
