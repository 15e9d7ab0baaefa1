"""Remove unused LINKEDIT: each dylib's LINKEDIT is rebuilt in the cache with only what a cached
dylib keeps (its new symbol table, indirect symbols, rebuilt export trie, function starts and
data in code), and its mach header and load commands are rewritten for the cache
(``docs/cache-format.md`` §13; the seed's Adjustor::rebuildLinkEditAndLoadCommands).

Phase 3 places each dylib's pieces in the LINKEDIT region of the file it goes to (the nlist is
placed with the shared string pool by symbol_strings.py); phase 5 writes them, per dylib.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ...errors import BuildError
from ...macho import constants as C
from ...macho.format import (
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
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib, DylibLinkedit
from ..layout import Chunk, ChunkKind, RegionKind
from ..load_commands import DROPPED_COMMANDS, DYLIB_COMMANDS, dylib_command, dylib_command_names
from ..model import CacheModel
from ..rebuilt_exports import encode_exports, rebuilt_trie_nodes
from ..types import CacheFileOffset, InputFileOffset, InputVMAddr, moved_address, moved_file_offset
from .base import DylibResult, Optimizer


class RemoveUnusedLinkedit(Optimizer):
    name: ClassVar[str] = "Remove unused LINKEDIT"

    def place(self, model: CacheModel) -> None:
        """Each dylib's LINKEDIT goes with it, or all into the last file (regions <= 4 GiB)."""
        files = model.mapped_files()
        for sub in files:
            target = files[-1] if model.config.all_linkedit_in_last_subcache else sub
            le = target.region(RegionKind.LINKEDIT)
            for i in sub.dylibs:
                d = model.dylibs[i]
                d.linkedit = DylibLinkedit(le)
                sizes = {
                    # one entry per input entry (symbol_strings.py renumbers them)
                    "indirect": len(d.image.indirect_symbols) * 4,
                    "exports": d.input.exports_size_bound,
                    "function_starts": len(d.image.linkedit_data(C.LC_FUNCTION_STARTS) or b""),
                    "data_in_code": len(d.image.linkedit_data(C.LC_DATA_IN_CODE) or b""),
                }
                for name, size in sizes.items():
                    if size:
                        d.linkedit.pieces[name] = le.add(
                            Chunk(f"{d.install_name} {name}", ChunkKind.LINKEDIT_DYLIB, size, 8, d.index)
                        )

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        assert dylib.linkedit is not None and dylib.linkedit.pool is not None and dylib.text.chunk is not None
        with result.timed("linkedit and load commands"):
            trie = rebuilt_exports(dylib)
            write_linkedit(dylib, buffers.holding(dylib.linkedit.pool), trie)
            rewrite_load_commands(dylib, buffers.holding(dylib.text.chunk), len(trie), result.warnings)


def write_linkedit(dylib: CacheDylib, buf: np.ndarray, exports_trie: bytes) -> None:
    """Write the nlist (n_values slid), indirect table, export trie, function starts, data in code."""
    place = dylib.linkedit
    assert place is not None and place.symbols is not None
    symbols = place.symbols
    nlist = symbols.nlist()
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
    put("indirect", symbols.indirect().tobytes())
    symbols.release()  # each dylib's pass writes its LINKEDIT once
    put("exports", exports_trie)
    for name, cmd in (("function_starts", C.LC_FUNCTION_STARTS), ("data_in_code", C.LC_DATA_IN_CODE)):
        raw = dylib.image.linkedit_data(cmd)
        if raw is not None:
            put(name, bytes(raw))


def rewrite_load_commands(
    dylib: CacheDylib, text_buf: np.ndarray, exports_size: int, warnings: list[str]
) -> None:
    """Rewrite the copied mach header + load commands inside the dylib's __TEXT chunk."""
    image = dylib.image
    place = dylib.linkedit
    assert place is not None and place.symbols is not None and place.pool is not None
    symbols, pool = place.symbols, place.pool
    hdr_off = dylib.text.cache_fileoff
    old = bytes(text_buf[hdr_off : hdr_off + MachHeader64.SIZE + image.header.sizeofcmds])
    out = bytearray()
    ncmds = 0
    seg_iter = iter(dylib.segments)
    region = place.region
    pieces = place.pieces

    def piece(name: str) -> tuple[CacheFileOffset, int]:
        c = pieces.get(name)
        return (c.file_offset, c.size) if c is not None else (CacheFileOffset(0), 0)

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
                vmaddr, vmsize = region.vm_addr, region.vm_size
                fileoff, filesize = region.file_offset, region.file_size
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
            for k in range(sc.nsects):
                so = SegmentCommand64.SIZE + k * Section64.SIZE
                s = Section64.unpack_from(raw, so)
                addr = moved_address(InputVMAddr(s.addr), seg.input_vmaddr, vmaddr)
                offset = moved_file_offset(InputFileOffset(s.offset), seg.input_fileoff, fileoff)
                Section64(
                    s.sectname,
                    s.segname,
                    addr,
                    s.size,
                    offset if s.offset else 0,
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
            SymtabCommand(cmd, lc.size, off, symbols.nlist_count, pool.file_offset, pool.size).pack_into(
                raw, 0
            )
        elif cmd == C.LC_DYSYMTAB:
            ind_off, _ = piece("indirect")
            nind = symbols.indirect_count
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
            new_init = dylib.cache_address(InputVMAddr(r.init_address))
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


def rebuilt_exports(dylib: CacheDylib) -> bytes:
    """The dylib's export trie with offsets of moved segments adjusted, padded to 8 bytes."""
    table = dylib.exports
    stored = dylib.input.exports_trie_nodes
    if stored is None:
        nodes = rebuilt_trie_nodes(table)
    else:
        nodes = stored.load()
        stored.release()  # read once, by this dylib's pass
    return encode_exports(table, nodes, export_moves(dylib, table.address))


def export_moves(dylib: CacheDylib, offsets: np.ndarray) -> np.ndarray:
    """Per offset from the mach header (uint64): how far the segment holding it moved relative
    to __TEXT (int64; 0 outside every segment, and in __LINKEDIT, which is not copied)."""
    base = dylib.image.base_address
    text_slide = dylib.text.slide
    # the address in the input (none past 64 bits: such an offset is in no segment)
    addr = offsets + np.uint64(base)
    valid = addr >= offsets
    moves = np.zeros(offsets.size, dtype=np.int64)
    # the first segment (in order) that holds an address decides: fill them in reverse
    for seg in reversed(dylib.segments):
        start = np.uint64(seg.input_vmaddr)
        inside = valid & (addr >= start) & (addr - start < np.uint64(seg.input.vmsize))
        moves[inside] = seg.slide - text_slide if seg.chunk is not None else 0
    return moves
