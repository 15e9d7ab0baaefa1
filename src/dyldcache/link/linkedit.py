"""Phase 7 of a link: ``__LINKEDIT``. Its pieces, in ld64's order and each 8-byte aligned: the
fixups (chained fixups, or rebase/bind/weak-bind/lazy-bind opcodes), the exports trie, split seg
info (v2, or v1 for x86_64), function starts, data in code, the symbol table, the indirect
symbol table and the string table."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from ..arch import Arch
from ..errors import LinkError
from ..macho import constants as C
from ..macho.bind_opcodes import BindEntry, encode_bind_opcodes, encode_weak_bind_opcodes
from ..macho.chained_fixups import ChainedSegment, encode_chained_fixups
from ..macho.exports_trie import Export, write_exports
from ..macho.fixups import FixupKind
from ..macho.function_starts import write_function_starts
from ..macho.rebase_opcodes import encode_rebase_opcodes
from ..macho.split_seg import SPLIT_SEG_DTYPE, SPLIT_SEG_V1_DTYPE, encode_split_seg_v1, encode_split_seg_v2
from .model import SymKind
from .pointer_fixups import FixupRecorder
from .resolution import Symbols
from .sections import OutputSections
from .symbol_table import symbol_tables
from .synthetic import SyntheticSections
from .unwind_section import UnwindSection

LINKEDIT_ALIGN = 8


@dataclass(slots=True)
class Linkedit:
    """The bytes of __LINKEDIT and where each piece is (file offset, size), by piece name."""

    blob: bytes = b""
    pieces: dict[str, tuple[int, int]] = field(default_factory=dict)
    nsyms: int = 0
    nindirect: int = 0
    #: LC_DYSYMTAB symbol ranges
    symtab_ranges: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)

    def piece(self, name: str) -> tuple[int, int]:
        return self.pieces.get(name, (0, 0))


def build_linkedit(
    arch: Arch,
    chained: bool,
    split_seg_version: int,
    symbols: Symbols,
    layout: OutputSections,
    synthetic: SyntheticSections,
    unwind: UnwindSection,
    fixups: FixupRecorder,
    image: bytearray,
) -> Linkedit:
    """Encode every piece, place them after the laid-out segments and size __LINKEDIT."""
    pieces: list[tuple[str, bytes]] = []
    records = fixups.records()
    if chained:
        segments = [ChainedSegment(g.vmaddr, g.vmsize, g.fileoff) for g in layout.segments]
        blob = encode_chained_fixups(
            segments=segments,
            records=records,
            imports=fixups.imports,
            pointer_format=arch.chained_pointer_format,
            page_size=arch.chained_page_size,
            image=memoryview(image),
            base_address=0,
        )
        pieces.append(("chained", blob))
    else:
        pieces += _opcodes(records, fixups, layout)
        pieces.append(("lazy_bind", synthetic.lazy_bind_stream))
    pieces.append(("exports", _exports_trie(symbols, layout)))
    split = np.zeros(0, SPLIT_SEG_DTYPE)
    if fixups.split:
        split = np.array(sorted(fixups.split), dtype=SPLIT_SEG_DTYPE)
    if split_seg_version == 1:
        pieces.append(("split_seg", encode_split_seg_v1(_split_seg_v1(split, layout))))
    else:
        pieces.append(("split_seg", encode_split_seg_v2(split)))
    pieces.append(("function_starts", write_function_starts(_function_starts(symbols, layout, unwind), 0)))
    pieces.append(("data_in_code", _data_in_code(symbols)))
    tables = symbol_tables(symbols, layout, synthetic)
    pieces.append(("symtab", tables.nlist.tobytes()))
    pieces.append(("indirect", tables.indirect.tobytes() + bytes(-len(tables.indirect.tobytes()) % 8)))
    pieces.append(("strings", tables.strings))
    off = layout.linkedit_fileoff
    out = Linkedit(nsyms=len(tables.nlist), nindirect=len(tables.indirect), symtab_ranges=tables.ranges)
    blob_parts = bytearray()
    for name, raw in pieces:
        pad = -len(blob_parts) % LINKEDIT_ALIGN
        blob_parts += bytes(pad)
        out.pieces[name] = (off + len(blob_parts), len(raw))
        blob_parts += raw
    out.blob = bytes(blob_parts)
    g = layout.segments[-1]
    g.vmaddr, g.fileoff = layout.linkedit_vmaddr, layout.linkedit_fileoff
    g.filesize = len(out.blob)
    g.vmsize = -(-len(out.blob) // arch.segment_alignment) * arch.segment_alignment
    return out


def _opcodes(records: np.ndarray, fixups: FixupRecorder, layout: OutputSections) -> list[tuple[str, bytes]]:
    """The rebase, bind and weak-bind opcode streams of the fixups."""
    imports = fixups.imports
    seg_starts = [g.vmaddr for g in layout.segments]
    rebases = [
        (int(r["segment"]), int(r["address"]) - seg_starts[int(r["segment"])], C.REBASE_TYPE_POINTER)
        for r in records
        if r["kind"] == FixupKind.REBASE
    ]
    binds = [
        BindEntry(
            int(r["segment"]),
            int(r["address"]) - seg_starts[int(r["segment"])],
            C.BIND_TYPE_POINTER,
            imports[int(r["bind"])].ordinal,
            imports[int(r["bind"])].name,
            C.BIND_SYMBOL_FLAGS_WEAK_IMPORT if imports[int(r["bind"])].weak else 0,
            int(r["addend"]),
        )
        for r in records
        if r["kind"] == FixupKind.BIND
    ]
    segs = [(g.vmaddr, g.vmsize) for g in layout.segments]
    weak = (
        encode_weak_bind_opcodes(sorted(fixups.weak_binds, key=lambda w: w.name), segs)
        if fixups.weak_binds
        else b""
    )
    return [
        ("rebase", encode_rebase_opcodes(rebases)),
        ("bind", encode_bind_opcodes(binds)),
        ("weak_bind", weak),
    ]


def _split_seg_v1(split: np.ndarray, layout: OutputSections) -> np.ndarray:
    """v1 lists the values in __TEXT that refer to another segment (they move with the data)."""
    sections = {s.index: s for s in layout.sections}
    rows = []
    for kind, from_sect, to_sect, from_off, _to_off in split.tolist():
        src, dst = sections[from_sect], sections.get(to_sect)
        if src.segname != "__TEXT" or dst is None or dst.segname == "__TEXT":
            continue
        if kind in (C.DYLD_CACHE_ADJ_V2_DELTA_32, C.DYLD_CACHE_ADJ_V2_IMAGE_OFF_32):
            rows.append((1, src.addr + from_off))
        elif kind == C.DYLD_CACHE_ADJ_V2_DELTA_64:
            rows.append((2, src.addr + from_off))
        elif kind != C.DYLD_CACHE_ADJ_V2_POINTER_64:  # pointers are rebased, not listed
            name = C.SPLIT_SEG_KIND_NAMES.get(kind, kind)
            raise LinkError(f"split seg v1 cannot express a {name} reference")
    return np.array(sorted(set(rows)), dtype=SPLIT_SEG_V1_DTYPE) if rows else np.zeros(0, SPLIT_SEG_V1_DTYPE)


def _exports_trie(symbols: Symbols, layout: OutputSections) -> bytes:
    exports: list[Export] = []
    data_exports = 0
    for name, ls in sorted(symbols.globals.items()):
        if not ls.external or ls.is_import:
            continue
        flags = C.EXPORT_SYMBOL_FLAGS_WEAK_DEFINITION if ls.weak_def else 0
        if ls.kind is SymKind.ABSOLUTE:
            exports.append(Export(name, flags | C.EXPORT_SYMBOL_FLAGS_KIND_ABSOLUTE, ls.value))
            continue
        addr = layout.address_of(ls)
        exports.append(Export(name, flags, addr))
        if layout.place_of(ls)[0].segname != "__TEXT":
            data_exports += 1
    for alias, target in symbols.aliases_reexported:
        exports.append(
            Export(
                alias,
                C.EXPORT_SYMBOL_FLAGS_REEXPORT,
                ordinal=target.ordinal,
                import_name="" if alias == target.name else target.name,
            )
        )
    raw = write_exports(exports) if exports else b""
    # ld64 leaves 9 spare bytes per export in a data segment so the cache builder can grow
    # their ULEB offsets in place
    return raw + bytes(9 * data_exports)


def _function_starts(symbols: Symbols, layout: OutputSections, unwind: UnwindSection) -> list[int]:
    starts = {r.isect.out_addr + r.offset for r in unwind.rows}
    for obj in symbols.objects:
        for sym in obj.symbols:
            if not sym.is_defined or sym.is_absolute or sym.is_temp_label:
                continue
            isect = obj.section(sym.n_sect)
            if isect.header.flags & C.S_ATTR_PURE_INSTRUCTIONS and id(isect) in layout.out_of:
                starts.add(isect.out_addr + sym.n_value - isect.addr)
    return sorted(starts)


def _data_in_code(symbols: Symbols) -> bytes:
    rows = []
    for obj in symbols.objects:
        for e in obj.image.data_in_code:
            isect, off = obj.section_at(int(e["offset"]))
            rows.append((isect.out_addr + off, int(e["length"]), int(e["kind"])))
    rows.sort()
    return b"".join(struct.pack("<IHH", *r) for r in rows)
