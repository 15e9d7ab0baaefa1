"""Per-dylib emission: copy the segments, write the dylib's LINKEDIT pieces, and rewrite its
mach header and load commands for the cache (``docs/cache-format.md`` §13).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..errors import BuildError
from ..macho import constants as C
from ..macho.format import (
    DyldInfoCommand,
    DylibCommand,
    DysymtabCommand,
    LinkeditDataCommand,
    MachHeader64,
    RoutinesCommand64,
    Section64,
    SegmentCommand64,
    SymtabCommand,
)
from .cache_dylib import CacheDylib
from .layout import Chunk, Region
from .linkedit import DylibSymbols
from .load_commands import DROPPED_COMMANDS, DYLIB_COMMANDS, dylib_command, dylib_command_names


def copy_segments(dylib: CacheDylib, buf: np.ndarray) -> None:
    """Copy every segment's bytes into its chunk; the rest of a chunk is zero (zerofill)."""
    src = np.frombuffer(dylib.input.mapped.data, dtype=np.uint8)
    base = dylib.image.file_offset
    for seg in dylib.segments:
        if seg.chunk is None or seg.copy_size == 0:
            continue
        start = base + seg.input.fileoff
        if start + seg.copy_size > len(src):
            raise BuildError(f"{dylib.install_name}: segment {seg.name} extends past the end of the file")
        dst = seg.chunk.file_offset
        buf[dst : dst + seg.copy_size] = src[start : start + seg.copy_size]


@dataclass(slots=True)
class LinkeditPlacement:
    """Where a dylib's LINKEDIT lives: the region, its pieces, and the shared string pool."""

    region: Region
    pieces: dict[str, Chunk]
    pool: Chunk


def write_linkedit(
    dylib: CacheDylib, buf: np.ndarray, place: LinkeditPlacement, symbols: DylibSymbols, exports_trie: bytes
) -> None:
    """Write the nlist (n_values slid), indirect table, export trie, function starts, data in code."""
    nlist = symbols.nlist.copy()
    # N_SECT symbols move with their segment (stabs and N_ABS do not)
    sect_syms = ((nlist["n_type"] & C.N_STAB) == 0) & ((nlist["n_type"] & C.N_TYPE) == C.N_SECT)
    if np.any(sect_syms):
        nlist["n_value"][sect_syms] = dylib.cache_addresses(nlist["n_value"][sect_syms])
    pieces = place.pieces

    def put(name: str, raw: bytes) -> None:
        chunk = pieces.get(name)
        if chunk is None:
            if raw:
                raise BuildError(f"internal: {dylib.install_name} has no room for its {name}")
            return
        if len(raw) > chunk.size:
            raise BuildError(
                f"internal: {dylib.install_name} {name} ({len(raw)} bytes) outgrew its chunk ({chunk.size})"
            )
        buf[chunk.file_offset : chunk.file_offset + len(raw)] = np.frombuffer(raw, dtype=np.uint8)

    put("nlist", nlist.tobytes())
    put("indirect", symbols.indirect.tobytes())
    put("exports", exports_trie)
    for name, cmd in (("function_starts", C.LC_FUNCTION_STARTS), ("data_in_code", C.LC_DATA_IN_CODE)):
        raw = dylib.image.linkedit_data(cmd)
        if raw is not None:
            put(name, bytes(raw))


