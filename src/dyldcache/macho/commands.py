"""Load commands as parsed records: one parser per command (``<mach-o/loader.h>``).

:func:`parse_load_commands` walks the commands of an image once; each command goes to the
parser registered for it in :data:`PARSERS`, which checks its size and the ranges it names and
adds what it holds to a :class:`ParsedCommands`. Commands with no parser are kept as bare
:class:`LoadCommand` records. The parsers read through a :class:`CommandSource`, the image as far
as they need it, so that every error names the file and the offset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import MachOFormatError
from . import constants as C
from .format import (
    NLIST64_DTYPE,
    BuildToolVersion,
    BuildVersionCommand,
    DyldInfoCommand,
    DylibCommand,
    DysymtabCommand,
    EncryptionInfoCommand64,
    EntryPointCommand,
    LinkeditDataCommand,
    LoadCommandHeader,
    MachHeader64,
    RoutinesCommand64,
    Section64,
    SegmentCommand64,
    SourceVersionCommand,
    StringCommand,
    SymtabCommand,
    UuidCommand,
    VersionMinCommand,
)

_DYLIB_KIND = {
    C.LC_LOAD_DYLIB: "load",
    C.LC_LOAD_WEAK_DYLIB: "weak",
    C.LC_REEXPORT_DYLIB: "reexport",
    C.LC_LOAD_UPWARD_DYLIB: "upward",
    C.LC_LAZY_LOAD_DYLIB: "lazy",
}


def format_version(v: int) -> str:
    """X.Y.Z from a packed 32-bit version (X<<16 | Y<<8 | Z)."""
    return f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"


@dataclass(frozen=True, slots=True)
class LoadCommand:
    cmd: int
    #: offset of the command in the image (from the mach header)
    offset: int
    size: int

    @property
    def name(self) -> str:
        return C.LC_NAMES.get(self.cmd, f"LC_{self.cmd:#x}")


@dataclass(frozen=True, slots=True)
class Section:
    #: 1-based section number, as in nlist n_sect and split seg info
    index: int
    segment_index: int
    segname: str
    sectname: str
    addr: int
    size: int
    offset: int
    align: int
    reloff: int
    nreloc: int
    flags: int
    reserved1: int
    reserved2: int
    reserved3: int
    #: offset of the section_64 record in the image
    record_offset: int

    @property
    def type(self) -> int:
        return self.flags & C.SECTION_TYPE

    @property
    def is_zerofill(self) -> bool:
        return self.type in C.ZEROFILL_SECTION_TYPES

    @property
    def end(self) -> int:
        return self.addr + self.size

    @property
    def full_name(self) -> str:
        return f"{self.segname},{self.sectname}"


@dataclass(frozen=True, slots=True)
class Segment:
    index: int
    name: str
    vmaddr: int
    vmsize: int
    fileoff: int
    filesize: int
    maxprot: int
    initprot: int
    flags: int
    sections: tuple[Section, ...]
    #: offset of the segment_command_64 in the image
    command_offset: int

    @property
    def vmend(self) -> int:
        return self.vmaddr + self.vmsize

    @property
    def prot_string(self) -> str:
        p = self.initprot
        return ("r" if p & 1 else "-") + ("w" if p & 2 else "-") + ("x" if p & 4 else "-")


@dataclass(frozen=True, slots=True)
class DylibRef:
    """One LC_*_DYLIB command: a dependency (or the image's own id)."""

    cmd: int
    path: str
    timestamp: int
    current_version: int
    compatibility_version: int

    @property
    def kind(self) -> str:
        return _DYLIB_KIND.get(self.cmd, "id")

    @property
    def is_weak(self) -> bool:
        return self.cmd == C.LC_LOAD_WEAK_DYLIB

    @property
    def is_reexport(self) -> bool:
        return self.cmd == C.LC_REEXPORT_DYLIB

    @property
    def is_upward(self) -> bool:
        return self.cmd == C.LC_LOAD_UPWARD_DYLIB


@dataclass(frozen=True, slots=True)
class BuildVersion:
    platform: int
    minos: int
    sdk: int
    tools: tuple[tuple[int, int], ...] = ()

    @property
    def platform_name(self) -> str:
        return C.PLATFORM_NAMES.get(self.platform, str(self.platform))


@dataclass(slots=True)
class ParsedCommands:
    """What one pass over the load commands collects."""

    load_commands: list[LoadCommand] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    id_dylib: DylibRef | None = None
    dylibs: list[DylibRef] = field(default_factory=list)
    rpaths: list[str] = field(default_factory=list)
    uuid: bytes | None = None
    build_versions: list[BuildVersion] = field(default_factory=list)
    version_min: tuple[int, int, int] | None = None
    source_version: int | None = None
    symtab: SymtabCommand | None = None
    dysymtab: DysymtabCommand | None = None
    dyld_info: DyldInfoCommand | None = None
    linkedit: dict[int, LinkeditDataCommand] = field(default_factory=dict)
    encryption: EncryptionInfoCommand64 | None = None
    entry_point: EntryPointCommand | None = None
    routines: RoutinesCommand64 | None = None
    dylinker: str | None = None
    sub_clients: list[str] = field(default_factory=list)
    umbrella: str | None = None


class CommandSource(Protocol):
    """The image as the parsers see it (a :class:`~dyldcache.macho.image.MachOImage`)."""

    @property
    def data(self) -> memoryview: ...

    @property
    def header(self) -> MachHeader64: ...

    @property
    def header_offset(self) -> int: ...

    @property
    def in_cache(self) -> bool: ...

    def error(self, offset: int | None, message: str) -> MachOFormatError: ...

    def check_range(self, offset: int, size: int, what: str, at: int) -> None: ...

    def check_linkedit_range(self, offset: int, size: int, what: str, at: int) -> None: ...


#: reads one load command into the collection
Parser = Callable[[CommandSource, LoadCommand, ParsedCommands], None]


def parse_load_commands(src: CommandSource) -> ParsedCommands:
    """Every load command of the image, each checked by its parser."""
    data = src.data
    out = ParsedCommands()
    end = src.header_offset + MachHeader64.SIZE + src.header.sizeofcmds
    off = src.header_offset + MachHeader64.SIZE
    for i in range(src.header.ncmds):
        if off + LoadCommandHeader.SIZE > end:
            raise src.error(off, f"load command {i} starts past sizeofcmds")
        hdr = LoadCommandHeader.unpack_from(data, off)
        if hdr.cmdsize < LoadCommandHeader.SIZE or hdr.cmdsize % 4:
            raise src.error(
                off,
                f"load command {i} ({C.LC_NAMES.get(hdr.cmd, hex(hdr.cmd))}) has bad cmdsize {hdr.cmdsize}",
            )
        if off + hdr.cmdsize > end:
            raise src.error(off, f"load command {i} extends past sizeofcmds")
        lc = LoadCommand(hdr.cmd, off, hdr.cmdsize)
        out.load_commands.append(lc)
        parser = PARSERS.get(hdr.cmd)
        if parser is not None:
            parser(src, lc, out)
        off += hdr.cmdsize
    return out


def _need(src: CommandSource, lc: LoadCommand, size: int) -> None:
    if lc.size < size:
        raise src.error(lc.offset, f"{lc.name} cmdsize {lc.size} < {size}")


def _string(src: CommandSource, lc: LoadCommand, string_offset: int) -> str:
    """The NUL-terminated string an lc_str offset points at, inside the command."""
    if string_offset < 8 or string_offset >= lc.size:
        raise src.error(lc.offset, f"{lc.name} string offset {string_offset} is outside the command")
    raw = bytes(src.data[lc.offset + string_offset : lc.offset + lc.size])
    end = raw.find(b"\0")
    if end < 0:
        raise src.error(lc.offset, f"{lc.name} string is not NUL-terminated")
    return raw[:end].decode("utf-8", "surrogateescape")


def _section(src: CommandSource, seg: SegmentCommand64, index: int, seg_index: int, rec_off: int) -> Section:
    rec = Section64.unpack_from(src.data, rec_off)
    sect = Section(
        index,
        seg_index,
        rec.segment_name,
        rec.name,
        rec.addr,
        rec.size,
        rec.offset,
        rec.align,
        rec.reloff,
        rec.nreloc,
        rec.flags,
        rec.reserved1,
        rec.reserved2,
        rec.reserved3,
        rec_off,
    )
    if sect.size and not sect.is_zerofill and src.header.filetype != C.MH_DSYM and not src.in_cache:
        src.check_range(sect.offset, sect.size, f"section {sect.full_name}", rec_off)
    if sect.nreloc and not src.in_cache:
        src.check_range(sect.reloff, sect.nreloc * 8, f"relocations of {sect.full_name}", rec_off)
    if sect.align > 15:
        raise src.error(rec_off, f"section {sect.full_name} alignment 2^{sect.align} is absurd")
    # dyld's segment validation (and llvm-objdump) require every section to lie in its
    # segment's address range: lookups by address and moving segments rely on it
    if sect.size and (sect.addr < seg.vmaddr or sect.end > seg.vmaddr + seg.vmsize):
        raise src.error(
            rec_off,
            f"section {sect.full_name} ({sect.addr:#x}+{sect.size:#x}) is not inside segment "
            f"{seg.name} ({seg.vmaddr:#x}+{seg.vmsize:#x})",
        )
    return sect


def _segment_64(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, SegmentCommand64.SIZE)
    seg = SegmentCommand64.unpack_from(src.data, lc.offset)
    if lc.size != SegmentCommand64.SIZE + seg.nsects * Section64.SIZE:
        raise src.error(
            lc.offset,
            f"LC_SEGMENT_64 {seg.name!r} cmdsize {lc.size} does not match {seg.nsects} sections",
        )
    if seg.filesize and not src.in_cache:
        src.check_range(seg.fileoff, seg.filesize, f"segment {seg.name}", lc.offset)
    seg_index = len(out.segments)
    first = sum(len(s.sections) for s in out.segments) + 1
    sections = tuple(
        _section(src, seg, first + k, seg_index, lc.offset + SegmentCommand64.SIZE + k * Section64.SIZE)
        for k in range(seg.nsects)
    )
    out.segments.append(
        Segment(
            seg_index,
            seg.name,
            seg.vmaddr,
            seg.vmsize,
            seg.fileoff,
            seg.filesize,
            seg.maxprot,
            seg.initprot,
            seg.flags,
            sections,
            lc.offset,
        )
    )


def _segment_32(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    raise src.error(lc.offset, "LC_SEGMENT (32-bit) in a 64-bit image")


def _dylib(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, DylibCommand.SIZE)
    d = DylibCommand.unpack_from(src.data, lc.offset)
    ref = DylibRef(
        lc.cmd, _string(src, lc, d.name_offset), d.timestamp, d.current_version, d.compatibility_version
    )
    if lc.cmd != C.LC_ID_DYLIB:
        out.dylibs.append(ref)
    elif out.id_dylib is not None:
        raise src.error(lc.offset, "more than one LC_ID_DYLIB")
    else:
        out.id_dylib = ref


def _string_command(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, StringCommand.SIZE)
    text = _string(src, lc, StringCommand.unpack_from(src.data, lc.offset).string_offset)
    if lc.cmd == C.LC_RPATH:
        out.rpaths.append(text)
    elif lc.cmd in (C.LC_LOAD_DYLINKER, C.LC_ID_DYLINKER):
        out.dylinker = text
    elif lc.cmd == C.LC_SUB_CLIENT:
        out.sub_clients.append(text)
    elif lc.cmd == C.LC_SUB_FRAMEWORK:
        out.umbrella = text


def _uuid(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, UuidCommand.SIZE)
    out.uuid = UuidCommand.unpack_from(src.data, lc.offset).uuid


def _build_version(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, BuildVersionCommand.SIZE)
    bv = BuildVersionCommand.unpack_from(src.data, lc.offset)
    _need(src, lc, BuildVersionCommand.SIZE + bv.ntools * BuildToolVersion.SIZE)
    tools = tuple(
        (t.tool, t.version)
        for t in (
            BuildToolVersion.unpack_from(src.data, lc.offset + BuildVersionCommand.SIZE + 8 * k)
            for k in range(bv.ntools)
        )
    )
    out.build_versions.append(BuildVersion(bv.platform, bv.minos, bv.sdk, tools))


_VERSION_MIN_PLATFORM = {
    C.LC_VERSION_MIN_MACOSX: C.PLATFORM_MACOS,
    C.LC_VERSION_MIN_IPHONEOS: C.PLATFORM_IOS,
    C.LC_VERSION_MIN_TVOS: C.PLATFORM_TVOS,
    C.LC_VERSION_MIN_WATCHOS: C.PLATFORM_WATCHOS,
}


def _version_min(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, VersionMinCommand.SIZE)
    vm = VersionMinCommand.unpack_from(src.data, lc.offset)
    out.version_min = (_VERSION_MIN_PLATFORM[lc.cmd], vm.version, vm.sdk)


def _source_version(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, SourceVersionCommand.SIZE)
    out.source_version = SourceVersionCommand.unpack_from(src.data, lc.offset).version


def _symtab(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, SymtabCommand.SIZE)
    st = SymtabCommand.unpack_from(src.data, lc.offset)
    src.check_linkedit_range(st.symoff, st.nsyms * NLIST64_DTYPE.itemsize, "symbol table", lc.offset)
    src.check_linkedit_range(st.stroff, st.strsize, "string table", lc.offset)
    out.symtab = st


def _dysymtab(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, DysymtabCommand.SIZE)
    dy = DysymtabCommand.unpack_from(src.data, lc.offset)
    src.check_linkedit_range(dy.indirectsymoff, dy.nindirectsyms * 4, "indirect symbol table", lc.offset)
    out.dysymtab = dy


def _dyld_info(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, DyldInfoCommand.SIZE)
    di = DyldInfoCommand.unpack_from(src.data, lc.offset)
    for name in ("rebase", "bind", "weak_bind", "lazy_bind", "export"):
        src.check_linkedit_range(
            getattr(di, name + "_off"), getattr(di, name + "_size"), f"dyld info {name}", lc.offset
        )
    out.dyld_info = di


def _linkedit_data(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, LinkeditDataCommand.SIZE)
    ld = LinkeditDataCommand.unpack_from(src.data, lc.offset)
    src.check_linkedit_range(ld.dataoff, ld.datasize, lc.name, lc.offset)
    if lc.cmd in out.linkedit:
        raise src.error(lc.offset, f"more than one {lc.name}")
    out.linkedit[lc.cmd] = ld


def _encryption_info(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, EncryptionInfoCommand64.SIZE)
    out.encryption = EncryptionInfoCommand64.unpack_from(src.data, lc.offset)


def _main(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, EntryPointCommand.SIZE)
    out.entry_point = EntryPointCommand.unpack_from(src.data, lc.offset)


def _routines(src: CommandSource, lc: LoadCommand, out: ParsedCommands) -> None:
    _need(src, lc, RoutinesCommand64.SIZE)
    out.routines = RoutinesCommand64.unpack_from(src.data, lc.offset)


_STRING_COMMANDS = (
    C.LC_RPATH,
    C.LC_LOAD_DYLINKER,
    C.LC_ID_DYLINKER,
    C.LC_SUB_CLIENT,
    C.LC_SUB_FRAMEWORK,
    C.LC_SUB_UMBRELLA,
    C.LC_SUB_LIBRARY,
    C.LC_DYLD_ENVIRONMENT,
)

#: the parser of every load command this reader understands, by cmd
PARSERS: dict[int, Parser] = {
    C.LC_SEGMENT_64: _segment_64,
    C.LC_SEGMENT: _segment_32,
    **{cmd: _dylib for cmd in (*sorted(C.DYLIB_LOAD_COMMANDS), C.LC_ID_DYLIB)},
    **{cmd: _string_command for cmd in _STRING_COMMANDS},
    C.LC_UUID: _uuid,
    C.LC_BUILD_VERSION: _build_version,
    **{cmd: _version_min for cmd in _VERSION_MIN_PLATFORM},
    C.LC_SOURCE_VERSION: _source_version,
    C.LC_SYMTAB: _symtab,
    C.LC_DYSYMTAB: _dysymtab,
    C.LC_DYLD_INFO: _dyld_info,
    C.LC_DYLD_INFO_ONLY: _dyld_info,
    **{cmd: _linkedit_data for cmd in sorted(C.LINKEDIT_DATA_COMMANDS)},
    C.LC_ENCRYPTION_INFO_64: _encryption_info,
    C.LC_MAIN: _main,
    C.LC_ROUTINES_64: _routines,
}
