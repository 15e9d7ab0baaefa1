"""Phase 6 of a link: every relocation of every linked input section, applied. Pointers become
fixups (rebases or binds, signed on arm64e) and differences are written in place, the same on
every arch; instruction fields are written by the arch's applier (:mod:`dyldcache.arch`), after
their target is resolved to the symbol, its stub or its GOT slot as the applier's rule says.
Every reference that moving a segment would break gets its split seg entry."""

from __future__ import annotations

import struct

from ..arch import Arch
from ..arch.relocation import RelocKind, RelocRule, Via
from ..errors import LinkError
from ..macho import constants as C
from .model import LinkSymbol, OutSection, SectionKind, SymKind
from .objects import InputSection, Reloc, Target
from .pointer_fixups import FixupRecorder
from .resolution import Symbols
from .sections import OutputSections
from .synthetic import SyntheticSections
from .unwind_section import UnwindSection

#: a resolved target: (its symbol, or None for a place in a section; its address; its
#: (output section, offset), or None when it has no place in the image)
Resolved = tuple[LinkSymbol | None, int, tuple[OutSection, int] | None]


class RelocationWriter:
    def __init__(
        self,
        arch: Arch,
        symbols: Symbols,
        layout: OutputSections,
        synthetic: SyntheticSections,
        unwind: UnwindSection,
        fixups: FixupRecorder,
        buf: bytearray,
    ) -> None:
        self.arch = arch
        self.symbols = symbols
        self.layout = layout
        self.synthetic = synthetic
        self.unwind = unwind
        self.fixups = fixups
        self.buf = buf
        self._personalities = {id(p) for p in unwind.personalities()}

    def apply_all(self) -> None:
        for k, obj in enumerate(self.symbols.objects):
            for isect in obj.sections:
                osect = self.layout.out_of.get(id(isect))
                if osect is None:
                    continue
                for r in self.unwind.relocs_of(isect):
                    self.apply(k, isect, osect, r)

    def apply(self, k: int, isect: InputSection, osect: OutSection, r: Reloc) -> None:
        obj = self.symbols.objects[k]
        where = f"{obj.path}({isect.segname},{isect.sectname}+{r.offset:#x})"
        pc = isect.out_addr + r.offset
        from_off = pc - osect.addr
        try:
            if r.kind in (RelocKind.POINTER64, RelocKind.AUTH_POINTER):
                self._pointer(k, where, osect, r, pc, from_off)
            elif r.kind is RelocKind.POINTER32:
                raise LinkError(f"{where}: 32-bit absolute pointers cannot be slid in a 64-bit dylib")
            elif r.kind is RelocKind.DELTA:
                self._delta(k, where, osect, r, pc, from_off)
            elif (rule := self.arch.relocations.get(r.kind)) is not None:
                self._instruction(k, where, osect, r, rule, pc, from_off)
            else:
                raise LinkError(f"{where}: unsupported relocation {r.kind.value}")
        except ValueError as exc:  # a field that cannot hold its value (arch.InstructionError...)
            raise LinkError(f"{where}: {exc}") from None

    def _target(self, k: int, where: str, t: Target) -> Resolved:
        if t.section is not None:
            ts = self.symbols.objects[k].section(t.section)
            tos = self.layout.out_of.get(id(ts))
            if tos is None:
                raise LinkError(f"{where}: refers to section {ts.segname},{ts.sectname}, which is not linked")
            return None, ts.out_addr + t.offset, (tos, ts.out_addr - tos.addr + t.offset)
        ls = self.symbols.symbol_for(k, t)
        if ls.is_import:
            return ls, 0, None
        if ls.kind is SymKind.ABSOLUTE:
            return ls, ls.value, None
        return ls, self.layout.address_of(ls), self.layout.place_of(ls)

    def _pointer(self, k: int, where: str, osect: OutSection, r: Reloc, pc: int, from_off: int) -> None:
        ls, target, to = self._target(k, where, r.target)
        if pc % self.arch.chained_stride:
            raise LinkError(f"{where}: pointer is not aligned for chained fixups")
        auth = (r.key, r.diversity, r.addr_div) if r.kind is RelocKind.AUTH_POINTER else None
        seg = self.layout.segment_index(osect)
        self.fixups.pointer(pc, seg, ls, target, r.addend, auth, osect, from_off, to)

    def _delta(self, k: int, where: str, osect: OutSection, r: Reloc, pc: int, from_off: int) -> None:
        ls, target, to = self._target(k, where, r.target)
        if ls is not None and ls.is_import:
            raise LinkError(f"{where}: difference with imported symbol {ls.name}")
        if r.minus is None:  # pc-relative field found by parsing CFI
            value = target + r.addend - pc
        else:
            ms, minus, _ = self._target(k, where, r.minus)
            if ms is not None and ms.is_import:
                raise LinkError(f"{where}: difference with imported symbol {ms.name}")
            value = target + r.addend - minus
        fo = osect.fileoff + from_off
        struct.pack_into("<q" if r.length == 8 else "<i", self.buf, fo, value)
        if to is not None:
            kind = C.DYLD_CACHE_ADJ_V2_DELTA_64 if r.length == 8 else C.DYLD_CACHE_ADJ_V2_DELTA_32
            self.fixups.split_entry(kind, osect, from_off, to[0], to[1])

    def _instruction(
        self, k: int, where: str, osect: OutSection, r: Reloc, rule: RelocRule, pc: int, from_off: int
    ) -> None:
        ls: LinkSymbol | None
        if rule.goes_through_got:
            ls = self.symbols.symbol_for(k, r.target)
            if rule.via is Via.POINTER_SLOT and id(ls) in self._personalities:
                to: tuple[OutSection, int] | None = self.synthetic.stub_slot(ls)
            else:
                to = self.synthetic.got_slot(ls)
            assert to is not None
            target = to[0].addr + to[1]
        else:
            ls, target, to = self._target(k, where, r.target)
            if ls is not None and rule.via is Via.CALL and ls.needs_bind:
                stubs = self.layout.section(SectionKind.STUBS)
                target = self.synthetic.stub_addr(ls)
                to = (stubs, target - stubs.addr)
            elif ls is not None and (ls.needs_bind if rule.via is Via.UNBOUND_TARGET else ls.is_import):
                raise LinkError(f"{where}: {rule.form} reference to imported symbol {ls.name}")
            if to is not None:
                to = (to[0], to[1] + r.addend)
        rule.write(self.buf, osect.fileoff + from_off, pc, target + r.addend, r.bias)
        if to is not None and (to[0] is not osect or (rule.split_within_data and not osect.is_code)):
            self.fixups.split_entry(rule.split_kind, osect, from_off, to[0], to[1])
