"""DWARF call frame information in ``__eh_frame``: its CIEs, FDEs and encoded pointers (the
``.eh_frame`` form of the DWARF 4 standard and the LSB's pointer encodings).

Only what the linker and split seg synthesis need is read: each record's place, the pointer
encodings, and the fields holding pointers (personality, pc_begin, LSDA). Every structural
problem raises :class:`~dyldcache.errors.MachOFormatError` naming the section.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import MachOFormatError
from .leb128 import uleb_decode

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
    """Bytes of a pointer in DW_EH_PE ``encoding``; ValueError for a form this reader lacks."""
    fmt = encoding & 0x0F
    if fmt in (0x00, 0x04, 0x0C):
        return 8
    if fmt in (0x03, 0x0B):
        return 4
    if fmt in (0x02, 0x0A):
        return 2
    raise ValueError(f"unsupported DWARF pointer encoding {encoding:#x} in __eh_frame")


def read_encoded(data: bytes, pos: int, encoding: int) -> PointerField:
    size = encoded_size(encoding)
    signed = (encoding & 0x0F) in (0x0A, 0x0B, 0x0C) or (encoding & 0x70) == DW_EH_PE_pcrel
    value = int.from_bytes(data[pos : pos + size], "little", signed=signed)
    return PointerField(pos, size, encoding, value)


def parse_eh_frame(data: bytes, where: str) -> tuple[dict[int, CIE], list[FDE]]:
    """Every CIE (by offset) and FDE of an __eh_frame section; ``where`` names it in errors."""
    try:
        return _parse(data, where)
    except ValueError as exc:  # a ULEB128 or a pointer encoding this reader cannot decode
        raise MachOFormatError(where, None, str(exc)) from None


def _parse(data: bytes, where: str) -> tuple[dict[int, CIE], list[FDE]]:
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
            raise MachOFormatError(where, None, "64-bit DWARF __eh_frame records are not supported")
        end = pos + length
        if end > len(data):
            raise MachOFormatError(where, None, f"__eh_frame record at {start:#x} runs past the section")
        id_pos = pos
        cie_id = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if cie_id == 0:
            cies[start] = _cie(data, start, pos, where)
        else:
            cie_off = id_pos - cie_id
            cie = cies.get(cie_off)
            if cie is None:
                raise MachOFormatError(where, None, f"FDE at {start:#x} refers to no CIE")
            fdes.append(_fde(data, start, pos, cie))
        pos = end
    return cies, fdes


def _cie(data: bytes, start: int, pos: int, where: str) -> CIE:
    version = data[pos]
    pos += 1
    aug_end = data.index(b"\0", pos)
    aug = data[pos:aug_end].decode("ascii", "replace")
    pos = aug_end + 1
    _, pos = uleb_decode(data, pos)  # code alignment
    _, pos = uleb_decode(data, pos)  # data alignment (SLEB, only skipped)
    if version == 1:
        pos += 1
    else:
        _, pos = uleb_decode(data, pos)
    fde_enc, lsda_enc, personality = 0x00, DW_EH_PE_omit, None
    if aug.startswith("z"):
        _, pos = uleb_decode(data, pos)
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
            elif ch not in "SB":
                raise MachOFormatError(where, None, f"unknown CIE augmentation {aug!r}")
    return CIE(start, aug, fde_enc, lsda_enc, personality)


def _fde(data: bytes, start: int, pos: int, cie: CIE) -> FDE:
    pc_begin = read_encoded(data, pos, cie.fde_encoding)
    pos += pc_begin.size
    range_size = encoded_size(cie.fde_encoding & 0x0F)
    pc_range = int.from_bytes(data[pos : pos + range_size], "little")
    pos += range_size
    lsda = None
    if cie.augmentation.startswith("z"):
        _, pos = uleb_decode(data, pos)
        if "L" in cie.augmentation and cie.lsda_encoding != DW_EH_PE_omit:
            lsda = read_encoded(data, pos, cie.lsda_encoding)
    return FDE(start, cie.offset, pc_begin, pc_range, lsda)
