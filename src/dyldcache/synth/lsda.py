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


def _type_fields(data: bytes, start: int) -> list[PointerField]:
    """The encoded type-table entries (and landing-pad base) of the LSDA at ``start``."""
    r = _Reader(data, start)
    fields: list[PointerField] = []
    lp_encoding = r.u8()
    if lp_encoding != DW_EH_PE_omit:
        fields.append(r.encoded(lp_encoding))
    ttype_encoding = r.u8()
    ttype_base = None
    if ttype_encoding != DW_EH_PE_omit:
        offset = r.uleb()
        ttype_base = r.pos + offset
    cs_encoding = r.u8()
    cs_length = r.uleb()
    cs_end = r.pos + cs_length
    actions: set[int] = set()
    while r.pos < cs_end:
        for _ in range(3):  # start, length, landing pad: offsets from the function start
            r.encoded(cs_encoding)
        action = r.uleb()
        if action:
            actions.add(cs_end + action - 1)
    if r.pos != cs_end:
        raise IndexError("call-site table overruns its length")
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
