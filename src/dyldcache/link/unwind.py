"""Unwind information: reading ``__eh_frame`` CFI and ``__LD,__compact_unwind`` from objects,
and writing the ``__TEXT,__unwind_info`` section (format of <mach-o/compact_unwind_encoding.h>).

``__unwind_info`` is written with regular second-level pages only: every entry carries
its full encoding and image offset. That is a form libunwind and every reader accept,
and it keeps the section's size independent of final addresses, so layout can size it
before anything is placed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import LinkError
from ..macho.leb128 import uleb_decode

# --- compact unwind encodings ------------------------------------------------------------------
UNWIND_IS_NOT_FUNCTION_START = 0x80000000
UNWIND_HAS_LSDA = 0x40000000
UNWIND_PERSONALITY_MASK = 0x30000000
UNWIND_MODE_MASK = 0x0F000000
UNWIND_ARM64_MODE_DWARF = 0x03000000
UNWIND_X86_64_MODE_DWARF = 0x04000000
UNWIND_X86_64_MODE_STACK_IND = 0x03000000

UNWIND_SECOND_LEVEL_REGULAR = 2
#: a second-level page holds at most this many 8-byte entries (4096-byte pages, 8-byte header)
REGULAR_PAGE_MAX_ENTRIES = (4096 - 8) // 8
COMPACT_UNWIND_ENTRY_SIZE = 32


def dwarf_mode(arch: str) -> int:
    return UNWIND_X86_64_MODE_DWARF if arch == "x86_64" else UNWIND_ARM64_MODE_DWARF


# --- DWARF CFI (__eh_frame) ----------------------------------------------------------------------
DW_EH_PE_omit = 0xFF
DW_EH_PE_pcrel = 0x10
DW_EH_PE_indirect = 0x80


@dataclass(frozen=True, slots=True)
class PointerField:
    """An encoded pointer inside __eh_frame."""

    offset: int  # offset of the field in the section
    size: int  # 4 or 8
    encoding: int
    value: int  # the raw (sign-extended) field value

    @property
    def pcrel(self) -> bool:
        return (self.encoding & 0x70) == DW_EH_PE_pcrel


@dataclass(frozen=True, slots=True)
class FDE:
    offset: int  # offset of the record (its length field) in the section
    cie_offset: int
    pc_begin: PointerField
    pc_range: int
    lsda: PointerField | None


@dataclass(frozen=True, slots=True)
class CIE:
    offset: int
    augmentation: str
    fde_encoding: int
    lsda_encoding: int
    personality: PointerField | None


def encoded_size(encoding: int) -> int:
    fmt = encoding & 0x0F
    if fmt in (0x00, 0x04, 0x0C):
        return 8
    if fmt in (0x03, 0x0B):
        return 4
    if fmt in (0x02, 0x0A):
        return 2
    raise LinkError(f"unsupported DWARF pointer encoding {encoding:#x} in __eh_frame")


def read_encoded(data: bytes, pos: int, encoding: int) -> PointerField:
    size = encoded_size(encoding)
    signed = (encoding & 0x0F) in (0x0A, 0x0B, 0x0C) or (encoding & 0x70) == DW_EH_PE_pcrel
    value = int.from_bytes(data[pos : pos + size], "little", signed=signed)
    return PointerField(pos, size, encoding, value)


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    try:
        return uleb_decode(data, pos)
    except ValueError as exc:
        raise LinkError(f"__eh_frame: {exc}") from None


def parse_eh_frame(data: bytes, where: str) -> tuple[dict[int, CIE], list[FDE]]:
    """Every CIE (by offset) and FDE of an __eh_frame section."""
    cies: dict[int, CIE] = {}
    fdes: list[FDE] = []
    pos = 0
    while pos + 4 <= len(data):
        start = pos
        length = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if length == 0:
            break
        if length == 0xFFFFFFFF:
            raise LinkError(f"{where}: 64-bit DWARF __eh_frame records are not supported")
        end = pos + length
        if end > len(data):
            raise LinkError(f"{where}: __eh_frame record at {start:#x} runs past the section")
        id_pos = pos
        cie_id = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if cie_id == 0:
            version = data[pos]
            pos += 1
            aug_end = data.index(b"\0", pos)
            aug = data[pos:aug_end].decode("ascii", "replace")
            pos = aug_end + 1
            _, pos = _uleb(data, pos)  # code alignment
            _, pos = _uleb(data, pos)  # data alignment (SLEB, only skipped)
            if version == 1:
                pos += 1
            else:
                _, pos = _uleb(data, pos)
            fde_enc, lsda_enc, personality = 0x00, DW_EH_PE_omit, None
            if aug.startswith("z"):
                _, pos = _uleb(data, pos)
                for ch in aug[1:]:
                    if ch == "P":
                        penc = data[pos]
                        personality = read_encoded(data, pos + 1, penc)
                        pos += 1 + personality.size
                    elif ch == "L":
                        lsda_enc = data[pos]
                        pos += 1
                    elif ch == "R":
                        fde_enc = data[pos]
                        pos += 1
                    elif ch in "SB":
                        pass
                    else:
                        raise LinkError(f"{where}: unknown CIE augmentation {aug!r}")
            cies[start] = CIE(start, aug, fde_enc, lsda_enc, personality)
        else:
            cie_off = id_pos - cie_id
            cie = cies.get(cie_off)
            if cie is None:
                raise LinkError(f"{where}: FDE at {start:#x} refers to no CIE")
            pc_begin = read_encoded(data, pos, cie.fde_encoding)
            pos += pc_begin.size
            pc_range = int.from_bytes(data[pos : pos + encoded_size(cie.fde_encoding & 0x0F)], "little")
            pos += encoded_size(cie.fde_encoding & 0x0F)
            lsda = None
            if cie.augmentation.startswith("z"):
                _, pos = _uleb(data, pos)
                if "L" in cie.augmentation and cie.lsda_encoding != DW_EH_PE_omit:
                    lsda = read_encoded(data, pos, cie.lsda_encoding)
            fdes.append(FDE(start, cie_off, pc_begin, pc_range, lsda))
        pos = end
    return cies, fdes


# --- __unwind_info ---------------------------------------------------------------------------


@dataclass(slots=True)
class UnwindEntry:
    """One function's row: image offsets are filled in once layout is done."""

    function: int  # image offset of the function start
    length: int
    encoding: int
    personality_slot: int | None = None  # image offset of the GOT slot holding the personality
    lsda: int | None = None  # image offset of the LSDA


def merge_entries(entries: list[UnwindEntry], arch: str) -> list[UnwindEntry]:
    """Fold runs of identical rows the way ld64 does (never for LSDA, DWARF or x86 STACK_IND rows)."""
    out: list[UnwindEntry] = []
    dwarf = dwarf_mode(arch)
    for e in entries:
        if out:
            prev = out[-1]
            mode = e.encoding & UNWIND_MODE_MASK
            if (
                prev.encoding == e.encoding
                and prev.personality_slot == e.personality_slot
                and prev.lsda is None
                and e.lsda is None
                and mode != dwarf
                and not (arch == "x86_64" and mode == UNWIND_X86_64_MODE_STACK_IND)
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
                encoding |= UNWIND_HAS_LSDA
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
