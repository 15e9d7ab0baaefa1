"""Relocatable objects (MH_OBJECT) as the linker sees them: sections with their bytes,
symbols, and relocations decoded into one arch-neutral form.

Relocation semantics follow Apple's <mach-o/arm64/reloc.h> and <mach-o/x86_64/reloc.h>
(see ``docs/linker-notes.md`` §1): a :class:`Reloc` says where a value goes, what it
refers to (a symbol, or a place in a section for non-extern relocations), the addend,
and how to encode it (a :class:`~dyldcache.arch.relocation.RelocKind`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..arch import Arch
from ..arch.relocation import RelocKind
from ..errors import LinkError, MachOFormatError
from ..macho import constants as C
from ..macho.file import MachOFile, Section
from ..macho.format import RELOCATION_DTYPE


@dataclass(frozen=True, slots=True)
class Target:
    """What a relocation refers to: an object symbol, or a byte in one of the object's sections."""

    symbol: int | None = None  # index into ObjectFile.symbols
    section: int | None = None  # 1-based section ordinal in the object (non-extern)
    offset: int = 0  # offset inside that section (non-extern)


@dataclass(slots=True)
class Reloc:
    kind: RelocKind
    #: offset of the fixup inside its section
    offset: int
    #: bytes the fixup covers
    length: int
    target: Target
    addend: int = 0
    #: DELTA: the subtrahend
    minus: Target | None = None
    #: X86 pc-relative: value = target + addend - (P + bias)
    bias: int = 0
    #: AUTH_POINTER: pointer-authentication data
    key: int = 0
    diversity: int = 0
    addr_div: bool = False


@dataclass(slots=True)
class ObjSymbol:
    name: str
    n_type: int
    n_sect: int
    n_desc: int
    n_value: int

    @property
    def is_external(self) -> bool:
        return bool(self.n_type & C.N_EXT)

    @property
    def is_private_extern(self) -> bool:
        return bool(self.n_type & C.N_PEXT)

    @property
    def is_stab(self) -> bool:
        return bool(self.n_type & C.N_STAB)

    @property
    def is_undefined(self) -> bool:
        return (self.n_type & C.N_TYPE) == C.N_UNDF and not self.is_stab

    @property
    def is_common(self) -> bool:
        return self.is_undefined and self.is_external and self.n_value != 0

    @property
    def is_defined(self) -> bool:
        return (self.n_type & C.N_TYPE) in (C.N_SECT, C.N_ABS) and not self.is_stab

    @property
    def is_absolute(self) -> bool:
        return (self.n_type & C.N_TYPE) == C.N_ABS

    @property
    def is_weak_def(self) -> bool:
        return self.is_defined and bool(self.n_desc & C.N_WEAK_DEF)

    @property
    def is_weak_ref(self) -> bool:
        return bool(self.n_desc & C.N_WEAK_REF)

    @property
    def is_temp_label(self) -> bool:
        """Assembler-local labels that never reach an output symbol table."""
        return self.name.startswith(("l", "L")) or self.name.startswith("ltmp")


@dataclass(slots=True)
class InputSection:
    obj: ObjectFile
    header: Section
    content: bytes
    relocs: list[Reloc] = field(default_factory=list)
    #: output placement (set by layout)
    out_segname: str = ""
    out_sectname: str = ""
    out_addr: int = -1

    @property
    def ordinal(self) -> int:
        return self.header.index

    @property
    def segname(self) -> str:
        return self.header.segname

    @property
    def sectname(self) -> str:
        return self.header.sectname

    @property
    def size(self) -> int:
        return self.header.size

    @property
    def addr(self) -> int:
        return self.header.addr

    @property
    def align(self) -> int:
        return 1 << self.header.align

    @property
    def is_zerofill(self) -> bool:
        return self.header.is_zerofill

    @property
    def has_auth_pointers(self) -> bool:
        return any(r.kind is RelocKind.AUTH_POINTER for r in self.relocs)

    def __repr__(self) -> str:
        return f"<{self.obj.path}({self.segname},{self.sectname})>"


