"""Stand-in definitions for a stub library (``dyldcache link -stub_library FILE.tbd``).

A .tbd lists what a dylib exports, not what its symbols are. To make a dylib that stands in
for the real one (a test root without the system's libraries, say), every listed symbol that no
input object defines gets a synthetic definition here:

- a function is one trap instruction (arm64 ``brk #1``, x86_64 ``ud2``): a call nobody planned
  for stops at once, at an address that names the symbol;
- data is :data:`STUB_DATA_SIZE` zeroed bytes in ``__DATA,__bss``. TAPI v3/v4 stubs do not say
  which plain symbols are data, so data is what the ABI names as data (ObjC classes and
  metaclasses, EH types and ivar offsets) plus the names the caller gives (``-stub_data_list``).

The definitions are written as one in-memory MH_OBJECT, which the linker then reads like any
other input: the stand-in goes through the same symbol resolution, layout, fixups, exports
trie and split seg info as a dylib linked from real objects. Thread-local symbols get no
definition (the linker has no TLV support), only a warning.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

from ..arch import Arch
from ..arch import arm64 as A64
from ..arch import x86_64 as X64
from ..macho import constants as C
from ..macho.file import MachOFile, parse_macho
from ..macho.format import MachHeader64
from ..macho.load_commands import SectionSpec, build_version_command, segment_command, symtab_command
from ..macho.symtab import StringPool, nlist_array
from .dylibs import DylibInterface

#: zeroed bytes behind each synthetic data symbol: room for an ObjC class_t (40 bytes), an ivar
#: offset or a few pointers. A client that reads a bigger object needs a real definition from an
#: input object.
STUB_DATA_SIZE = 64
#: symbol prefixes that the ObjC ABI reserves for data (classes, metaclasses, EH types, ivars)
OBJC_DATA_PREFIXES = ("_OBJC_CLASS_$_", "_OBJC_METACLASS_$_", "_OBJC_EHTYPE_$_", "_OBJC_IVAR_$_")
_DATA_ALIGN_LOG2 = 3


def trap_instruction(arch: Arch) -> bytes:
    """The bytes of one stand-in function."""
    return struct.pack("<I", A64.TRAP) if arch.is_arm64 else X64.TRAP


def stand_in_object(
    stub: DylibInterface,
    arch: Arch,
    platform: int,
    minos: int,
    sdk: int,
    defined: Collection[str],
    data_names: Collection[str],
) -> tuple[MachOFile, list[str]]:
    """An MH_OBJECT defining every symbol ``stub`` exports that is not in ``defined``, and the
    warnings making it gave."""
    functions: list[str] = []
    data: list[str] = []
    warnings: list[str] = []
    weak: set[str] = set()
    for name, kind in sorted(stub.exports.items()):
        if name in defined:
            continue
        if kind == "tlv":
            warnings.append(f"{stub.source}: thread-local {name} gets no stand-in definition")
            continue
        if kind == "weak":
            weak.add(name)
        if name in data_names or name.startswith(OBJC_DATA_PREFIXES):
            data.append(name)
        else:
            functions.append(name)
    unknown = sorted(set(data_names) - set(stub.exports) - set(defined))
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        warnings.append(f"{stub.source}: the stub does not list these data names: {shown}")

    trap = trap_instruction(arch)
    text_size = len(trap) * len(functions)
    text_align_log2 = (len(trap) - 1).bit_length()
    data_addr = -(-text_size // (1 << _DATA_ALIGN_LOG2)) << _DATA_ALIGN_LOG2
    # __TEXT,__text is there even when empty, as in every clang object (readers of the output
    # expect one)
    sections = [
        SectionSpec(
            "__TEXT",
            "__text",
            0,
            text_size,
            0,  # file offset, set below
            text_align_log2,
            C.S_REGULAR | C.S_ATTR_PURE_INSTRUCTIONS | C.S_ATTR_SOME_INSTRUCTIONS,
        )
    ]
    symbols = [(n, 1, i * len(trap)) for i, n in enumerate(functions)]  # (name, n_sect, address)
    if data:
        sections.append(
            SectionSpec(
                "__DATA", "__bss", data_addr, STUB_DATA_SIZE * len(data), 0, _DATA_ALIGN_LOG2, C.S_ZEROFILL
            )
        )
        symbols += [(n, 2, data_addr + i * STUB_DATA_SIZE) for i, n in enumerate(data)]
    vmsize = sections[-1].addr + sections[-1].size

    rwx = C.VM_PROT_READ | C.VM_PROT_WRITE | C.VM_PROT_EXECUTE  # what clang writes in objects

    def commands(text_off: int, symoff: int, stroff: int, strsize: int) -> bytes:
        sections[0].offset = text_off
        return (
            segment_command("", 0, vmsize, text_off, text_size, rwx, rwx, sections)
            + build_version_command(platform, minos, sdk)
            + symtab_command(symoff, len(symbols), stroff, strsize)
        )

    pool = StringPool()
    rows = [
        (
            pool.add(name),
            C.N_EXT | C.N_SECT,
            ordinal,
            C.N_WEAK_DEF if name in weak else 0,
            addr,
        )
        for name, ordinal, addr in symbols
    ]
    nlist = nlist_array(rows).tobytes()
    strings = pool.bytes()
    cmds_size = len(commands(0, 0, 0, 0))
    text_off = -(-(MachHeader64.SIZE + cmds_size) // 16) * 16
    symoff = -(-(text_off + text_size) // 8) * 8
    stroff = symoff + len(nlist)
    cmds = commands(text_off, symoff, stroff, len(strings))
    header = MachHeader64(C.MH_MAGIC_64, arch.cputype, arch.cpusubtype, C.MH_OBJECT, 3, len(cmds), 0).pack()
    raw = bytearray(stroff + len(strings))
    raw[: len(header) + len(cmds)] = header + cmds
    raw[text_off : text_off + text_size] = trap * len(functions)
    raw[symoff:stroff] = nlist
    raw[stroff:] = strings
    image = parse_macho(bytes(raw), f"<stand-in definitions for {stub.source}>")
    return image, warnings
