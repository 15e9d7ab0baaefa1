"""Mach-O on-disk records (from <mach-o/loader.h>, <mach-o/nlist.h>, <mach-o/fat.h>,
<mach-o/reloc.h> and <mach-o/fixup-chains.h>), declared once for readers and writers.

Single records are :class:`~dyldcache.record.Record` dataclasses; arrays of records
(symbol tables, relocations) are numpy structured dtypes with explicit little-endian
fields.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..record import Record, cstr

# ---------------------------------------------------------------------------------------------
# headers


@dataclass(frozen=True, slots=True)
class MachHeader64(Record):
    """struct mach_header_64"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<7I4x")
    magic: int  # MH_MAGIC_64
    cputype: int  # cpu specifier (cpu_type_t, signed in Apple's header; read unsigned)
    cpusubtype: int  # machine specifier, with capability bits in the high byte
    filetype: int  # MH_DYLIB, MH_OBJECT, ...
    ncmds: int  # number of load commands
    sizeofcmds: int  # size of all the load commands
    flags: int  # MH_* flags


assert MachHeader64.SIZE == 32


@dataclass(frozen=True, slots=True)
class FatHeader(Record):
    """struct fat_header (big-endian)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">II")
    magic: int
    nfat_arch: int


@dataclass(frozen=True, slots=True)
class FatArch(Record):
    """struct fat_arch (big-endian)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">IIIII")
    cputype: int
    cpusubtype: int
    offset: int
    size: int
    align: int


@dataclass(frozen=True, slots=True)
class FatArch64(Record):
    """struct fat_arch_64 (big-endian)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">IIQQII")
    cputype: int
    cpusubtype: int
    offset: int
    size: int
    align: int
    reserved: int


# ---------------------------------------------------------------------------------------------
# load commands


@dataclass(frozen=True, slots=True)
class LoadCommandHeader(Record):
    """struct load_command"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<II")
    cmd: int
    cmdsize: int


@dataclass(frozen=True, slots=True)
class SegmentCommand64(Record):
    """struct segment_command_64 (LC_SEGMENT_64); followed by nsects section_64"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<II16s4Q4I")
    cmd: int
    cmdsize: int
    segname: bytes  # 16 bytes, NUL padded
    vmaddr: int  # memory address of this segment
    vmsize: int  # memory size of this segment
    fileoff: int  # file offset of this segment
    filesize: int  # amount to map from the file
    maxprot: int  # maximum VM protection
    initprot: int  # initial VM protection
    nsects: int  # number of sections in segment
    flags: int  # SG_* flags

    @property
    def name(self) -> str:
        return cstr(self.segname)


assert SegmentCommand64.SIZE == 72


@dataclass(frozen=True, slots=True)
class Section64(Record):
    """struct section_64"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<16s16s2Q8I")
    sectname: bytes
    segname: bytes
    addr: int  # memory address of this section
    size: int  # size in bytes of this section
    offset: int  # file offset of this section
    align: int  # section alignment (power of 2)
    reloff: int  # file offset of relocation entries
    nreloc: int  # number of relocation entries
    flags: int  # section type and attributes
    reserved1: int  # indirect symbol index (stubs, pointers)
    reserved2: int  # stub size (S_SYMBOL_STUBS)
    reserved3: int

    @property
    def name(self) -> str:
        return cstr(self.sectname)

    @property
    def segment_name(self) -> str:
        return cstr(self.segname)


assert Section64.SIZE == 80


@dataclass(frozen=True, slots=True)
class DylibCommand(Record):
    """struct dylib_command (LC_ID_DYLIB, LC_LOAD_*DYLIB, LC_REEXPORT_DYLIB); name follows"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6I")
    cmd: int
    cmdsize: int
    name_offset: int  # offset of the path from the start of the command
    timestamp: int
    current_version: int  # X.Y.Z packed as X<<16 | Y<<8 | Z
    compatibility_version: int


assert DylibCommand.SIZE == 24


@dataclass(frozen=True, slots=True)
class StringCommand(Record):
    """struct dylinker_command / rpath_command / sub_*_command: one lc_str"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<3I")
    cmd: int
    cmdsize: int
    string_offset: int


@dataclass(frozen=True, slots=True)
class SymtabCommand(Record):
    """struct symtab_command (LC_SYMTAB)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6I")
    cmd: int
    cmdsize: int
    symoff: int  # file offset of the nlist array
    nsyms: int
    stroff: int  # file offset of the string table
    strsize: int


@dataclass(frozen=True, slots=True)
class DysymtabCommand(Record):
    """struct dysymtab_command (LC_DYSYMTAB)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<20I")
    cmd: int
    cmdsize: int
    ilocalsym: int
    nlocalsym: int
    iextdefsym: int
    nextdefsym: int
    iundefsym: int
    nundefsym: int
    tocoff: int
    ntoc: int
    modtaboff: int
    nmodtab: int
    extrefsymoff: int
    nextrefsyms: int
    indirectsymoff: int
    nindirectsyms: int
    extreloff: int
    nextrel: int
    locreloff: int
    nlocrel: int


