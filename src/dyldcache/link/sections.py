"""Phases 4 and 5 of a link: the output's sections and segments. Input sections are grouped
into output sections (moved between segments as ld64 moves them, never renamed), the synthetic
sections join them, everything is ordered, sized and given its address and file offset; and,
once laid out, where every symbol and address is."""

from __future__ import annotations

from collections.abc import Callable

from ..arch import Arch
from ..errors import LinkError
from ..macho import constants as C
from .model import LinkSymbol, OutSection, OutSegment, SectionKind, SymKind
from .objects import ObjectFile
from .placement import SEGMENT_PROT, output_segment, section_rank, segment_rank


class OutputSections:
    """The sections and segments of the output, in file order (``__LINKEDIT`` last)."""

    def __init__(self, arch: Arch, data_const: bool) -> None:
        self.arch = arch
        self.data_const = data_const
        self.sections: list[OutSection] = []
        self.segments: list[OutSegment] = []
        #: id(input section) -> the output section holding it
        self.out_of: dict[int, OutSection] = {}
        self.linkedit_vmaddr = 0
        self.linkedit_fileoff = 0

    def build(
        self,
        objects: list[ObjectFile],
        synthetic: list[OutSection],
        unwind_rows: bool,
        common_section: OutSection | None,
        dyld_private: bool,
    ) -> None:
        """Group the objects' sections, add ``synthetic`` (stubs, GOTs...), __unwind_info, the
        commons and, for lazy binding, 8 bytes of __dyld_private at the end of __DATA,__data."""
        by_key: dict[tuple[str, str], OutSection] = {}
        order: dict[tuple[str, str], int] = {}
        auth_segments = self.arch.uses_pointer_auth
        for obj in objects:
            for isect in obj.sections:
                if (
                    isect.segname == "__LD"
                    or isect.header.flags & C.S_ATTR_DEBUG
                    or isect.segname == "__DWARF"
                ):
                    continue
                seg = output_segment(
                    isect.segname, isect.sectname, isect.has_auth_pointers, auth_segments, self.data_const
                )
                key = (seg, isect.sectname)
                osect = by_key.get(key)
                if osect is None:
                    osect = OutSection(seg, isect.sectname, isect.header.flags, 1)
                    by_key[key] = osect
                    order[key] = len(order)
                osect.inputs.append(isect)
                osect.align = max(osect.align, isect.align)
                self.out_of[id(isect)] = osect
        synth = list(synthetic)
        if unwind_rows or any(o.sectname == "__text" for o in by_key.values()):
            synth.append(OutSection("__TEXT", "__unwind_info", C.S_REGULAR, 4, SectionKind.UNWIND_INFO))
        if common_section is not None:
            synth.append(common_section)
        if dyld_private:
            # __dyld_private: 8 bytes for dyld's lazy binder at the end of __DATA,__data
            data = by_key.get(("__DATA", "__data"))
            if data is None:
                data = OutSection("__DATA", "__data", C.S_REGULAR, 8)
                synth.append(data)
            data.align = max(data.align, 8)
            data.tail = 8
        for s in synth:
            key = (s.segname, s.sectname)
            if key in by_key:
                raise LinkError(f"input objects already contain a {s.segname},{s.sectname} section")
            by_key[key] = s
            order[key] = len(order)
        self._order(by_key, order)

    def _order(self, by_key: dict[tuple[str, str], OutSection], order: dict[tuple[str, str], int]) -> None:
        segs: dict[str, OutSegment] = {"__TEXT": OutSegment("__TEXT", SEGMENT_PROT["__TEXT"])}
        seg_seen = {"__TEXT": 0}
        for osect in by_key.values():
            if osect.segname not in segs:
                if osect.segname not in SEGMENT_PROT:
                    raise LinkError(f"unsupported output segment {osect.segname}")
                segs[osect.segname] = OutSegment(osect.segname, SEGMENT_PROT[osect.segname])
                seg_seen[osect.segname] = len(seg_seen)
            segs[osect.segname].sections.append(osect)
        self.segments = sorted(segs.values(), key=lambda g: segment_rank(g.name, seg_seen[g.name]))
        for g in self.segments:
            g.sections.sort(
                key=lambda s: section_rank(s.segname, s.sectname, s.flags, order[(s.segname, s.sectname)])
            )
        self.sections = [s for g in self.segments for s in g.sections]
        for i, s in enumerate(self.sections, 1):
            s.index = i
        if len(self.sections) > 255:
            raise LinkError("more than 255 output sections")
        self.segments.append(OutSegment("__LINKEDIT", SEGMENT_PROT["__LINKEDIT"]))

    def section(self, kind: SectionKind) -> OutSection:
        for s in self.sections:
            if s.kind is kind:
                return s
        raise KeyError(kind)

    def size(self, synthetic_size: Callable[[OutSection], int]) -> None:
        """Size every section: input sections from their inputs, synthetic ones by
        ``synthetic_size`` (the commons are sized already)."""
        for s in self.sections:
            if s.kind is SectionKind.REGULAR:
                off = 0
                for isect in s.inputs:
                    off = -(-off // isect.align) * isect.align
                    s.input_offsets.append(off)
                    off += isect.size
                if s.tail:
                    off = -(-off // 8) * 8 + s.tail
                s.size = off
            elif s.kind is not SectionKind.COMMON:
                s.size = synthetic_size(s)

    def layout(self, header_end: int) -> None:
        """Addresses and file offsets, from 0 with the header and load commands (``header_end``
        bytes) at the start of __TEXT; each segment aligned to the arch's segment alignment."""
        align = self.arch.segment_alignment
        vm = 0
        fileoff = 0
        for g in self.segments:
            if g.name == "__LINKEDIT":
                continue
            g.vmaddr, g.fileoff = vm, fileoff
            cursor = header_end if g.name == "__TEXT" else 0
            file_end = cursor
            for s in g.sections:
                cursor = -(-cursor // s.align) * s.align
                s.addr = g.vmaddr + cursor
                if s.is_zerofill:
                    s.fileoff = 0
                else:
                    s.fileoff = g.fileoff + cursor
                    file_end = cursor + s.size
                cursor += s.size
            g.vmsize = -(-max(cursor, 1) // align) * align
            g.filesize = -(-file_end // align) * align if file_end else 0
            vm = g.vmaddr + g.vmsize
            fileoff = g.fileoff + g.filesize
        self.linkedit_vmaddr = vm
        self.linkedit_fileoff = fileoff
        for s in self.sections:
            for isect, off in zip(s.inputs, s.input_offsets, strict=True):
                isect.out_addr = s.addr + off

    # -- where things are, once laid out -------------------------------------------------------

    def address_of(self, ls: LinkSymbol) -> int:
        if ls.kind is SymKind.ABSOLUTE:
            return ls.value
        if ls.kind is SymKind.DEFINED:
            assert ls.isect is not None
            return ls.isect.out_addr + ls.offset
        if ls.kind is SymKind.COMMON:
            assert ls.out is not None
            return ls.out.addr + ls.offset
        raise LinkError(f"{ls.name} is imported and has no address in this image")

    def place_of(self, ls: LinkSymbol) -> tuple[OutSection, int]:
        """(output section, offset) of a defined symbol, for split seg 'to' fields."""
        if ls.kind is SymKind.DEFINED:
            assert ls.isect is not None
            osect = self.out_of[id(ls.isect)]
            return osect, ls.isect.out_addr - osect.addr + ls.offset
        if ls.kind is SymKind.COMMON:
            assert ls.out is not None
            return ls.out, ls.offset
        raise LinkError(f"{ls.name} has no place in this image")

    def file_offset(self, vmaddr: int) -> int:
        for s in self.sections:
            if s.addr <= vmaddr < s.addr + s.size and not s.is_zerofill:
                return s.fileoff + (vmaddr - s.addr)
        raise LinkError(f"address {vmaddr:#x} has no file content")

    def segment_index(self, osect: OutSection) -> int:
        for i, g in enumerate(self.segments):
            if osect in g.sections:
                return i
        raise AssertionError(osect.name)

    def section_at(self, addr: int) -> OutSection | None:
        """The section holding ``addr``; else a code section that ends there (index sentinels)."""
        for s in self.sections:
            if s.addr <= addr < s.addr + s.size:
                return s
        for s in self.sections:  # one past the end (index sentinels)
            if addr == s.addr + s.size and s.is_code:
                return s
        return None
