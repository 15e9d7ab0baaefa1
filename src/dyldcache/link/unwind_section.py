"""The output's ``__TEXT,__unwind_info``: one row per function, from the objects'
``__LD,__compact_unwind`` (DWARF-mode rows point at their FDE in ``__eh_frame``), and an explicit
"no unwind" row for every other function. The section is sized before layout (row count and
shape only) and written after it, with a split seg entry for every image offset it holds.

x86_64 objects leave FDE pc_begin and LSDA fields in ``__eh_frame`` unrelocated; collecting
the rows also makes relocations for them, so that they are written like any other."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from ..arch import Arch
from ..arch.relocation import RelocKind
from ..errors import LinkError
from ..macho import constants as C
from ..macho.eh_frame import CIE, FDE, parse_eh_frame
from .model import LinkSymbol, OutSection
from .objects import InputSection, ObjectFile, Reloc, Target
from .pointer_fixups import FixupRecorder
from .resolution import Symbols
from .sections import OutputSections
from .synthetic import SyntheticSections
from .unwind import COMPACT_UNWIND_ENTRY_SIZE, UnwindEntry, merge_entries, unwind_layout, write_unwind_info


@dataclass(slots=True)
class CompactUnwindRow:
    """One __compact_unwind entry of an object."""

    isect: InputSection
    offset: int
    length: int
    encoding: int
    personality: LinkSymbol | None
    lsda: tuple[InputSection, int] | None


class UnwindSection:
    def __init__(self, arch: Arch, symbols: Symbols) -> None:
        self.arch = arch
        self.symbols = symbols
        self.rows: list[CompactUnwindRow] = []
        #: id(__eh_frame input section) -> relocations made for its unrelocated fields
        self.synthetic_relocs: dict[int, list[Reloc]] = {}
        self.eh_frames: dict[int, tuple[dict[int, CIE], list[FDE]]] = {}

    @property
    def objects(self) -> list[ObjectFile]:
        return self.symbols.objects

    def collect(self) -> None:
        """Compact unwind rows from every object, and pc-relative __eh_frame fields with no relocation."""
        for k, obj in enumerate(self.objects):
            for isect in obj.sections:
                if isect.segname == "__LD" and isect.sectname == "__compact_unwind":
                    self._compact_unwind_rows(k, obj, isect)
                elif isect.sectname == "__eh_frame":
                    self._eh_frame_relocs(obj, isect)

    def personalities(self) -> list[LinkSymbol]:
        """The personality routine of every row that has one, in row order."""
        return [r.personality for r in self.rows if r.personality is not None]

    def relocs_of(self, isect: InputSection) -> list[Reloc]:
        return isect.relocs + self.synthetic_relocs.get(id(isect), [])

    def _compact_unwind_rows(self, k: int, obj: ObjectFile, isect: InputSection) -> None:
        if isect.size % COMPACT_UNWIND_ENTRY_SIZE:
            raise LinkError(f"{obj.path}: __compact_unwind size {isect.size} is not a multiple of 32")
        relocs = {r.offset: r for r in isect.relocs}
        for base in range(0, isect.size, COMPACT_UNWIND_ENTRY_SIZE):
            length, encoding = struct.unpack_from("<II", isect.content, base + 8)
            fr = relocs.get(base)
            if fr is None:
                raise LinkError(f"{obj.path}: compact unwind entry at {base:#x} has no function relocation")
            fsect, foff = self.symbols.defined_place(k, fr.target, fr.addend)
            personality = None
            if (pr := relocs.get(base + 16)) is not None:
                personality = self.symbols.symbol_for(k, pr.target) if pr.target.symbol is not None else None
            lsda = None
            if (lr := relocs.get(base + 24)) is not None:
                lsda = self.symbols.defined_place(k, lr.target, lr.addend)
            self.rows.append(CompactUnwindRow(fsect, foff, length, encoding, personality, lsda))

    def _eh_frame_relocs(self, obj: ObjectFile, isect: InputSection) -> None:
        """x86_64 objects leave FDE pc_begin/LSDA fields unrelocated: make relocations from the CFI."""
        cies, fdes = parse_eh_frame(isect.content, f"{obj.path}(__eh_frame)")
        covered = {r.offset for r in isect.relocs}
        extra = []
        for fde in fdes:
            for fld in (fde.pc_begin, fde.lsda):
                if fld is None or fld.offset in covered or not fld.pcrel:
                    continue
                target_addr = isect.addr + fld.offset + fld.value
                tsect, toff = obj.section_at(target_addr)
                extra.append(
                    Reloc(
                        RelocKind.DELTA,
                        fld.offset,
                        fld.size,
                        Target(section=tsect.ordinal, offset=toff),
                        0,
                        minus=None,
                    )
                )
        self.synthetic_relocs[id(isect)] = extra
        self.eh_frames[id(isect)] = (cies, fdes)

    # -- size ------------------------------------------------------------------------------------

    def size(self) -> int:
        """The section's size: rows with placeholder offsets, since only their count and
        LSDA/personality shape matter."""
        entries = [
            UnwindEntry(0, r.length, r.encoding, 0 if r.personality else None, 0 if r.lsda else None)
            for r in self.rows
        ]
        entries += [UnwindEntry(0, 0, 0) for _ in self.uncovered_functions()]
        personalities = sorted({id(r.personality) for r in self.rows if r.personality})
        return unwind_layout(entries, list(personalities)).size

    def uncovered_functions(self) -> list[tuple[InputSection, int]]:
        """Code symbols that no compact unwind row covers: they get an explicit 'no unwind' row."""
        covered: dict[int, list[tuple[int, int]]] = {}
        for r in self.rows:
            covered.setdefault(id(r.isect), []).append((r.offset, r.offset + r.length))
        out = []
        for obj in self.objects:
            seen: set[tuple[int, int]] = set()
            for sym in obj.symbols:
                if not sym.is_defined or sym.is_absolute or sym.is_temp_label:
                    continue
                isect = obj.section(sym.n_sect)
                if not isect.header.flags & C.S_ATTR_PURE_INSTRUCTIONS or isect.segname == "__LD":
                    continue
                off = sym.n_value - isect.addr
                if (id(isect), off) in seen or off >= isect.size:
                    continue
                seen.add((id(isect), off))
                if any(a <= off < b for a, b in covered.get(id(isect), [])):
                    continue
                out.append((isect, off))
        return out

    # -- content -------------------------------------------------------------------------------

    def write(
        self,
        us: OutSection,
        layout: OutputSections,
        synthetic: SyntheticSections,
        buf: bytearray,
        fixups: FixupRecorder,
    ) -> None:
        dwarf = self.arch.unwind_dwarf_mode
        eh_out = {}
        for s in layout.sections:
            for isect in s.inputs:
                if isect.sectname == "__eh_frame":
                    eh_out[id(isect.obj)] = (isect, isect.out_addr - s.addr)
        entries = []
        personalities: list[int] = []
        for r in self.rows:
            func = r.isect.out_addr + r.offset
            encoding = r.encoding
            if (encoding & C.UNWIND_MODE_MASK) == dwarf:
                encoding = dwarf | self._fde_offset(r, eh_out)
            slot = None
            if r.personality is not None:
                gs, goff = synthetic.stub_slot(r.personality)
                slot = gs.addr + goff
                if slot not in personalities:
                    personalities.append(slot)
            lsda = r.lsda[0].out_addr + r.lsda[1] if r.lsda is not None else None
            entries.append(UnwindEntry(func, r.length, encoding, slot, lsda))
        for isect, off in self.uncovered_functions():
            entries.append(UnwindEntry(isect.out_addr + off, 0, 0))
        entries.sort(key=lambda e: e.function)
        text_end = max((e.function + e.length for e in entries), default=0)
        if entries:
            for a, b in itertools.pairwise(entries):
                if a.length == 0:
                    a.length = b.function - a.function
        text = next((s for s in layout.sections if s.sectname == "__text"), None)
        if text is not None:
            text_end = max(text_end, text.addr + text.size)
        merged = merge_entries(entries, self.arch.unwind_unmerged_modes)
        raw, image_offsets = write_unwind_info(merged, personalities, text_end)
        if len(raw) > us.size:
            raise LinkError("internal error: __unwind_info grew after layout")
        buf[us.fileoff : us.fileoff + len(raw)] = raw
        us.size = len(raw)
        for field_off, target in image_offsets:
            tsect = layout.section_at(target)
            if tsect is not None:
                kind = C.DYLD_CACHE_ADJ_V2_IMAGE_OFF_32
                fixups.split_entry(kind, us, field_off, tsect, target - tsect.addr)

    def _fde_offset(self, row: CompactUnwindRow, eh_out: dict[int, tuple[InputSection, int]]) -> int:
        obj = row.isect.obj
        found = eh_out.get(id(obj))
        if found is None:
            raise LinkError(f"{obj.path}: DWARF unwind encoding but no __eh_frame")
        eh_isect, base = found
        _, fdes = self.eh_frames[id(eh_isect)]
        relocs = {r.offset: r for r in self.relocs_of(eh_isect)}
        k = self.objects.index(obj)
        for fde in fdes:
            r = relocs.get(fde.pc_begin.offset)
            if r is None:
                continue
            if r.target.section is not None:
                tsect, toff = obj.section(r.target.section), r.target.offset + r.addend
            else:
                ls = self.symbols.symbol_for(k, r.target)
                if ls.isect is None:
                    continue
                tsect, toff = ls.isect, ls.offset
                if r.minus is not None:  # A - B + in_place where B is the field's own position
                    toff = ls.offset
            if tsect is row.isect and toff == row.offset:
                return base + fde.offset
        raise LinkError(f"{obj.path}: no FDE for a function at {row.isect.sectname}+{row.offset:#x}")
