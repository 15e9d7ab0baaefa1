"""A zero-copy view of one 64-bit little-endian Mach-O image: its header, its load commands
(parsed once, eagerly, by :mod:`dyldcache.macho.commands`) and the tables they locate.

The file is usually read through ``mmap``. Every structural problem raises
:class:`~dyldcache.errors.MachOFormatError` with the path and the file offset. The LINKEDIT
encodings (exports, fixups, split seg info...) are decoded by the module that owns each one;
:class:`~dyldcache.macho.file.MachOFile` puts them together on top of this class.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import MachOFormatError
from . import constants as C
from .commands import Section, Segment, parse_load_commands
from .cpu import arch_name
from .format import DATA_IN_CODE_DTYPE, NLIST64_DTYPE, LoadCommandHeader, MachHeader64


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


class MachOImage:
    """One thin 64-bit Mach-O image held in a buffer (usually an mmap): its header, its load
    commands and the tables they locate. :class:`~dyldcache.macho.file.MachOFile` adds the
    LINKEDIT decoders."""

    #: the tables decoded from LINKEDIT on first use and kept (cached properties)
    LINKEDIT_DECODES: tuple[str, ...] = ("symbol_table", "indirect_symbols", "data_in_code")

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
        cmds = parse_load_commands(self)
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

    def check_range(self, offset: int, size: int, what: str, at: int) -> None:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise self.error(
                at, f"{what} ({offset:#x}+{size:#x}) extends past the end of the file ({len(self.data):#x})"
            )

    def check_linkedit_range(self, offset: int, size: int, what: str, at: int) -> None:
        buf = self.linkedit
        if offset < 0 or size < 0 or offset + size > len(buf):
            raise self.error(
                at, f"{what} ({offset:#x}+{size:#x}) extends past the end of its data ({len(buf):#x})"
            )

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
        self.check_range(offset, size, what, offset)
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

    # -- tables in LINKEDIT ----------------------------------------------------------------------

    def forget_decodes(self, *names: str) -> None:
        """Drop the named LINKEDIT decodes (all of them when none is named); the next use
        decodes again. A builder that passes over thousands of images keeps none."""
        for name in names or self.LINKEDIT_DECODES:
            self.__dict__.pop(name, None)

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