class ObjectFile:
    def __init__(self, image: MachOFile, arch: Arch) -> None:
        if image.filetype != C.MH_OBJECT:
            raise LinkError(f"{image.path}: not a relocatable object")
        self.path = image.path
        self.image = image
        self.arch = arch
        self.symbols = [ObjSymbol(*s) for s in image.iter_symbols()]
        self.sections: list[InputSection] = []
        for sect in image.sections:
            self.sections.append(InputSection(self, sect, bytes(image.section_content(sect))))
        for isect in self.sections:
            isect.relocs = self._relocations(isect)

    def section(self, ordinal: int) -> InputSection:
        if not 1 <= ordinal <= len(self.sections):
            raise LinkError(f"{self.path}: section ordinal {ordinal} out of range")
        return self.sections[ordinal - 1]

    def section_at(self, addr: int, ordinal: int | None = None) -> tuple[InputSection, int]:
        """(section, offset) of an object-space address (end addresses belong to the section given)."""
        if ordinal is not None:
            s = self.section(ordinal)
            if s.addr <= addr <= s.addr + s.size:
                return s, addr - s.addr
        for s in self.sections:
            if s.addr <= addr < s.addr + s.size:
                return s, addr - s.addr
        raise LinkError(f"{self.path}: address {addr:#x} is in no section")

    def _error(self, isect: InputSection, offset: int, message: str) -> LinkError:
        return LinkError(f"{self.path}({isect.segname},{isect.sectname}+{offset:#x}): {message}")

    # -- relocation decoding -------------------------------------------------------------------

    def _relocations(self, isect: InputSection) -> list[Reloc]:
        hdr = isect.header
        if hdr.nreloc == 0:
            return []
        raw = np.frombuffer(self.image.data, dtype=RELOCATION_DTYPE, count=hdr.nreloc, offset=hdr.reloff)
        entries = []
        for r_address, info in zip(raw["r_address"].tolist(), raw["r_info"].tolist(), strict=True):
            if r_address < 0:
                raise MachOFormatError(self.path, hdr.reloff, "scattered relocations are not supported")
            entries.append(
                (
                    r_address,
                    info & 0xFFFFFF,
                    (info >> 24) & 1,
                    1 << ((info >> 25) & 3),
                    (info >> 27) & 1,
                    info >> 28,
                )
            )
        # relocations are listed in descending address order; pairs keep their relative order
        decode = self._x86_64_relocs if self.arch.cputype == C.CPU_TYPE_X86_64 else self._arm64_relocs
        return decode(isect, entries)

    def _target(self, isect: InputSection, extern: int, symnum: int, obj_addr: int | None = None) -> Target:
        if extern:
            if symnum >= len(self.symbols):
                raise self._error(isect, 0, f"relocation symbol index {symnum} out of range")
            return Target(symbol=symnum)
        if obj_addr is None:
            raise self._error(isect, 0, "non-extern relocation without an address")
        sect, off = self.section_at(obj_addr, symnum)
        return Target(section=sect.ordinal, offset=off)

    def _inplace(self, isect: InputSection, offset: int, length: int, signed: bool = True) -> int:
        if offset + length > len(isect.content):
            raise self._error(isect, offset, "relocation runs past the end of its section")
        return int.from_bytes(isect.content[offset : offset + length], "little", signed=signed)

    def _arm64_relocs(
        self, isect: InputSection, entries: list[tuple[int, int, int, int, int, int]]
    ) -> list[Reloc]:
        out: list[Reloc] = []
        pending_addend: int | None = None
        pending_minus: Target | None = None
        for addr, symnum, pcrel, length, extern, rtype in entries:
            if rtype == C.ARM64_RELOC_ADDEND:
                pending_addend = symnum - (1 << 24) if symnum & 0x800000 else symnum
                continue
            if rtype == C.ARM64_RELOC_SUBTRACTOR:
                if not extern:
                    raise self._error(isect, addr, "non-extern ARM64_RELOC_SUBTRACTOR is not supported")
                pending_minus = self._target(isect, 1, symnum)
                continue
            addend = pending_addend or 0
            pending_addend = None
            if pending_minus is not None:
                if rtype != C.ARM64_RELOC_UNSIGNED:
                    raise self._error(isect, addr, "SUBTRACTOR not followed by UNSIGNED")
                if not extern:
                    raise self._error(isect, addr, "SUBTRACTOR with a non-extern minuend is not supported")
                value = self._inplace(isect, addr, length)
                out.append(
                    Reloc(
                        RelocKind.DELTA,
                        addr,
                        length,
                        self._target(isect, 1, symnum),
                        value,
                        minus=pending_minus,
                    )
                )
                pending_minus = None
                continue
            if rtype == C.ARM64_RELOC_UNSIGNED:
                if length not in (4, 8):
                    raise self._error(isect, addr, f"UNSIGNED relocation of {length} bytes")
                value = self._inplace(isect, addr, length, signed=False)
                kind = RelocKind.POINTER64 if length == 8 else RelocKind.POINTER32
                if extern:
                    if length == 8 and value >= 1 << 63:
                        value -= 1 << 64
                    out.append(Reloc(kind, addr, length, Target(symbol=symnum), value))
                else:
                    sect, off = self.section_at(value, symnum)
                    out.append(Reloc(kind, addr, length, Target(section=sect.ordinal, offset=off)))
            elif rtype == C.ARM64_RELOC_AUTHENTICATED_POINTER:
                if not extern:
                    raise self._error(isect, addr, "non-extern AUTHENTICATED_POINTER")
                raw = self._inplace(isect, addr, 8, signed=False)
                if not raw >> 63:
                    raise self._error(isect, addr, "AUTHENTICATED_POINTER without its auth bit")
                low = raw & 0xFFFFFFFF
                out.append(
                    Reloc(
                        RelocKind.AUTH_POINTER,
                        addr,
                        8,
                        Target(symbol=symnum),
                        low - (1 << 32) if low & 0x80000000 else low,
                        key=(raw >> 49) & 3,
                        diversity=(raw >> 32) & 0xFFFF,
                        addr_div=bool((raw >> 48) & 1),
                    )
                )
            elif rtype in (C.ARM64_RELOC_BRANCH26, C.ARM64_RELOC_PAGE21, C.ARM64_RELOC_PAGEOFF12):
                kind = {
                    C.ARM64_RELOC_BRANCH26: RelocKind.BRANCH26,
                    C.ARM64_RELOC_PAGE21: RelocKind.PAGE21,
                    C.ARM64_RELOC_PAGEOFF12: RelocKind.PAGEOFF12,
                }[rtype]
                if not extern:
                    raise self._error(isect, addr, f"non-extern {kind.value} relocation is not supported")
                out.append(Reloc(kind, addr, 4, Target(symbol=symnum), addend))
            elif rtype in (C.ARM64_RELOC_GOT_LOAD_PAGE21, C.ARM64_RELOC_GOT_LOAD_PAGEOFF12):
                kind = (
                    RelocKind.GOT_PAGE21
                    if rtype == C.ARM64_RELOC_GOT_LOAD_PAGE21
                    else RelocKind.GOT_PAGEOFF12
                )
                out.append(Reloc(kind, addr, 4, self._target(isect, extern, symnum)))
            elif rtype == C.ARM64_RELOC_POINTER_TO_GOT:
                if not pcrel or length != 4:
                    raise self._error(isect, addr, "only 32-bit pc-relative POINTER_TO_GOT is supported")
                out.append(Reloc(RelocKind.POINTER_TO_GOT, addr, 4, self._target(isect, extern, symnum)))
            elif rtype in (C.ARM64_RELOC_TLVP_LOAD_PAGE21, C.ARM64_RELOC_TLVP_LOAD_PAGEOFF12):
                raise self._error(isect, addr, "thread-local variables are not supported")
            else:
                raise self._error(isect, addr, f"unknown arm64 relocation type {rtype}")
        if pending_addend is not None or pending_minus is not None:
            raise self._error(isect, 0, "dangling ADDEND or SUBTRACTOR relocation")
        return out

    def _x86_64_relocs(
        self, isect: InputSection, entries: list[tuple[int, int, int, int, int, int]]
    ) -> list[Reloc]:
        out: list[Reloc] = []
        pending_minus: Target | None = None
        pcrel_bias = {C.X86_64_RELOC_SIGNED_1: 1, C.X86_64_RELOC_SIGNED_2: 2, C.X86_64_RELOC_SIGNED_4: 4}
        for addr, symnum, pcrel, length, extern, rtype in entries:
            if rtype == C.X86_64_RELOC_SUBTRACTOR:
                if not extern:
                    raise self._error(isect, addr, "non-extern X86_64_RELOC_SUBTRACTOR is not supported")
                pending_minus = self._target(isect, 1, symnum)
                continue
            if pending_minus is not None:
                if rtype != C.X86_64_RELOC_UNSIGNED or not extern:
                    raise self._error(isect, addr, "SUBTRACTOR not followed by an extern UNSIGNED")
                out.append(
                    Reloc(
                        RelocKind.DELTA,
                        addr,
                        length,
                        Target(symbol=symnum),
                        self._inplace(isect, addr, length),
                        minus=pending_minus,
                    )
                )
                pending_minus = None
                continue
            if rtype == C.X86_64_RELOC_UNSIGNED:
                if length not in (4, 8):
                    raise self._error(isect, addr, f"UNSIGNED relocation of {length} bytes")
                value = self._inplace(isect, addr, length, signed=extern == 1)
                kind = RelocKind.POINTER64 if length == 8 else RelocKind.POINTER32
                if extern:
                    out.append(Reloc(kind, addr, length, Target(symbol=symnum), value))
                else:
                    sect, off = self.section_at(value, symnum)
                    out.append(Reloc(kind, addr, length, Target(section=sect.ordinal, offset=off)))
                continue
            if not pcrel or length != 4:
                raise self._error(isect, addr, f"x86_64 relocation type {rtype} must be 32-bit pc-relative")
            if rtype == C.X86_64_RELOC_TLV:
                raise self._error(isect, addr, "thread-local variables are not supported")
            n = pcrel_bias.get(rtype, 0)
            inplace = self._inplace(isect, addr, 4)
            if rtype in (
                C.X86_64_RELOC_SIGNED,
                C.X86_64_RELOC_SIGNED_1,
                C.X86_64_RELOC_SIGNED_2,
                C.X86_64_RELOC_SIGNED_4,
            ):
                if extern:
                    # disp = S + in_place + N - (P + 4 + N): the addend is relative to S
                    out.append(
                        Reloc(RelocKind.X86_PCREL, addr, 4, Target(symbol=symnum), inplace + n, bias=4 + n)
                    )
                else:
                    target_addr = isect.addr + addr + 4 + n + inplace
                    sect, off = self.section_at(target_addr, symnum)
                    out.append(
                        Reloc(
                            RelocKind.X86_PCREL,
                            addr,
                            4,
                            Target(section=sect.ordinal, offset=off),
                            0,
                            bias=4 + n,
                        )
                    )
            elif rtype == C.X86_64_RELOC_BRANCH:
                if not extern:
                    target_addr = isect.addr + addr + 4 + inplace
                    sect, off = self.section_at(target_addr, symnum)
                    out.append(
                        Reloc(
                            RelocKind.X86_PCREL, addr, 4, Target(section=sect.ordinal, offset=off), 0, bias=4
                        )
                    )
                else:
                    out.append(Reloc(RelocKind.X86_BRANCH, addr, 4, Target(symbol=symnum), inplace, bias=4))
            elif rtype == C.X86_64_RELOC_GOT_LOAD:
                out.append(
                    Reloc(
                        RelocKind.X86_GOT_LOAD, addr, 4, self._target(isect, extern, symnum), inplace, bias=4
                    )
                )
            elif rtype == C.X86_64_RELOC_GOT:
                out.append(
                    Reloc(RelocKind.X86_GOT, addr, 4, self._target(isect, extern, symnum), inplace, bias=4)
                )
            else:
                raise self._error(isect, addr, f"unknown x86_64 relocation type {rtype}")
        if pending_minus is not None:
            raise self._error(isect, 0, "dangling SUBTRACTOR relocation")
        return out
