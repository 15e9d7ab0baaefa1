"""``dyldcache extract CACHE OUTDIR [PATH...]``: cache images as standalone dylibs.

What dyld-1162's ``dsc_extractor`` does (``other-tools/dsc_extractor.cpp``), plus the slide:

- every segment but __LINKEDIT is copied from the cache and packed into one file; segments keep
  their cache VM addresses, and their file offsets are rewritten (each one congruent to its
  address modulo :data:`SEGMENT_FILE_ALIGN`, the mach header's segment at offset 0);
- pointers are written as the plain unslid values the cache's slide info gives them (target,
  with its high8 top byte for plain pointers; arm64e authenticated pointers lose their PAC
  data), so no slide-info chain encoding is left in the file;
- __LINKEDIT is rebuilt from the image's own parts of the cache's shared LINKEDIT: export trie,
  function starts, data in code, symbol table and indirect symbol table, with a string pool of
  only the names it uses. The unmapped locals of the ``.symbols`` file replace the mapped
  symbol table's locals (the builder leaves ``<redacted>`` stand-ins there), and the indirect
  symbol table is re-indexed to match;
- MH_DYLIB_IN_CACHE is cleared; load commands whose data has no meaning outside the cache
  (split seg info, code signature, chained fixups) are removed, and LC_DYLD_INFO keeps only its
  export trie (the cache builder already emptied its rebase and bind opcodes).

Unlike ``dsc_extractor`` the export trie is kept (``dsc_extractor`` drops it: "lldb only uses
symbol table"), so that the extracted dylib still tells what it exports. An extracted dylib has
no rebase information: it runs only at its cache addresses.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CacheFormatError
from ..fileio import OutputError, write_atomically
from ..macho import constants as C
from ..macho.file import MachOFile, Segment
from ..macho.format import (
    DyldInfoCommand,
    DysymtabCommand,
    LinkeditDataCommand,
    MachHeader64,
    Section64,
    SegmentCommand64,
    SymtabCommand,
)
from ..names import printable
from ..report import add_json_option, print_json
from .reader import CacheFile, DyldCache, Mapping
from .symtab import REDACTED, CacheSymtabs

#: a segment's file offset is congruent to its VM address modulo this (the 4 KiB page), so that
#: the file could be mapped page by page
SEGMENT_FILE_ALIGN = 0x1000
#: every LINKEDIT piece starts at a multiple of the pointer size
LINKEDIT_ALIGN = 8
#: __LINKEDIT's vmsize is its file size rounded up to this, as dsc_extractor does
LINKEDIT_VM_ALIGN = 0x1000
#: load commands dropped: their data describes the image as it was linked, or the cache's signature
DROPPED_COMMANDS = frozenset(
    {C.LC_SEGMENT_SPLIT_INFO, C.LC_CODE_SIGNATURE, C.LC_DYLD_CHAINED_FIXUPS, C.LC_DYLIB_CODE_SIGN_DRS}
)
_SPECIAL_INDIRECT = C.INDIRECT_SYMBOL_LOCAL | C.INDIRECT_SYMBOL_ABS
_U64 = np.uint64


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class Extracted:
    """One image written by :func:`extract`."""

    image: str
    file: str
    size: int


class _Linkedit:
    """The new __LINKEDIT: pieces appended at pointer-aligned offsets."""

    def __init__(self, fileoff: int) -> None:
        self.fileoff = fileoff
        self.data = bytearray()

    def put(self, piece: bytes | memoryview) -> int:
        """Append ``piece``; returns its file offset (0 for an empty piece, as linkers write)."""
        if not len(piece):
            return 0
        self.data += bytes(-len(self.data) % LINKEDIT_ALIGN)
        at = self.fileoff + len(self.data)
        self.data += piece
        return at


@dataclass(slots=True)
class _Symtab:
    """The rebuilt symbol table, ready to be placed."""

    nlist: np.ndarray
    strings: bytes
    indirect: np.ndarray
    #: old index -> new index shift of the non-local symbols, and the new local count
    shift: int
    nlocal: int | None
    #: a "<redacted>" undefined symbol was appended for the indirect entries the cache emptied
    redacted: bool = False


class Extractor:
    """Turns images of one open cache into standalone Mach-O files."""

    def __init__(self, cache: DyldCache) -> None:
        self.cache = cache
        self.symtabs = CacheSymtabs(cache)
        self._pointers: dict[tuple[str, int], np.ndarray | None] = {}

    # -- segments ---------------------------------------------------------------------------------

    def _mapping_pointers(self, f: CacheFile, m: Mapping) -> np.ndarray | None:
        """Every chain link of the mapping's slide info (null links included), decoded once."""
        key = (f.path, m.index)
        if key not in self._pointers:
            found = f.slide_info(m.index, null_links=True)
            self._pointers[key] = None if found is None else found[1]
        return self._pointers[key]

    def segment_bytes(self, name: str, seg: Segment) -> bytearray:
        """The segment's file bytes, every slid pointer written as its plain unslid value."""
        if not seg.filesize:
            return bytearray()
        found = self.cache.mapping_for(seg.vmaddr)
        if found is None or seg.vmaddr + seg.filesize > found[1].end:
            raise CacheFormatError(
                self.cache.path,
                None,
                f"{name}: segment {seg.name} ({seg.vmaddr:#x}+{seg.filesize:#x}) is not inside one mapping",
            )
        f, m = found
        data = bytearray(self.cache.read(seg.vmaddr, seg.filesize))
        pointers = self._mapping_pointers(f, m)
        if pointers is not None and pointers.size:
            lo = seg.vmaddr - m.address
            off = pointers["offset"]
            inside = pointers[(off >= _U64(lo)) & (off + _U64(8) <= _U64(lo + seg.filesize))]
            if inside.size:
                values = inside["target"] | (inside["high8"].astype(_U64) << _U64(56))
                where = (inside["offset"] - _U64(lo)).astype(np.int64)
                out = np.frombuffer(data, dtype=np.uint8)
                out[where[:, None] + np.arange(8)] = values.astype("<u8").view(np.uint8).reshape(-1, 8)
        return data

    # -- symbol table -----------------------------------------------------------------------------

    def _symtab(self, index: int, image: MachOFile) -> _Symtab | None:
        mapped = self.symtabs.mapped(index, image)
        if mapped is None:
            return None
        dy = image.dysymtab_command
        locals_ = self.symtabs.unmapped_locals(index)
        parts = [mapped]
        shift, nlocal = 0, None
        if dy is not None and locals_ is not None and locals_.nlist.size:
            if dy.iextdefsym > mapped.nlist.size:
                raise CacheFormatError(
                    self.cache.path,
                    None,
                    f"{image.path}: LC_DYSYMTAB iextdefsym {dy.iextdefsym} is past the symbols",
                )
            # dsc_extractor's rule: the unmapped locals, then the mapped table from its first extern
            rest = dataclasses.replace(mapped, nlist=mapped.nlist[dy.iextdefsym :])
            parts = [locals_, rest]
            nlocal = int(locals_.nlist.size)
            shift = nlocal - dy.iextdefsym
        pool = bytearray(b"\0")
        tables = []
        for part in parts:
            body, strx = part.strings.compact(part.nlist["n_strx"], len(pool))
            table = np.array(part.nlist, dtype=part.nlist.dtype)
            table["n_strx"] = strx
            tables.append(table)
            pool += body
        original = np.array(image.indirect_symbols, dtype=np.uint32)
        indirect = original
        if nlocal is not None and dy is not None and indirect.size:
            special = (indirect & np.uint32(_SPECIAL_INDIRECT)) != 0
            was_local = indirect < np.uint32(dy.iextdefsym)
            moved = (indirect.astype(np.int64) + shift).astype(np.uint32)
            # an entry naming a mapped local has no counterpart among the unmapped ones
            indirect = np.where(
                special, indirect, np.where(was_local, np.uint32(C.INDIRECT_SYMBOL_LOCAL), moved)
            )
        # The cache builder points an indirect entry whose symbol it dropped (an import of a
        # stub it bypassed, say) at symbol 0 (dyld-1162 NewSharedCacheBuilder.cpp, as ours): give
        # those entries a "<redacted>" import of their own rather than symbol 0's name, as
        # DyldExtractor does
        dropped = original == 0
        if dropped.any():
            stand_in = np.zeros(1, dtype=tables[0].dtype)
            stand_in["n_strx"] = len(pool)
            stand_in["n_type"] = C.N_EXT  # undefined, external
            pool += REDACTED.encode() + b"\0"
            tables.append(stand_in)
            indirect = np.where(dropped, np.uint32(sum(t.size for t in tables) - 1), indirect)
        pool += bytes(-len(pool) % LINKEDIT_ALIGN)
        return _Symtab(
            np.concatenate(tables), bytes(pool), indirect.astype("<u4"), shift, nlocal, bool(dropped.any())
        )

    # -- the whole image --------------------------------------------------------------------------

    def image_bytes(self, index: int) -> bytes:
        """Image ``index`` as a standalone Mach-O file."""
        cache = self.cache
        img = cache.images[index]
        image = cache.image_macho(index)
        name = image.path
        linkedit_seg = image.segment("__LINKEDIT")
        if linkedit_seg is None:
            raise CacheFormatError(cache.path, None, f"{name}: no __LINKEDIT segment")
        header_seg = next((s for s in image.segments if s.vmaddr == img.address and s.filesize), None)
        if header_seg is None:
            raise CacheFormatError(
                cache.path, None, f"{name}: no segment starts at the mach header {img.address:#x}"
            )
        order = [header_seg] + [s for s in image.segments if s is not header_seg and s is not linkedit_seg]
        # file layout of the copied segments
        fileoffs: dict[int, int] = {}
        contents: list[tuple[int, bytearray]] = []
        cursor = 0
        for seg in order:
            data = self.segment_bytes(name, seg)
            at = 0 if seg is header_seg else cursor + (seg.vmaddr - cursor) % SEGMENT_FILE_ALIGN
            fileoffs[seg.index] = at
            contents.append((at, data))
            cursor = max(cursor, at + len(data))
        le = _Linkedit(_align(cursor, SEGMENT_FILE_ALIGN) + linkedit_seg.vmaddr % SEGMENT_FILE_ALIGN)
        header = contents[0][1]
        commands = self._rewrite_commands(index, image, header, fileoffs, le, linkedit_seg)
        # the new load commands go back into the header segment's copy
        end = MachHeader64.SIZE + image.header.sizeofcmds
        if len(header) < end:
            raise CacheFormatError(cache.path, None, f"{name}: load commands run past the header segment")
        mh = MachHeader64.unpack_from(header, 0)
        raw = b"".join(commands)
        mh = dataclasses.replace(
            mh, ncmds=len(commands), sizeofcmds=len(raw), flags=mh.flags & ~C.MH_DYLIB_IN_CACHE
        )
        header[: MachHeader64.SIZE] = mh.pack()
        header[MachHeader64.SIZE : end] = raw.ljust(end - MachHeader64.SIZE, b"\0")
        out = bytearray(le.fileoff + len(le.data))
        for at, data in contents:
            out[at : at + len(data)] = data
        out[le.fileoff :] = le.data
        return bytes(out)

    def _rewrite_commands(
        self,
        index: int,
        image: MachOFile,
        header: bytearray,
        fileoffs: dict[int, int],
        le: _Linkedit,
        linkedit_seg: Segment,
    ) -> list[bytes]:
        """Every kept load command, rewritten for the new file; fills ``le`` on the way."""
        h0 = image.header_offset
        kept: list[tuple[int, bytearray]] = []
        for lc in image.load_commands:
            if lc.cmd not in DROPPED_COMMANDS:
                kept.append((lc.cmd, bytearray(header[lc.offset - h0 : lc.offset - h0 + lc.size])))
        # LINKEDIT pieces in the order ld64 writes them: dyld info, function starts, data in code,
        # other linkedit data, symbols, indirect symbols, strings
        trie = image.exports_trie_bytes()
        trie_at = le.put(trie[0]) if trie is not None else 0
        trie_size = len(trie[0]) if trie is not None else 0
        moved: dict[int, int] = {}
        order = [C.LC_FUNCTION_STARTS, C.LC_DATA_IN_CODE]
        others = [cmd for cmd, _ in kept if cmd in C.LINKEDIT_DATA_COMMANDS and cmd not in order]
        for cmd in order + others:
            if cmd == C.LC_DYLD_EXPORTS_TRIE:
                continue
            payload = image.linkedit_data(cmd)
            if payload is not None:
                moved[cmd] = le.put(payload)
        symtab = self._symtab(index, image)
        sym_at = ind_at = str_at = 0
        if symtab is not None:
            sym_at = le.put(symtab.nlist.tobytes())
            ind_at = le.put(symtab.indirect.tobytes())
            str_at = le.put(symtab.strings)
        out = []
        segments = iter(image.segments)  # the n-th LC_SEGMENT_64 is image.segments[n]
        for cmd, raw in kept:
            if cmd == C.LC_SEGMENT_64:
                seg = next(segments)
                if seg is linkedit_seg:
                    raw = self._segment_command(raw, 0, le)
                else:
                    raw = self._segment_command(raw, fileoffs[seg.index], None)
            elif cmd == C.LC_SYMTAB and symtab is not None:
                st = SymtabCommand.unpack_from(raw)
                st = dataclasses.replace(
                    st,
                    symoff=sym_at,
                    nsyms=int(symtab.nlist.size),
                    stroff=str_at,
                    strsize=len(symtab.strings),
                )
                raw = bytearray(st.pack()) + raw[SymtabCommand.SIZE :]
            elif cmd == C.LC_DYSYMTAB and symtab is not None:
                raw = self._dysymtab_command(raw, symtab, ind_at)
            elif cmd in (C.LC_DYLD_INFO, C.LC_DYLD_INFO_ONLY):
                di = DyldInfoCommand.unpack_from(raw)
                # rebase and bind opcodes are gone from a cache dylib (every pointer is final); the
                # export trie is the one piece left, when this command carried it
                export = (trie_at, trie_size) if di.export_size else (0, 0)
                di = DyldInfoCommand(di.cmd, di.cmdsize, 0, 0, 0, 0, 0, 0, 0, 0, *export)
                raw = bytearray(di.pack()) + raw[DyldInfoCommand.SIZE :]
            elif cmd in C.LINKEDIT_DATA_COMMANDS:
                ld = LinkeditDataCommand.unpack_from(raw)
                if cmd == C.LC_DYLD_EXPORTS_TRIE:
                    ld = dataclasses.replace(ld, dataoff=trie_at, datasize=trie_size)
                else:
                    ld = dataclasses.replace(ld, dataoff=moved.get(cmd, 0) if ld.datasize else 0)
                raw = bytearray(ld.pack()) + raw[LinkeditDataCommand.SIZE :]
            out.append(bytes(raw))
        return out

    @staticmethod
    def _segment_command(raw: bytearray, fileoff: int, le: _Linkedit | None) -> bytearray:
        """One LC_SEGMENT_64 at its new file offset (``le`` for __LINKEDIT), its sections with it."""
        seg = SegmentCommand64.unpack_from(raw)
        if le is not None:
            size = len(le.data)
            seg = dataclasses.replace(
                seg, fileoff=le.fileoff, filesize=size, vmsize=_align(size, LINKEDIT_VM_ALIGN)
            )
        else:
            seg = dataclasses.replace(seg, fileoff=fileoff if seg.filesize else 0)
        raw[: SegmentCommand64.SIZE] = seg.pack()
        for k in range(seg.nsects):
            at = SegmentCommand64.SIZE + k * Section64.SIZE
            sect = Section64.unpack_from(raw, at)
            # as dsc_extractor: a section without file bytes (offset 0) keeps offset 0
            offset = fileoff + (sect.addr - seg.vmaddr) if sect.offset else 0
            raw[at : at + Section64.SIZE] = dataclasses.replace(
                sect, offset=offset, reloff=0, nreloc=0
            ).pack()
        return raw

    @staticmethod
    def _dysymtab_command(raw: bytearray, symtab: _Symtab, indirect_at: int) -> bytearray:
        dy = DysymtabCommand.unpack_from(raw)
        if symtab.nlocal is not None:
            dy = dataclasses.replace(
                dy,
                ilocalsym=0,
                nlocalsym=symtab.nlocal,
                iextdefsym=dy.iextdefsym + symtab.shift,
                iundefsym=dy.iundefsym + symtab.shift,
            )
        if symtab.redacted and dy.iundefsym + dy.nundefsym == symtab.nlist.size - 1:
            dy = dataclasses.replace(dy, nundefsym=dy.nundefsym + 1)  # the stand-in is an import too
        # no table of contents, module table, external references or relocations in a dylib of
        # the cache: every pointer is final
        dy = dataclasses.replace(
            dy,
            tocoff=0,
            ntoc=0,
            modtaboff=0,
            nmodtab=0,
            extrefsymoff=0,
            nextrefsyms=0,
            indirectsymoff=indirect_at if symtab.indirect.size else 0,
            nindirectsyms=int(symtab.indirect.size),
            extreloff=0,
            nextrel=0,
            locreloff=0,
            nlocrel=0,
        )
        raw[: DysymtabCommand.SIZE] = dy.pack()
        return raw