def rewrite_load_commands(
    dylib: CacheDylib,
    text_buf: np.ndarray,
    place: LinkeditPlacement,
    symbols: DylibSymbols,
    exports_size: int,
    warnings: list[str],
) -> None:
    """Rewrite the copied mach header + load commands inside the dylib's __TEXT chunk."""
    image = dylib.image
    hdr_off = dylib.text.chunk.file_offset if dylib.text.chunk is not None else 0
    old = bytes(text_buf[hdr_off : hdr_off + MachHeader64.SIZE + image.header.sizeofcmds])
    out = bytearray()
    ncmds = 0
    seg_iter = iter(dylib.segments)
    region = place.region
    pieces = place.pieces

    def piece(name: str) -> tuple[int, int]:
        c = pieces.get(name)
        return (c.file_offset, c.size) if c is not None else (0, 0)

    ci = dylib.input
    refs = iter([image.id_dylib, *image.dylibs] if image.id_dylib is not None else image.dylibs)
    loads = ci.load_names or [d.path for d in image.dylibs]
    names = iter(dylib_command_names(image, dylib.install_name, loads))
    for lc in image.load_commands:
        raw = bytearray(old[lc.offset - image.header_offset : lc.offset - image.header_offset + lc.size])
        cmd = lc.cmd
        if cmd in DROPPED_COMMANDS:
            # (an LC_RPATH that served @rpath loads did its work when the builder resolved them)
            if cmd == C.LC_RPATH and not ci.rpaths_resolved:
                warnings.append(f"dyld shared cache does not support LC_RPATH found in {dylib.install_name}")
            continue
        if cmd in DYLIB_COMMANDS:
            name, ref = next(names), next(refs)
            d = DylibCommand.unpack_from(raw, 0)
            if cmd == C.LC_ID_DYLIB:
                # timestamp 2, as the static linker sets in LC_LOAD_DYLIB
                d = dataclasses.replace(d, timestamp=2)
                d.pack_into(raw, 0)
            if name != ref.path:  # made absolute or renamed (builder/install_names.py)
                raw = bytearray(dylib_command(d, name))
            out += raw
            ncmds += 1
            continue
        if cmd == C.LC_SEGMENT_64:
            seg = next(seg_iter)
            sc = SegmentCommand64.unpack_from(raw, 0)
            if seg.chunk is None:  # __LINKEDIT: the whole LINKEDIT region of the file holding it
                vmaddr, vmsize, fileoff, filesize = (
                    region.vm_addr,
                    region.vm_size,
                    region.file_offset,
                    region.file_size,
                )
            else:
                vmaddr, vmsize = seg.chunk.vm_addr, seg.cache_size
                fileoff, filesize = seg.chunk.file_offset, seg.cache_size
            SegmentCommand64(
                sc.cmd,
                sc.cmdsize,
                sc.segname,
                vmaddr,
                vmsize,
                fileoff,
                filesize,
                sc.maxprot,
                sc.initprot,
                sc.nsects,
                sc.flags,
            ).pack_into(raw, 0)
            slide = vmaddr - seg.input.vmaddr
            file_delta = fileoff - seg.input.fileoff
            for k in range(sc.nsects):
                so = SegmentCommand64.SIZE + k * Section64.SIZE
                s = Section64.unpack_from(raw, so)
                Section64(
                    s.sectname,
                    s.segname,
                    s.addr + slide,
                    s.size,
                    s.offset + file_delta if s.offset else 0,
                    s.align,
                    0,
                    0,
                    s.flags,
                    s.reserved1,
                    s.reserved2,
                    s.reserved3,
                ).pack_into(raw, so)
        elif cmd == C.LC_SYMTAB:
            off, _ = piece("nlist")
            SymtabCommand(
                cmd, lc.size, off, len(symbols.nlist), place.pool.file_offset, place.pool.size
            ).pack_into(raw, 0)
        elif cmd == C.LC_DYSYMTAB:
            ind_off, _ = piece("indirect")
            nind = len(symbols.indirect)
            loc, glob, und = symbols.locals_count, symbols.globals_count, symbols.undefs_count
            DysymtabCommand(
                cmd,
                lc.size,
                0,
                loc,
                loc,
                glob,
                loc + glob,
                und,
                0,
                0,
                0,
                0,
                0,
                0,
                ind_off if nind else 0,
                nind,
                0,
                0,
                0,
                0,
            ).pack_into(raw, 0)
        elif cmd in (C.LC_DYLD_INFO, C.LC_DYLD_INFO_ONLY):
            eo, _ = piece("exports")
            DyldInfoCommand(
                cmd, lc.size, 0, 0, 0, 0, 0, 0, 0, 0, eo if exports_size else 0, exports_size
            ).pack_into(raw, 0)
        elif cmd == C.LC_DYLD_EXPORTS_TRIE:
            eo, _ = piece("exports")
            LinkeditDataCommand(cmd, lc.size, eo if exports_size else 0, exports_size).pack_into(raw, 0)
        elif cmd in (C.LC_FUNCTION_STARTS, C.LC_DATA_IN_CODE):
            name = "function_starts" if cmd == C.LC_FUNCTION_STARTS else "data_in_code"
            off, _ = piece(name)
            ld = LinkeditDataCommand.unpack_from(raw, 0)
            LinkeditDataCommand(cmd, lc.size, off if ld.datasize else 0, ld.datasize).pack_into(raw, 0)
        elif cmd == C.LC_ROUTINES_64:
            r = RoutinesCommand64.unpack_from(raw, 0)
            new_init = int(dylib.cache_addresses(np.array([r.init_address], dtype=np.uint64))[0])
            dataclasses.replace(r, init_address=new_init).pack_into(raw, 0)
        out += raw
        ncmds += 1
    h = image.header
    new_header = MachHeader64(
        h.magic, h.cputype, h.cpusubtype, h.filetype, ncmds, len(out), h.flags | C.MH_DYLIB_IN_CACHE
    ).pack()
    region_end = hdr_off + MachHeader64.SIZE + h.sizeofcmds
    text_buf[hdr_off:region_end] = 0
    blob = new_header + bytes(out)
    text_buf[hdr_off : hdr_off + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
