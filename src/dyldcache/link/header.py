"""Phase 8 of a link: the mach header and load commands, and the UUID (a hash of the output
written with a zero UUID, so that equal inputs give equal outputs)."""

from __future__ import annotations

import hashlib
import struct

from ..arch import Arch
from ..errors import LinkError
from ..macho import constants as C
from ..macho.load_commands import (
    SectionSpec,
    build_version_command,
    dyld_info_command,
    dylib_command,
    dysymtab_command,
    linkedit_data_command,
    segment_command,
    source_version_command,
    symtab_command,
    uuid_command,
)
from .inputs import Inputs
from .linkedit import Linkedit
from .resolution import Symbols
from .sections import OutputSections

#: free bytes kept after the load commands (the cache builder adds two segment commands to libobjc)
HEADER_PAD = 0x200
MACH_HEADER_SIZE = 32

_DYLIB_COMMAND = {
    "load": C.LC_LOAD_DYLIB,
    "weak": C.LC_LOAD_WEAK_DYLIB,
    "reexport": C.LC_REEXPORT_DYLIB,
    "upward": C.LC_LOAD_UPWARD_DYLIB,
}


class HeaderWriter:
    def __init__(
        self, arch: Arch, chained: bool, inputs: Inputs, symbols: Symbols, layout: OutputSections
    ) -> None:
        self.arch = arch
        self.chained = chained
        self.inputs = inputs
        self.symbols = symbols
        self.layout = layout
        self.uuid = bytes(16)
        #: MH_BINDS_TO_WEAK: some bind goes to a weak definition (known once content is written)
        self.binds_to_weak = False

    def header_end(self) -> int:
        """Where the load commands and their padding end: what __TEXT's sections come after."""
        return MACH_HEADER_SIZE + len(self.load_commands(Linkedit())[1]) + HEADER_PAD

    def header_flags(self) -> int:
        flags = C.MH_NOUNDEFS | C.MH_DYLDLINK | C.MH_TWOLEVEL
        if not any(d.mode == "reexport" for d in self.inputs.dylibs):
            flags |= C.MH_NO_REEXPORTED_DYLIBS
        if any(ls.external and ls.weak_def for ls in self.symbols.globals.values()):
            flags |= C.MH_WEAK_DEFINES
        if self.binds_to_weak:
            flags |= C.MH_BINDS_TO_WEAK
        return flags

    def load_commands(self, linkedit: Linkedit) -> tuple[int, bytes]:
        """(number of commands, their bytes); with an empty ``linkedit``, placeholders of the
        final size."""
        inputs = self.inputs
        lcs: list[bytes] = []
        for g in self.layout.segments:
            specs = [
                SectionSpec(
                    s.segname,
                    s.sectname,
                    s.addr,
                    s.size,
                    s.fileoff,
                    max(0, s.align.bit_length() - 1),
                    s.flags,
                    s.reserved1,
                    s.reserved2,
                )
                for s in g.sections
            ]
            lcs.append(
                segment_command(g.name, g.vmaddr, g.vmsize, g.fileoff, g.filesize, g.prot, g.prot, specs)
            )
        lcs.append(
            dylib_command(
                C.LC_ID_DYLIB,
                inputs.install_name,
                1,
                0x10000 if inputs.current_version is None else inputs.current_version,
                0x10000 if inputs.compatibility_version is None else inputs.compatibility_version,
            )
        )
        piece = linkedit.piece
        if self.chained:
            lcs.append(linkedit_data_command(C.LC_DYLD_CHAINED_FIXUPS, *piece("chained")))
            lcs.append(linkedit_data_command(C.LC_DYLD_EXPORTS_TRIE, *piece("exports")))
        else:
            lcs.append(
                dyld_info_command(
                    piece("rebase"), piece("bind"), piece("weak_bind"), piece("lazy_bind"), piece("exports")
                )
            )
        symoff, _ = piece("symtab")
        stroff, strsize = piece("strings")
        lcs.append(symtab_command(symoff, linkedit.nsyms, stroff, strsize))
        indoff, _ = piece("indirect")
        lcs.append(
            dysymtab_command(*linkedit.symtab_ranges, indoff if linkedit.nindirect else 0, linkedit.nindirect)
        )
        lcs.append(uuid_command(self.uuid))
        lcs.append(build_version_command(inputs.platform, inputs.minos, inputs.sdk))
        lcs.append(source_version_command(0))
        lcs.append(linkedit_data_command(C.LC_SEGMENT_SPLIT_INFO, *piece("split_seg")))
        for d in inputs.dylibs:
            lcs.append(
                dylib_command(
                    _DYLIB_COMMAND[d.mode],
                    d.iface.install_name,
                    2,
                    d.iface.current_version,
                    d.iface.compatibility_version,
                )
            )
        lcs.append(linkedit_data_command(C.LC_FUNCTION_STARTS, *piece("function_starts")))
        lcs.append(linkedit_data_command(C.LC_DATA_IN_CODE, *piece("data_in_code")))
        return len(lcs), b"".join(lcs)

    def finish(self, image: bytearray, linkedit: Linkedit) -> bytes:
        """The whole output: header and load commands over ``image``, then __LINKEDIT."""
        self.uuid = bytes(16)
        out = self._assemble(image, linkedit)
        digest = hashlib.sha256(self.inputs.install_name.encode() + b"\0" + out).digest()
        u = bytearray(digest[:16])
        u[6] = (u[6] & 0x0F) | 0x30
        u[8] = (u[8] & 0x3F) | 0x80
        self.uuid = bytes(u)
        return self._assemble(image, linkedit)

    def _assemble(self, image: bytearray, linkedit: Linkedit) -> bytes:
        ncmds, lcs = self.load_commands(linkedit)
        sections = self.layout.sections
        if sections and MACH_HEADER_SIZE + len(lcs) > sections[0].addr:
            raise LinkError("internal error: load commands outgrew the header space")
        header = struct.pack(
            "<7I4x",
            C.MH_MAGIC_64,
            self.arch.cputype,
            self.inputs.cpusubtype,
            C.MH_DYLIB,
            ncmds,
            len(lcs),
            self.header_flags(),
        )
        out = bytearray(image)
        out[0 : MACH_HEADER_SIZE + len(lcs)] = header + lcs
        return bytes(out) + linkedit.blob
