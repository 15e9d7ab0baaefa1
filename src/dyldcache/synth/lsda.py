"""__gcc_except_tab: the type tables of language-specific data areas (LSDAs).

An LSDA (the Itanium C++ ABI exception table, as LLVM writes it) starts with the encodings of
its landing-pad base and type table, then a call-site table (offsets from the function start:
not addresses), an action table, and the type table, which grows down from its base. Its
entries, as many as the largest type filter the actions use (exception specifications list
more after the base), are pointers in the type-table encoding: on Darwin pc-relative and
indirect, to a GOT slot holding the ``typeinfo``. Those crossing segments get DELTA_32.

Only LSDAs that unwind information points at are read (from __unwind_info's LSDA index and
from FDEs); bytes no unwinder can reach are never interpreted at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SplitSegSynthesisError
from ..macho.eh_frame import DW_EH_PE_omit, PointerField, encoded_size, read_encoded
from ..macho.file import MachOFile
from ..macho.leb128 import uleb_decode
from ..macho.split_seg import SPLIT_SEG_DTYPE
from .eh_frame import pcrel_entries
from .image_map import ImageMap

_ULEB128, _SLEB128 = 0x01, 0x09


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def u8(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self) -> int:
        value, self.pos = uleb_decode(self.data, self.pos)
        return value

    def sleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.u8()
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result - (1 << shift) if byte & 0x40 else result

    def encoded(self, encoding: int) -> PointerField:
        fmt = encoding & 0x0F
        at = self.pos
        if fmt == _ULEB128:
            return PointerField(at, self.pos - at, encoding, self.uleb())
        if fmt == _SLEB128:
            return PointerField(at, self.pos - at, encoding, self.sleb())
        field = read_encoded(self.data, at, encoding)
        if at + field.size > len(self.data):
            raise IndexError("encoded value runs past the section")
        self.pos = at + field.size
        return field


@dataclass(frozen=True, slots=True)
class _Header:
    """The LSDA fields before its action table."""

    #: the landing-pad base field, None when omitted (the base is then the function start)
    lp_start: PointerField | None
    ttype_encoding: int
    #: offset of the type table's base in the section, None without a type table
    ttype_base: int | None
    #: (landing pad offset from the base, action offset + 1 or 0) of every call site
    call_sites: list[tuple[int, int]]
    #: offset of the action table in the section
    actions: int


def _header(data: bytes, start: int) -> _Header:
    r = _Reader(data, start)
    lp_encoding = r.u8()
    lp_start = r.encoded(lp_encoding) if lp_encoding != DW_EH_PE_omit else None
    ttype_encoding = r.u8()
    ttype_base = None
    if ttype_encoding != DW_EH_PE_omit:
        offset = r.uleb()
        ttype_base = r.pos + offset
    cs_encoding = r.u8()
    cs_length = r.uleb()
    cs_end = r.pos + cs_length
    sites: list[tuple[int, int]] = []
    while r.pos < cs_end:
        r.encoded(cs_encoding)  # start and length of the region: offsets from the function start
        r.encoded(cs_encoding)
        pad = r.encoded(cs_encoding).value
        sites.append((pad, r.uleb()))
    if r.pos != cs_end:
        raise IndexError("call-site table overruns its length")
    return _Header(lp_start, ttype_encoding, ttype_base, sites, cs_end)


def _type_fields(data: bytes, start: int) -> list[PointerField]:
    """The encoded type-table entries (and landing-pad base) of the LSDA at ``start``."""
    header = _header(data, start)
    r = _Reader(data, start)
    fields: list[PointerField] = [header.lp_start] if header.lp_start is not None else []
    ttype_encoding, ttype_base, cs_end = header.ttype_encoding, header.ttype_base, header.actions
    actions = {cs_end + action - 1 for _, action in header.call_sites if action}
    max_type = 0
    specs: set[int] = set()
    seen: set[int] = set()
    todo = sorted(actions)
    while todo:
        at = todo.pop()
        if at in seen:
            continue
        seen.add(at)
        r.pos = at
        type_filter = r.sleb()
        next_at = r.pos
        displacement = r.sleb()
        if type_filter > 0:
            max_type = max(max_type, type_filter)
        elif type_filter < 0:
            specs.add(-type_filter - 1)
        if displacement:
            todo.append(next_at + displacement)
    if ttype_base is None:
        if max_type or specs:
            raise IndexError("actions use types but there is no type table")
        return fields
    for spec in specs:  # exception specifications: ULEB type indexes after the base, 0-ended
        r.pos = ttype_base + spec
        while index := r.uleb():
            max_type = max(max_type, index)
    size = encoded_size(ttype_encoding)
    for i in range(1, max_type + 1):
        r.pos = ttype_base - i * size
        if r.pos < start:
            raise IndexError("type table runs before the LSDA")
        fields.append(r.encoded(ttype_encoding))
    return fields


def lsda_entries(image: MachOFile, imap: ImageMap, lsdas: list[int]) -> np.ndarray:
    """DELTA_32/DELTA_64 entries for the pc-relative type-table pointers of every LSDA."""
    parts: list[np.ndarray] = []
    for start in sorted(set(lsdas)):
        sect = image.section_for_address(start)
        if sect is None or sect.is_zerofill:
            raise imap.error(start, "LSDA is in no section")
        data = bytes(image.section_content(sect))
        try:
            # a null entry (catch-all) refers to nothing, whatever its encoding
            fields = [f for f in _type_fields(data, start - sect.addr) if f.value != 0]
            parts.append(pcrel_entries(imap, sect, fields, "LSDA type pointer"))
        except (IndexError, ValueError) as exc:
            raise SplitSegSynthesisError(
                image.path, sect.full_name, start - sect.addr, f"cannot parse the LSDA: {exc}"
            ) from None
    return np.concatenate(parts) if parts else np.zeros(0, dtype=SPLIT_SEG_DTYPE)


def landing_pads(image: MachOFile, imap: ImageMap, functions: list[tuple[int, int]]) -> list[int]:
    """Addresses of the landing pads of every (function start, LSDA address) pair: code that
    only the unwinder enters. A landing-pad base other than the function start refuses."""
    out: list[int] = []
    for function, start in sorted(set(functions)):
        sect = image.section_for_address(start)
        if sect is None or sect.is_zerofill:
            raise imap.error(start, "LSDA is in no section")
        data = bytes(image.section_content(sect))
        try:
            header = _header(data, start - sect.addr)
        except (IndexError, ValueError) as exc:
            raise SplitSegSynthesisError(
                image.path, sect.full_name, start - sect.addr, f"cannot parse the LSDA: {exc}"
            ) from None
        if header.lp_start is not None:
            raise imap.error(start, "LSDA with a landing-pad base of its own")
        out += [function + pad for pad, _ in header.call_sites if pad]
    return out
