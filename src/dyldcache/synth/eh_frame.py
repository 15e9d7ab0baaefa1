"""__eh_frame: the pc-relative pointers of DWARF call frame information.

CIEs and FDEs are read with the Mach-O reader's parser (``dyldcache.macho.eh_frame``).
Each encoded pointer that is pc-relative (``DW_EH_PE_pcrel``, optionally ``indirect``) refers to
``field address + value``: the CIE personality (usually through a GOT slot in a data segment),
the FDE's function start and its LSDA. A 4-byte one that crosses segments gets DELTA_32, an
8-byte one DELTA_64. Absolute pointers are rebased like any pointer; other applications
(text-, data-, function-relative, aligned) refuse the image. The FDE-to-CIE links are offsets
within the section. CFA programs hold code offsets relative to their FDE, never addresses.
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import MachOFormatError, SplitSegSynthesisError
from ..macho import constants as C
from ..macho.eh_frame import DW_EH_PE_pcrel, PointerField, parse_eh_frame
from ..macho.file import MachOFile, Section
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .image_map import ImageMap

#: DW_EH_PE application bits: absolute (0x00) and pc-relative (0x10) are the ones handled
_APPLICATION = 0x70


def field_target(section: Section, field: PointerField) -> int | None:
    """Address a pc-relative encoded pointer refers to (None for an absolute one)."""
    application = field.encoding & _APPLICATION
    if application == 0:
        return None
    if application != DW_EH_PE_pcrel:
        raise ValueError(f"pointer encoding {field.encoding:#x} is neither absolute nor pc-relative")
    return section.addr + field.offset + field.value


def pcrel_entries(imap: ImageMap, section: Section, fields: list[PointerField], what: str) -> np.ndarray:
    """DELTA_32 (4-byte) and DELTA_64 (8-byte) entries for the pc-relative ``fields`` of
    ``section`` whose target lies in another segment; a narrower pc-relative field refuses."""
    located = [(f, t) for f in fields if (t := field_target(section, f)) is not None]
    parts = [np.zeros(0, dtype=SPLIT_SEG_DTYPE)]
    for f, _ in located:
        if f.size not in (4, 8):
            raise imap.error(section.addr + f.offset, f"{what} is a pc-relative value of {f.size} bytes")
    for size, kind in ((4, C.DYLD_CACHE_ADJ_V2_DELTA_32), (8, C.DYLD_CACHE_ADJ_V2_DELTA_64)):
        at = [section.addr + f.offset for f, _ in located if f.size == size]
        to = [t for f, t in located if f.size == size]
        parts.append(
            imap.entries(kind, np.array(at, dtype=np.int64), np.array(to, dtype=np.int64), what=what)
        )
    return np.concatenate(parts)


def _address(section: Section, field: PointerField) -> int:
    target = field_target(section, field)
    return field.value if target is None else target


def eh_frame_entries(image: MachOFile, imap: ImageMap) -> tuple[np.ndarray, list[int], list[tuple[int, int]]]:
    """(entries for every __eh_frame section, the function start of every FDE, (function
    start, LSDA address) of every FDE that names an LSDA)."""
    parts: list[np.ndarray] = []
    functions: list[int] = []
    lsdas: list[tuple[int, int]] = []
    for sect in image.sections:
        if sect.sectname != "__eh_frame" or sect.size == 0:
            continue
        data = bytes(image.section_content(sect))
        try:
            cies, fdes = parse_eh_frame(data, sect.full_name)
            fields = [c.personality for c in cies.values() if c.personality is not None]
            fields += [f.pc_begin for f in fdes] + [f.lsda for f in fdes if f.lsda is not None]
            functions += [_address(sect, f.pc_begin) for f in fdes]
            lsdas += [
                (_address(sect, f.pc_begin), _address(sect, f.lsda)) for f in fdes if f.lsda is not None
            ]
            parts.append(pcrel_entries(imap, sect, fields, "__eh_frame pointer"))
        except (MachOFormatError, ValueError, IndexError, struct.error) as exc:
            raise SplitSegSynthesisError(image.path, sect.full_name, None, f"cannot parse: {exc}") from None
    entries = np.concatenate(parts) if parts else np.zeros(0, dtype=SPLIT_SEG_DTYPE)
    return entries, functions, lsdas
