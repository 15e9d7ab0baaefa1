"""__unwind_info: the image offsets of compact unwind information.

Format: <mach-o/compact_unwind_encoding.h> (``unwind_info_section_header``). Every address in
it is a 32-bit offset from the mach header: personality routines (GOT slots, usually in a data
segment), function starts in the first-level index, the LSDA index and regular second-level
pages, LSDAs (in __TEXT). The builder rewrites one only when its target moved relative to the
section (IMAGE_OFF_32), so the entries are those whose target lies in another segment.
Compressed second-level pages hold offsets from their index entry's function: not addresses.
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import SplitSegSynthesisError
from ..macho import constants as C
from ..macho.file import MachOFile
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .image_map import ImageMap

_HEADER = struct.Struct("<7I")
_REGULAR, _COMPRESSED = 2, 3


class _Bad(Exception):
    pass


def _u32(data: bytes, offset: int) -> int:
    if offset < 0 or offset + 4 > len(data):
        raise _Bad(f"offset {offset:#x} is outside the section")
    return int.from_bytes(data[offset : offset + 4], "little")


def _image_offset_fields(data: bytes) -> tuple[list[int], list[int]]:
    """(section offsets of every image-offset field, section offsets of the LSDA offsets)."""
    if len(data) < _HEADER.size:
        raise _Bad("shorter than its header")
    version, _, _, pers_off, pers_count, index_off, index_count = _HEADER.unpack_from(data)
    if version != 1:
        raise _Bad(f"version {version} is not 1")
    fields = [pers_off + 4 * i for i in range(pers_count)]
    lsda_fields: list[int] = []
    lsda_first = lsda_last = None
    for i in range(index_count):
        at = index_off + 12 * i
        fields.append(at)
        page = _u32(data, at + 4)
        lsda_at = _u32(data, at + 8)
        lsda_first = lsda_at if lsda_first is None else lsda_first
        lsda_last = lsda_at
        if page == 0 or i == index_count - 1:
            continue  # the sentinel has no page
        kind = _u32(data, page)
        if kind == _REGULAR:
            entries_off, count = struct.unpack_from("<HH", data, page + 4)
            if page + entries_off + 8 * count > len(data):
                raise _Bad(f"second-level page at {page:#x} runs past the section")
            fields += [page + entries_off + 8 * k for k in range(count)]
        elif kind != _COMPRESSED:
            raise _Bad(f"second-level page at {page:#x} has kind {kind}")
    if lsda_first is not None and lsda_last is not None:
        for at in range(lsda_first, lsda_last, 8):
            fields.append(at)
            lsda_fields.append(at + 4)
            _u32(data, at + 4)
    return fields + lsda_fields, lsda_fields


def unwind_info_entries(image: MachOFile, imap: ImageMap) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(IMAGE_OFF_32 entries for every cross-segment field, (function start, LSDA address) of
    every entry of the LSDA index)."""
    parts: list[np.ndarray] = []
    lsdas: list[tuple[int, int]] = []
    for sect in image.sections:
        if sect.sectname != "__unwind_info" or sect.size == 0:
            continue
        data = bytes(image.section_content(sect))
        try:
            fields, lsda_fields = _image_offset_fields(data)
            values = [_u32(data, f) for f in fields]
        except (_Bad, struct.error) as exc:
            raise SplitSegSynthesisError(image.path, sect.full_name, None, f"cannot parse: {exc}") from None
        lsdas += [(imap.base + _u32(data, f - 4), imap.base + _u32(data, f)) for f in lsda_fields]
        if fields:
            parts.append(
                imap.entries(
                    C.DYLD_CACHE_ADJ_V2_IMAGE_OFF_32,
                    sect.addr + np.array(fields, dtype=np.int64),
                    imap.base + np.array(values, dtype=np.int64),
                    what="__unwind_info image offset",
                )
            )
    entries = np.concatenate(parts) if parts else np.zeros(0, dtype=SPLIT_SEG_DTYPE)
    return entries, lsdas