# ---------------------------------------------------------------------------------------------
# the command


def output_path(outdir: str, install_name: str, cache_path: str) -> str:
    """Where ``install_name`` goes under ``outdir``; CacheFormatError if it would leave it."""
    rel = os.path.normpath(install_name.lstrip("/"))
    if not install_name or rel.startswith("..") or os.path.isabs(rel) or rel == ".":
        raise CacheFormatError(
            cache_path, None, f"image path '{printable(install_name)}' would leave the output folder"
        )
    return os.path.join(outdir, rel)


def extract(cache_path: str, outdir: str, names: list[str] | None = None) -> list[Extracted]:
    """Write images of the cache (all, or those ``names`` name) under ``outdir``, each at its
    install path; returns what was written, in image order."""
    with DyldCache.open(cache_path) as cache:
        indexes = sorted({cache.find_image(n) for n in names}) if names else range(len(cache.images))
        targets = [(i, output_path(outdir, cache.images[i].path, cache.path)) for i in indexes]
        extractor = Extractor(cache)
        done = []
        for i, target in targets:
            data = extractor.image_bytes(i)
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
            except OSError as exc:
                raise OutputError.from_os_error(target, exc) from None
            write_atomically(target, data)
            done.append(Extracted(cache.images[i].path, target, len(data)))
        return done


def _run(args: argparse.Namespace) -> int:
    done = extract(args.cache, args.outdir, args.path or None)
    if args.json:
        doc: dict[str, Any] = {"outdir": args.outdir, "images": [dataclasses.asdict(e) for e in done]}
        print_json(doc)
    else:
        sys.stdout.write(f"extracted {len(done)} image{'s' if len(done) != 1 else ''} into {args.outdir}\n")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "extract", help="write cache images as standalone dylibs, as dsc_extractor does"
    )
    p.add_argument("cache", help="the main cache file")
    p.add_argument("outdir", help="folder to write into (each image at its install path under it)")
    p.add_argument(
        "path", nargs="*", help="images to extract (install name, alias or file name; default: all)"
    )
    add_json_option(p)
    p.set_defaults(func=_run)