assert DysymtabCommand.SIZE == 80


@dataclass(frozen=True, slots=True)
class DyldInfoCommand(Record):
    """struct dyld_info_command (LC_DYLD_INFO, LC_DYLD_INFO_ONLY)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<12I")
    cmd: int
    cmdsize: int
    rebase_off: int
    rebase_size: int
    bind_off: int
    bind_size: int
    weak_bind_off: int
    weak_bind_size: int
    lazy_bind_off: int
    lazy_bind_size: int
    export_off: int
    export_size: int


assert DyldInfoCommand.SIZE == 48


@dataclass(frozen=True, slots=True)
class LinkeditDataCommand(Record):
    """struct linkedit_data_command (code signature, split seg, function starts, ...)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<4I")
    cmd: int
    cmdsize: int
    dataoff: int  # file offset of the data in __LINKEDIT
    datasize: int


@dataclass(frozen=True, slots=True)
class UuidCommand(Record):
    """struct uuid_command (LC_UUID)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<II16s")
    cmd: int
    cmdsize: int
    uuid: bytes


@dataclass(frozen=True, slots=True)
class BuildVersionCommand(Record):
    """struct build_version_command (LC_BUILD_VERSION); ntools build_tool_version follow"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6I")
    cmd: int
    cmdsize: int
    platform: int  # PLATFORM_*
    minos: int  # X.Y.Z packed xxxx.yy.zz
    sdk: int
    ntools: int


@dataclass(frozen=True, slots=True)
class BuildToolVersion(Record):
    """struct build_tool_version"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<2I")
    tool: int  # TOOL_*
    version: int


@dataclass(frozen=True, slots=True)
class VersionMinCommand(Record):
    """struct version_min_command (LC_VERSION_MIN_*)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<4I")
    cmd: int
    cmdsize: int
    version: int
    sdk: int


@dataclass(frozen=True, slots=True)
class SourceVersionCommand(Record):
    """struct source_version_command (LC_SOURCE_VERSION)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIQ")
    cmd: int
    cmdsize: int
    version: int  # A.B.C.D.E packed as a24.b10.c10.d10.e10


@dataclass(frozen=True, slots=True)
class EncryptionInfoCommand64(Record):
    """struct encryption_info_command_64 (LC_ENCRYPTION_INFO_64)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6I")
    cmd: int
    cmdsize: int
    cryptoff: int
    cryptsize: int
    cryptid: int
    pad: int


@dataclass(frozen=True, slots=True)
class EntryPointCommand(Record):
    """struct entry_point_command (LC_MAIN)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIQQ")
    cmd: int
    cmdsize: int
    entryoff: int
    stacksize: int


@dataclass(frozen=True, slots=True)
class RoutinesCommand64(Record):
    """struct routines_command_64 (LC_ROUTINES_64)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<II8Q")
    cmd: int
    cmdsize: int
    init_address: int
    init_module: int
    reserved1: int
    reserved2: int
    reserved3: int
    reserved4: int
    reserved5: int
    reserved6: int


# ---------------------------------------------------------------------------------------------
# arrays

#: struct nlist_64
NLIST64_DTYPE = np.dtype(
    [("n_strx", "<u4"), ("n_type", "u1"), ("n_sect", "u1"), ("n_desc", "<u2"), ("n_value", "<u8")]
)
assert NLIST64_DTYPE.itemsize == 16

#: struct relocation_info (r_address, then the packed symbolnum/pcrel/length/extern/type word)
RELOCATION_DTYPE = np.dtype([("r_address", "<i4"), ("r_info", "<u4")])
assert RELOCATION_DTYPE.itemsize == 8

#: struct data_in_code_entry
DATA_IN_CODE_DTYPE = np.dtype([("offset", "<u4"), ("length", "<u2"), ("kind", "<u2")])
assert DATA_IN_CODE_DTYPE.itemsize == 8


# ---------------------------------------------------------------------------------------------
# chained fixups (mach-o/fixup-chains.h)


@dataclass(frozen=True, slots=True)
class ChainedFixupsHeader(Record):
    """struct dyld_chained_fixups_header"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<7I")
    fixups_version: int  # 0
    starts_offset: int  # offset of dyld_chained_starts_in_image in the blob
    imports_offset: int  # offset of the imports table
    symbols_offset: int  # offset of the symbol strings
    imports_count: int
    imports_format: int  # DYLD_CHAINED_IMPORT*
    symbols_format: int  # 0 = uncompressed


assert ChainedFixupsHeader.SIZE == 28


@dataclass(frozen=True, slots=True)
class ChainedStartsInSegment(Record):
    """struct dyld_chained_starts_in_segment (without the trailing page_start[])"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IHHQIH")
    size: int  # size of this struct including page_start[]
    page_size: int  # 0x1000 or 0x4000
    pointer_format: int  # DYLD_CHAINED_PTR_*
    segment_offset: int  # offset of the segment from the mach header's vmaddr
    max_valid_pointer: int  # 32-bit formats only
    page_count: int


assert ChainedStartsInSegment.SIZE == 22
