"""The ``__TEXT,__unwind_info`` section (format of <mach-o/compact_unwind_encoding.h>): its rows,
their merging, its layout and its encoding.

``__unwind_info`` is written with regular second-level pages only: every entry carries
its full encoding and image offset. That is a form libunwind and every reader accept,
and it keeps the section's size independent of final addresses, so layout can size it
before anything is placed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import LinkError
from ..macho import constants as C

UNWIND_SECOND_LEVEL_REGULAR = 2
#: a second-level page holds at most this many 8-byte entries (4096-byte pages, 8-byte header)
REGULAR_PAGE_MAX_ENTRIES = (4096 - 8) // 8
#: bytes of one __LD,__compact_unwind row in an object
COMPACT_UNWIND_ENTRY_SIZE = 32


@dataclass(slots=True)
class UnwindEntry:
    """One function's row: image offsets are filled in once layout is done."""

    function: int  # image offset of the function start
    length: int
    encoding: int
    personality_slot: int | None = None  # image offset of the GOT slot holding the personality
    lsda: int | None = None  # image offset of the LSDA


def merge_entries(entries: list[UnwindEntry], unmerged_modes: frozenset[int]) -> list[UnwindEntry]:
    """Fold runs of identical rows the way ld64 does: never rows with an LSDA, nor rows whose
    mode is one of ``unmerged_modes`` (the arch's DWARF mode, x86_64's STACK_IND)."""
    out: list[UnwindEntry] = []
    for e in entries:
        if out:
            prev = out[-1]
            if (
                prev.encoding == e.encoding
                and prev.personality_slot == e.personality_slot
                and prev.lsda is None
                and e.lsda is None
                and e.encoding & C.UNWIND_MODE_MASK not in unmerged_modes
            ):
                prev.length = e.function + e.length - prev.function
                continue
        out.append(UnwindEntry(e.function, e.length, e.encoding, e.personality_slot, e.lsda))
    return out


@dataclass(frozen=True, slots=True)
class UnwindLayout:
    """Where each field of an __unwind_info section sits; used for its size and its split-seg entries."""

    personality_count: int
    entry_count: int
    lsda_count: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.entry_count // REGULAR_PAGE_MAX_ENTRIES))

    @property
    def personalities_offset(self) -> int:
        return 28

    @property
    def index_offset(self) -> int:
        return self.personalities_offset + 4 * self.personality_count

    @property
    def lsda_offset(self) -> int:
        return self.index_offset + 12 * (self.pages + 1)

    @property
    def pages_offset(self) -> int:
        return self.lsda_offset + 8 * self.lsda_count

    def page_offset(self, page: int) -> int:
        return self.pages_offset + page * (8 + 8 * REGULAR_PAGE_MAX_ENTRIES)

    @property
    def size(self) -> int:
        last = self.entry_count - (self.pages - 1) * REGULAR_PAGE_MAX_ENTRIES
        return self.page_offset(self.pages - 1) + 8 + 8 * last


def unwind_layout(entries: list[UnwindEntry], personalities: list[int]) -> UnwindLayout:
    return UnwindLayout(len(personalities), len(entries), sum(1 for e in entries if e.lsda is not None))


def write_unwind_info(
    entries: list[UnwindEntry],
    personalities: list[int],
    text_end: int,
) -> tuple[bytes, list[tuple[int, int]]]:
    """Encode ``entries`` (sorted, merged, image offsets final) into an __unwind_info section.

    ``personalities`` are the image offsets of the GOT slots holding personality routines
    (at most 3). ``text_end`` is the image offset just past the last function, written as
    the index sentinel. Returns the bytes and, for split seg info, every (field offset,
    image offset it holds) pair: each such field is an image offset the cache builder may
    have to adjust.
    """
    if len(personalities) > 3:
        raise LinkError("__unwind_info supports at most 3 personality routines")
    lay = unwind_layout(entries, personalities)
    buf = bytearray(lay.size)
    image_offsets: list[tuple[int, int]] = []

    def put(off: int, value: int) -> None:
        struct.pack_into("<I", buf, off, value)

    struct.pack_into(
        "<7I", buf, 0, 1, 28, 0, lay.personalities_offset, len(personalities), lay.index_offset, lay.pages + 1
    )
    for i, slot in enumerate(personalities):
        put(lay.personalities_offset + 4 * i, slot)
        image_offsets.append((lay.personalities_offset + 4 * i, slot))
    lsda_index = 0
    for page in range(lay.pages):
        chunk = entries[page * REGULAR_PAGE_MAX_ENTRIES : (page + 1) * REGULAR_PAGE_MAX_ENTRIES]
        idx = lay.index_offset + 12 * page
        first = chunk[0].function if chunk else text_end
        struct.pack_into("<3I", buf, idx, first, lay.page_offset(page), lay.lsda_offset + 8 * lsda_index)
        image_offsets.append((idx, first))
        poff = lay.page_offset(page)
        struct.pack_into("<IHH", buf, poff, UNWIND_SECOND_LEVEL_REGULAR, 8, len(chunk))
        for k, e in enumerate(chunk):
            encoding = e.encoding
            if e.personality_slot is not None:
                encoding |= (personalities.index(e.personality_slot) + 1) << 28
            if e.lsda is not None:
                encoding |= C.UNWIND_HAS_LSDA
                loff = lay.lsda_offset + 8 * lsda_index
                struct.pack_into("<II", buf, loff, e.function, e.lsda)
                image_offsets.append((loff, e.function))
                image_offsets.append((loff + 4, e.lsda))
                lsda_index += 1
            struct.pack_into("<II", buf, poff + 8 + 8 * k, e.function, encoding)
            image_offsets.append((poff + 8 + 8 * k, e.function))
    sentinel = lay.index_offset + 12 * lay.pages
    struct.pack_into("<3I", buf, sentinel, text_end, 0, lay.lsda_offset + 8 * lsda_index)
    image_offsets.append((sentinel, text_end))
    return bytes(buf), image_offsets
