"""A zero-copy reader for one 64-bit little-endian Mach-O image.

The file is read through ``mmap``; load commands are parsed once, eagerly (they are
few); everything in LINKEDIT (symbols, exports, fixups, split seg info...) is decoded
on request by the module that owns that encoding. Every structural problem raises
:class:`~dyldcache.errors.MachOFormatError` with the path and the file offset.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..arch import arch_name
from ..errors import MachOFormatError
from . import constants as C
from .fat import is_fat, parse_fat, select_slice
from .format import (
    DATA_IN_CODE_DTYPE,
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

if TYPE_CHECKING:
    from .exports_trie import Export
    from .fixups import Fixups
    from .split_seg import SplitSegInfo

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
class SymbolTable:
    """The nlist_64 array (a numpy view) and the string pool of an image."""

    nlist: np.ndarray
    strings: bytes

    def name(self, strx: int) -> str:
        if strx >= len(self.strings):
            return ""
        end = self.strings.find(b"\0", strx)
        return self.strings[strx : end if end >= 0 else len(self.strings)].decode("utf-8", "surrogateescape")

    def names(self) -> list[str]:
        return [self.name(int(x)) for x in self.nlist["n_strx"]]


@dataclass(slots=True)
class _Commands:
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


class MachOFile:
    """One thin 64-bit Mach-O image held in a buffer (usually an mmap)."""

    def __init__(
        self,
        data: bytes | bytearray | memoryview | mmap.mmap,
        path: str,
        *,
        file_offset: int = 0,
        header_offset: int = 0,
        linkedit: memoryview | None = None,
        in_cache: bool = False,
    ) -> None:
        """Parse the image whose mach header is at ``header_offset`` in ``data``.

        ``data`` is what file offsets in the load commands are relative to: the image
        itself for a standalone file, or a whole cache file for a cache image
        (``in_cache=True``, ``header_offset`` = the header's file offset). In a cache,
        segments may live in other files, so their file ranges are not checked here,
        and ``linkedit`` is the buffer of the file that holds the image's __LINKEDIT.
        """
        #: path used in error messages
        self.path = path
        #: offset of ``data`` inside its file (non-zero for slices of fat files)
        self.file_offset = file_offset
        self.data = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        #: offset of the mach header in ``data``
        self.header_offset = header_offset
        self.in_cache = in_cache
        #: buffer that LINKEDIT offsets (symtab, dyld info, linkedit_data commands) index
        self.linkedit = linkedit if linkedit is not None else self.data
        self.header = self._read_header()
        cmds = self._read_load_commands()
        self.load_commands = cmds.load_commands
        self.segments = cmds.segments
        self.sections: list[Section] = [s for seg in self.segments for s in seg.sections]
        self.id_dylib = cmds.id_dylib
        #: dependencies in load-command order; ordinal N is dylibs[N-1]
        self.dylibs = cmds.dylibs
        self.rpaths = cmds.rpaths
        self.uuid = cmds.uuid
        self.build_versions = cmds.build_versions
        self.version_min = cmds.version_min
        self.source_version = cmds.source_version
        self.symtab_command = cmds.symtab
        self.dysymtab_command = cmds.dysymtab
        self.dyld_info_command = cmds.dyld_info
        self.linkedit_commands = cmds.linkedit
        self.encryption_info = cmds.encryption
        self.entry_point = cmds.entry_point
        self.routines = cmds.routines
        self.dylinker = cmds.dylinker
        self.sub_clients = cmds.sub_clients
        self.umbrella = cmds.umbrella

    # -- header and load commands ---------------------------------------------------------------

    def error(self, offset: int | None, message: str) -> MachOFormatError:
        where = None if offset is None else offset + self.file_offset
        return MachOFormatError(self.path, where, message)

    def _read_header(self) -> MachHeader64:
        data = self.data
        h = self.header_offset
        if h < 0 or len(data) < h + 4:
            raise self.error(h, f"file is too small to be a Mach-O ({len(data)} bytes)")
        magic = int.from_bytes(data[h : h + 4], "little")
        if magic in (C.MH_MAGIC, C.MH_CIGAM):
            raise self.error(0, "32-bit Mach-O files are not supported")
        if magic == C.MH_CIGAM_64:
            raise self.error(0, "big-endian Mach-O files are not supported")
        if magic != C.MH_MAGIC_64:
            raise self.error(0, f"not a Mach-O file (magic {magic:#010x})")
        if len(data) < h + MachHeader64.SIZE:
            raise self.error(h, "truncated mach_header_64")
        header = MachHeader64.unpack_from(data, h)
        if h + MachHeader64.SIZE + header.sizeofcmds > len(data):
            raise self.error(
                h + 20, f"load commands ({header.sizeofcmds:#x} bytes) extend past the end of the file"
            )
        if header.ncmds * LoadCommandHeader.SIZE > header.sizeofcmds:
            raise self.error(
                h + 16, f"{header.ncmds} load commands cannot fit in sizeofcmds {header.sizeofcmds:#x}"
            )
        return header

    def _lc_string(self, lc: LoadCommand, string_offset: int) -> str:
        if string_offset < 8 or string_offset >= lc.size:
            raise self.error(lc.offset, f"{lc.name} string offset {string_offset} is outside the command")
        raw = bytes(self.data[lc.offset + string_offset : lc.offset + lc.size])
        end = raw.find(b"\0")
        if end < 0:
            raise self.error(lc.offset, f"{lc.name} string is not NUL-terminated")
        return raw[:end].decode("utf-8", "surrogateescape")

    def _check_range(self, offset: int, size: int, what: str, at: int) -> None:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise self.error(
                at, f"{what} ({offset:#x}+{size:#x}) extends past the end of the file ({len(self.data):#x})"
            )

    def _check_linkedit_range(self, offset: int, size: int, what: str, at: int) -> None:
        buf = self.linkedit
        if offset < 0 or size < 0 or offset + size > len(buf):
            raise self.error(
                at, f"{what} ({offset:#x}+{size:#x}) extends past the end of its data ({len(buf):#x})"
            )

    def _read_load_commands(self) -> _Commands:
        data = self.data
        out = _Commands()
        end = self.header_offset + MachHeader64.SIZE + self.header.sizeofcmds
        off = self.header_offset + MachHeader64.SIZE
        for i in range(self.header.ncmds):
            if off + LoadCommandHeader.SIZE > end:
                raise self.error(off, f"load command {i} starts past sizeofcmds")
            hdr = LoadCommandHeader.unpack_from(data, off)
            if hdr.cmdsize < LoadCommandHeader.SIZE or hdr.cmdsize % 4:
                raise self.error(
                    off,
                    f"load command {i} ({C.LC_NAMES.get(hdr.cmd, hex(hdr.cmd))}) has bad cmdsize "
                    f"{hdr.cmdsize}",
                )
            if off + hdr.cmdsize > end:
                raise self.error(off, f"load command {i} extends past sizeofcmds")
            lc = LoadCommand(hdr.cmd, off, hdr.cmdsize)
            out.load_commands.append(lc)
            self._parse_command(lc, out)
            off += hdr.cmdsize
        return out

    def _need(self, lc: LoadCommand, size: int) -> None:
        if lc.size < size:
            raise self.error(lc.offset, f"{lc.name} cmdsize {lc.size} < {size}")

    def _parse_command(self, lc: LoadCommand, out: _Commands) -> None:
        data = self.data
        cmd = lc.cmd
        if cmd == C.LC_SEGMENT_64:
            self._need(lc, SegmentCommand64.SIZE)
            seg = SegmentCommand64.unpack_from(data, lc.offset)
            if lc.size != SegmentCommand64.SIZE + seg.nsects * Section64.SIZE:
                raise self.error(
                    lc.offset,
                    f"LC_SEGMENT_64 {seg.name!r} cmdsize {lc.size} does not match {seg.nsects} sections",
                )
            if seg.filesize and not self.in_cache:
                self._check_range(seg.fileoff, seg.filesize, f"segment {seg.name}", lc.offset)
            seg_index = len(out.segments)
            first = sum(len(s.sections) for s in out.segments) + 1
            sections = []
            for k in range(seg.nsects):
                rec_off = lc.offset + SegmentCommand64.SIZE + k * Section64.SIZE
                rec = Section64.unpack_from(data, rec_off)
                sect = Section(
                    first + k,
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
                if (
                    sect.size
                    and not sect.is_zerofill
                    and self.header.filetype != C.MH_DSYM
                    and not self.in_cache
                ):
                    self._check_range(sect.offset, sect.size, f"section {sect.full_name}", rec_off)
                if sect.nreloc and not self.in_cache:
                    self._check_range(
                        sect.reloff, sect.nreloc * 8, f"relocations of {sect.full_name}", rec_off
                    )
                if sect.align > 15:
                    raise self.error(rec_off, f"section {sect.full_name} alignment 2^{sect.align} is absurd")
                # dyld's segment validation (and llvm-objdump) require every section to lie in
                # its segment's address range: lookups by address and moving segments rely on it
                if sect.size and (sect.addr < seg.vmaddr or sect.end > seg.vmaddr + seg.vmsize):
                    raise self.error(
                        rec_off,
                        f"section {sect.full_name} ({sect.addr:#x}+{sect.size:#x}) is not inside segment "
                        f"{seg.name} ({seg.vmaddr:#x}+{seg.vmsize:#x})",
                    )
                sections.append(sect)
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
                    tuple(sections),
                    lc.offset,
                )
            )
        elif cmd in C.DYLIB_LOAD_COMMANDS or cmd == C.LC_ID_DYLIB:
            self._need(lc, DylibCommand.SIZE)
            d = DylibCommand.unpack_from(data, lc.offset)
            ref = DylibRef(
                cmd,
                self._lc_string(lc, d.name_offset),
                d.timestamp,
                d.current_version,
                d.compatibility_version,
            )
            if cmd == C.LC_ID_DYLIB:
                if out.id_dylib is not None:
                    raise self.error(lc.offset, "more than one LC_ID_DYLIB")
                out.id_dylib = ref
            else:
                out.dylibs.append(ref)
        elif cmd in (
            C.LC_RPATH,
            C.LC_LOAD_DYLINKER,
            C.LC_ID_DYLINKER,
            C.LC_SUB_CLIENT,
            C.LC_SUB_FRAMEWORK,
            C.LC_SUB_UMBRELLA,
            C.LC_SUB_LIBRARY,
            C.LC_DYLD_ENVIRONMENT,
        ):
            self._need(lc, StringCommand.SIZE)
            text = self._lc_string(lc, StringCommand.unpack_from(data, lc.offset).string_offset)
            if cmd == C.LC_RPATH:
                out.rpaths.append(text)
            elif cmd in (C.LC_LOAD_DYLINKER, C.LC_ID_DYLINKER):
                out.dylinker = text
            elif cmd == C.LC_SUB_CLIENT:
                out.sub_clients.append(text)
            elif cmd == C.LC_SUB_FRAMEWORK:
                out.umbrella = text
        elif cmd == C.LC_UUID:
            self._need(lc, UuidCommand.SIZE)
            out.uuid = UuidCommand.unpack_from(data, lc.offset).uuid
        elif cmd == C.LC_BUILD_VERSION:
            self._need(lc, BuildVersionCommand.SIZE)
            bv = BuildVersionCommand.unpack_from(data, lc.offset)
            self._need(lc, BuildVersionCommand.SIZE + bv.ntools * BuildToolVersion.SIZE)
            tools = tuple(
                (t.tool, t.version)
                for t in (
                    BuildToolVersion.unpack_from(data, lc.offset + BuildVersionCommand.SIZE + 8 * k)
                    for k in range(bv.ntools)
                )
            )
            out.build_versions.append(BuildVersion(bv.platform, bv.minos, bv.sdk, tools))
        elif cmd in (
            C.LC_VERSION_MIN_MACOSX,
            C.LC_VERSION_MIN_IPHONEOS,
            C.LC_VERSION_MIN_TVOS,
            C.LC_VERSION_MIN_WATCHOS,
        ):
            self._need(lc, VersionMinCommand.SIZE)
            vm = VersionMinCommand.unpack_from(data, lc.offset)
            platform = {
                C.LC_VERSION_MIN_MACOSX: C.PLATFORM_MACOS,
                C.LC_VERSION_MIN_IPHONEOS: C.PLATFORM_IOS,
                C.LC_VERSION_MIN_TVOS: C.PLATFORM_TVOS,
                C.LC_VERSION_MIN_WATCHOS: C.PLATFORM_WATCHOS,
            }[cmd]
            out.version_min = (platform, vm.version, vm.sdk)
        elif cmd == C.LC_SOURCE_VERSION:
            self._need(lc, SourceVersionCommand.SIZE)
            out.source_version = SourceVersionCommand.unpack_from(data, lc.offset).version
        elif cmd == C.LC_SYMTAB:
            self._need(lc, SymtabCommand.SIZE)
            st = SymtabCommand.unpack_from(data, lc.offset)
            self._check_linkedit_range(
                st.symoff, st.nsyms * NLIST64_DTYPE.itemsize, "symbol table", lc.offset
            )
            self._check_linkedit_range(st.stroff, st.strsize, "string table", lc.offset)
            out.symtab = st
        elif cmd == C.LC_DYSYMTAB:
            self._need(lc, DysymtabCommand.SIZE)
            dy = DysymtabCommand.unpack_from(data, lc.offset)
            self._check_linkedit_range(
                dy.indirectsymoff, dy.nindirectsyms * 4, "indirect symbol table", lc.offset
            )
            out.dysymtab = dy
        elif cmd in (C.LC_DYLD_INFO, C.LC_DYLD_INFO_ONLY):
            self._need(lc, DyldInfoCommand.SIZE)
            di = DyldInfoCommand.unpack_from(data, lc.offset)
            for name in ("rebase", "bind", "weak_bind", "lazy_bind", "export"):
                self._check_linkedit_range(
                    getattr(di, name + "_off"), getattr(di, name + "_size"), f"dyld info {name}", lc.offset
                )
            out.dyld_info = di
        elif cmd in C.LINKEDIT_DATA_COMMANDS:
            self._need(lc, LinkeditDataCommand.SIZE)
            ld = LinkeditDataCommand.unpack_from(data, lc.offset)
            self._check_linkedit_range(ld.dataoff, ld.datasize, lc.name, lc.offset)
            if cmd in out.linkedit:
                raise self.error(lc.offset, f"more than one {lc.name}")
            out.linkedit[cmd] = ld
        elif cmd == C.LC_ENCRYPTION_INFO_64:
            self._need(lc, EncryptionInfoCommand64.SIZE)
            out.encryption = EncryptionInfoCommand64.unpack_from(data, lc.offset)
        elif cmd == C.LC_MAIN:
            self._need(lc, EntryPointCommand.SIZE)
            out.entry_point = EntryPointCommand.unpack_from(data, lc.offset)
        elif cmd == C.LC_ROUTINES_64:
            self._need(lc, RoutinesCommand64.SIZE)
            out.routines = RoutinesCommand64.unpack_from(data, lc.offset)
        elif cmd == C.LC_SEGMENT:
            raise self.error(lc.offset, "LC_SEGMENT (32-bit) in a 64-bit image")

    # -- simple properties ----------------------------------------------------------------------

    @property
    def arch(self) -> str:
        return arch_name(self.header.cputype, self.header.cpusubtype)

    @property
    def filetype(self) -> int:
        return self.header.filetype

    @property
    def flags(self) -> int:
        return self.header.flags

    @property
    def install_name(self) -> str | None:
        return self.id_dylib.path if self.id_dylib else None

    @property
    def uuid_string(self) -> str | None:
        if self.uuid is None:
            return None
        h = self.uuid.hex().upper()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    @property
    def platform(self) -> int | None:
        if self.build_versions:
            return self.build_versions[0].platform
        if self.version_min:
            return self.version_min[0]
        return None

    @property
    def minos(self) -> int | None:
        if self.build_versions:
            return self.build_versions[0].minos
        if self.version_min:
            return self.version_min[1]
        return None

    @property
    def base_address(self) -> int:
        """VM address of the mach header: the __TEXT segment's (the segment at file offset 0)."""
        for seg in self.segments:
            if seg.fileoff == self.header_offset and seg.filesize:
                return seg.vmaddr
        return self.segments[0].vmaddr if self.segments else 0

    def segment(self, name: str) -> Segment | None:
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    def section(self, segname: str, sectname: str) -> Section | None:
        for s in self.sections:
            if s.sectname == sectname and s.segname == segname:
                return s
        return None

    def segment_for_address(self, vmaddr: int) -> Segment | None:
        for seg in self.segments:
            if seg.vmaddr <= vmaddr < seg.vmaddr + seg.vmsize:
                return seg
        return None

    def section_for_address(self, vmaddr: int) -> Section | None:
        for s in self.sections:
            if s.addr <= vmaddr < s.addr + s.size:
                return s
        return None

    def has_command(self, cmd: int) -> bool:
        return any(lc.cmd == cmd for lc in self.load_commands)

    @property
    def has_chained_fixups(self) -> bool:
        return C.LC_DYLD_CHAINED_FIXUPS in self.linkedit_commands

    @property
    def split_seg_version(self) -> int | None:
        """1 or 2 if the image has split seg info, else None (datasize 0 counts as absent)."""
        lc = self.linkedit_commands.get(C.LC_SEGMENT_SPLIT_INFO)
        if lc is None or lc.datasize == 0:
            return None
        return 2 if self.linkedit[lc.dataoff] == C.DYLD_CACHE_ADJ_V2_FORMAT else 1

    # -- bytes ----------------------------------------------------------------------------------

    def bytes_at(self, offset: int, size: int, what: str) -> memoryview:
        """A checked view of ``size`` bytes at image offset ``offset``."""
        self._check_range(offset, size, what, offset)
        return self.data[offset : offset + size]

    def linkedit_data(self, cmd: int) -> memoryview | None:
        """The bytes of a linkedit_data_command's payload, or None if the command is absent."""
        lc = self.linkedit_commands.get(cmd)
        if lc is None:
            return None
        return self.linkedit[lc.dataoff : lc.dataoff + lc.datasize]

    def address_to_offset(self, vmaddr: int) -> int | None:
        """Image file offset of a VM address, or None if it has no file bytes."""
        for seg in self.segments:
            if seg.vmaddr <= vmaddr < seg.vmaddr + seg.filesize:
                return seg.fileoff + (vmaddr - seg.vmaddr)
        return None

    def read_at_address(self, vmaddr: int, size: int) -> memoryview:
        off = self.address_to_offset(vmaddr)
        if off is None or self.address_to_offset(vmaddr + size - 1) is None:
            raise self.error(None, f"address {vmaddr:#x}+{size:#x} has no file content")
        return self.data[off : off + size]

    def section_content(self, sect: Section) -> memoryview:
        if sect.is_zerofill:
            return memoryview(bytes(sect.size))
        return self.data[sect.offset : sect.offset + sect.size]

    # -- LINKEDIT decoders (each owned by its format module) ------------------------------------

    @cached_property
    def symbol_table(self) -> SymbolTable:
        st = self.symtab_command
        if st is None:
            return SymbolTable(np.zeros(0, dtype=NLIST64_DTYPE), b"")
        nlist = np.frombuffer(self.linkedit, dtype=NLIST64_DTYPE, count=st.nsyms, offset=st.symoff)
        strings = bytes(self.linkedit[st.stroff : st.stroff + st.strsize])
        return SymbolTable(nlist, strings)

    @cached_property
    def indirect_symbols(self) -> np.ndarray:
        dy = self.dysymtab_command
        if dy is None or dy.nindirectsyms == 0:
            return np.zeros(0, dtype="<u4")
        return np.frombuffer(self.linkedit, dtype="<u4", count=dy.nindirectsyms, offset=dy.indirectsymoff)

    @cached_property
    def data_in_code(self) -> np.ndarray:
        raw = self.linkedit_data(C.LC_DATA_IN_CODE)
        if raw is None:
            return np.zeros(0, dtype=DATA_IN_CODE_DTYPE)
        return np.frombuffer(raw, dtype=DATA_IN_CODE_DTYPE, count=len(raw) // DATA_IN_CODE_DTYPE.itemsize)

    def exports_trie_bytes(self) -> tuple[memoryview, int] | None:
        """(trie bytes, file offset) from LC_DYLD_EXPORTS_TRIE or LC_DYLD_INFO, or None."""
        lc = self.linkedit_commands.get(C.LC_DYLD_EXPORTS_TRIE)
        if lc is not None:
            return self.linkedit[lc.dataoff : lc.dataoff + lc.datasize], lc.dataoff
        di = self.dyld_info_command
        if di is not None and di.export_size:
            return self.linkedit[di.export_off : di.export_off + di.export_size], di.export_off
        return None

    @cached_property
    def exports(self) -> list[Export]:
        from .exports_trie import read_exports

        found = self.exports_trie_bytes()
        if found is None:
            return []
        raw, off = found
        return read_exports(raw, self.path, off + self.file_offset)

    @cached_property
    def fixups(self) -> Fixups:
        from .fixups import read_fixups

        return read_fixups(self)

    @cached_property
    def split_seg(self) -> SplitSegInfo | None:
        from .split_seg import read_split_seg

        lc = self.linkedit_commands.get(C.LC_SEGMENT_SPLIT_INFO)
        if lc is None or lc.datasize == 0:
            return None
        return read_split_seg(
            self.linkedit[lc.dataoff : lc.dataoff + lc.datasize], self.path, lc.dataoff + self.file_offset
        )

    @cached_property
    def function_starts(self) -> np.ndarray:
        """VM addresses of the function starts (uint64 array)."""
        from .function_starts import read_function_starts

        raw = self.linkedit_data(C.LC_FUNCTION_STARTS)
        if raw is None:
            return np.zeros(0, dtype=np.uint64)
        lc = self.linkedit_commands[C.LC_FUNCTION_STARTS]
        return read_function_starts(raw, self.base_address, self.path, lc.dataoff + self.file_offset)

    def iter_symbols(self) -> Iterator[tuple[str, int, int, int, int]]:
        """(name, n_type, n_sect, n_desc, n_value) for every nlist entry."""
        st = self.symbol_table
        for rec in st.nlist:
            yield (
                st.name(int(rec["n_strx"])),
                int(rec["n_type"]),
                int(rec["n_sect"]),
                int(rec["n_desc"]),
                int(rec["n_value"]),
            )


class MappedFile:
    """An mmap of a whole file that stays open while images read from it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise MachOFormatError(self.path, None, f"cannot open: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                self._mmap: mmap.mmap | None = None
                self.data: memoryview = memoryview(b"")
            else:
                self._mmap = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
                self.data = memoryview(self._mmap)
        except OSError as exc:
            raise MachOFormatError(self.path, None, f"cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the mapping; views handed out must have been dropped first."""
        self.data.release()
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None


def parse_macho(
    data: bytes | bytearray | memoryview | mmap.mmap, path: str, arch: str | None = None
) -> MachOFile:
    """The image in ``data`` (a thin file, or the ``arch`` slice of a fat file)."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    if is_fat(view):
        sl = select_slice(parse_fat(view, path), arch, path)
        return MachOFile(view[sl.offset : sl.offset + sl.size], path, file_offset=sl.offset)
    image = MachOFile(view, path)
    if arch is not None and image.arch != arch:
        raise MachOFormatError(path, None, f"file is {image.arch}, not {arch}")
    return image


def open_macho(path: str | os.PathLike[str], arch: str | None = None) -> MachOFile:
    """Map ``path`` read-only and parse it; the mapping lives as long as the image."""
    mapped = MappedFile(path)
    return parse_macho(mapped.data, mapped.path, arch)
