"""Building load commands as bytes (for the linker's output and the cache builder's rewritten
images). Every command is padded to a multiple of 8 bytes, as 64-bit images require.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..record import name16
from . import constants as C
from .format import (
    BuildToolVersion,
    BuildVersionCommand,
    DyldInfoCommand,
    DylibCommand,
    DysymtabCommand,
    LinkeditDataCommand,
    Section64,
    SegmentCommand64,
    SourceVersionCommand,
    StringCommand,
    SymtabCommand,
    UuidCommand,
)


def _pad8(raw: bytes) -> bytes:
    return raw + bytes(-len(raw) % 8)


@dataclass(slots=True)
class SectionSpec:
    segname: str
    sectname: str
    addr: int
    size: int
    offset: int
    align: int  # log2
    flags: int
    reserved1: int = 0
    reserved2: int = 0
    reserved3: int = 0
    reloff: int = 0
    nreloc: int = 0

    def pack(self) -> bytes:
        return Section64(
            name16(self.sectname),
            name16(self.segname),
            self.addr,
            self.size,
            self.offset,
            self.align,
            self.reloff,
            self.nreloc,
            self.flags,
            self.reserved1,
            self.reserved2,
            self.reserved3,
        ).pack()


def segment_command(
    name: str,
    vmaddr: int,
    vmsize: int,
    fileoff: int,
    filesize: int,
    maxprot: int,
    initprot: int,
    sections: Sequence[SectionSpec] = (),
    flags: int = 0,
) -> bytes:
    size = SegmentCommand64.SIZE + Section64.SIZE * len(sections)
    head = SegmentCommand64(
        C.LC_SEGMENT_64,
        size,
        name16(name),
        vmaddr,
        vmsize,
        fileoff,
        filesize,
        maxprot,
        initprot,
        len(sections),
        flags,
    ).pack()
    return head + b"".join(s.pack() for s in sections)


def dylib_command(
    cmd: int, path: str, timestamp: int, current_version: int, compatibility_version: int
) -> bytes:
    raw = path.encode() + b"\0"
    size = DylibCommand.SIZE + len(raw)
    size += -size % 8
    head = DylibCommand(
        cmd, size, DylibCommand.SIZE, timestamp, current_version, compatibility_version
    ).pack()
    return (head + raw).ljust(size, b"\0")


def string_command(cmd: int, text: str) -> bytes:
    raw = text.encode() + b"\0"
    size = StringCommand.SIZE + len(raw)
    size += -size % 8
    return (StringCommand(cmd, size, StringCommand.SIZE).pack() + raw).ljust(size, b"\0")


def linkedit_data_command(cmd: int, dataoff: int, datasize: int) -> bytes:
    return LinkeditDataCommand(cmd, LinkeditDataCommand.SIZE, dataoff, datasize).pack()


def symtab_command(symoff: int, nsyms: int, stroff: int, strsize: int) -> bytes:
    return SymtabCommand(C.LC_SYMTAB, SymtabCommand.SIZE, symoff, nsyms, stroff, strsize).pack()


def dysymtab_command(
    ilocal: int,
    nlocal: int,
    iextdef: int,
    nextdef: int,
    iundef: int,
    nundef: int,
    indirectsymoff: int,
    nindirectsyms: int,
) -> bytes:
    return DysymtabCommand(
        C.LC_DYSYMTAB,
        DysymtabCommand.SIZE,
        ilocal,
        nlocal,
        iextdef,
        nextdef,
        iundef,
        nundef,
        0,
        0,
        0,
        0,
        0,
        0,
        indirectsymoff,
        nindirectsyms,
        0,
        0,
        0,
        0,
    ).pack()


def dyld_info_command(
    rebase: tuple[int, int],
    bind: tuple[int, int],
    weak_bind: tuple[int, int],
    lazy_bind: tuple[int, int],
    export: tuple[int, int],
) -> bytes:
    return DyldInfoCommand(
        C.LC_DYLD_INFO_ONLY, DyldInfoCommand.SIZE, *rebase, *bind, *weak_bind, *lazy_bind, *export
    ).pack()


def uuid_command(uuid: bytes) -> bytes:
    return UuidCommand(C.LC_UUID, UuidCommand.SIZE, uuid).pack()


def build_version_command(
    platform: int, minos: int, sdk: int, tools: Sequence[tuple[int, int]] = ()
) -> bytes:
    size = BuildVersionCommand.SIZE + BuildToolVersion.SIZE * len(tools)
    head = BuildVersionCommand(C.LC_BUILD_VERSION, size, platform, minos, sdk, len(tools)).pack()
    return _pad8(head + b"".join(BuildToolVersion(t, v).pack() for t, v in tools))


def source_version_command(version: int = 0) -> bytes:
    return SourceVersionCommand(C.LC_SOURCE_VERSION, SourceVersionCommand.SIZE, version).pack()
