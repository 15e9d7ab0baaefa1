"""The linker's in-memory model of the output: resolved symbols, output sections and segments."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..macho import constants as C
from .objects import InputSection


class SymKind(Enum):
    DEFINED = "defined"  # in an input section
    ABSOLUTE = "absolute"  # N_ABS
    COMMON = "common"  # tentative definition placed in __DATA,__common
    IMPORT = "import"  # provided by a dylib


@dataclass(eq=False, slots=True)
class LinkSymbol:
    name: str
    kind: SymKind
    isect: InputSection | None = None
    #: offset in ``isect`` (defined) or in ``out`` (common)
    offset: int = 0
    out: OutSection | None = None
    value: int = 0
    #: exported from the image (N_EXT and not N_PEXT)
    external: bool = False
    private_extern: bool = False
    weak_def: bool = False
    #: imports: 1-based index of the providing dylib among the image's LC_*_DYLIB commands
    ordinal: int = 0
    weak_import: bool = False
    #: imports: the dylib exports the symbol as a weak definition
    import_is_weak_def: bool = False
    #: index in the output symbol table (set when it is written)
    symtab_index: int = -1

    @property
    def is_import(self) -> bool:
        return self.kind is SymKind.IMPORT

    @property
    def needs_bind(self) -> bool:
        """Resolved by dyld at load time: imports, and this image's own exported weak definitions."""
        return self.kind is SymKind.IMPORT or (self.external and self.weak_def)


class SectionKind(Enum):
    REGULAR = "regular"
    STUBS = "stubs"
    GOT = "got"
    AUTH_GOT = "auth_got"
    UNWIND_INFO = "unwind_info"
    COMMON = "common"
    STUB_HELPER = "stub_helper"
    LAZY_POINTERS = "lazy_pointers"


@dataclass(eq=False, slots=True)
class OutSection:
    segname: str
    sectname: str
    flags: int
    align: int  # bytes
    kind: SectionKind = SectionKind.REGULAR
    inputs: list[InputSection] = field(default_factory=list)
    #: offset of each input inside this section, parallel to ``inputs``
    input_offsets: list[int] = field(default_factory=list)
    size: int = 0
    addr: int = 0
    fileoff: int = 0
    #: 1-based section number (nlist n_sect, split seg section index)
    index: int = 0
    reserved1: int = 0
    reserved2: int = 0
    #: synthetic bytes after the inputs of a regular section (the lazy binder's __dyld_private)
    tail: int = 0

    @property
    def is_zerofill(self) -> bool:
        return (self.flags & C.SECTION_TYPE) in C.ZEROFILL_SECTION_TYPES

    @property
    def is_code(self) -> bool:
        return bool(self.flags & (C.S_ATTR_PURE_INSTRUCTIONS | C.S_ATTR_SOME_INSTRUCTIONS))

    @property
    def name(self) -> str:
        return f"{self.segname},{self.sectname}"


@dataclass(eq=False, slots=True)
class OutSegment:
    name: str
    prot: int
    sections: list[OutSection] = field(default_factory=list)
    vmaddr: int = 0
    vmsize: int = 0
    fileoff: int = 0
    filesize: int = 0
