"""One dylib on its way into the cache, and everything its per-dylib passes need: its segments
(each becomes a chunk), its LINKEDIT pieces and new symbol table, its dependents, and the
mapping from input addresses to cache addresses.

Segment categorization follows dyld-1162 (``docs/cache-format.md`` §7.6 and §8.3): the kind
of a segment decides its region, and the region decides its permissions in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..macho import constants as C
from ..macho.file import MachOFile, Segment
from ..macho.format import NLIST64_DTYPE
from ..synth.synthesize import ADRP_PAGE
from .config import MACH_HEADER_ALIGNMENT, CacheConfig
from .eligibility import segment_content_size
from .export_table import ExportTable
from .inputs import CacheInput, Inputs
from .layout import Chunk, ChunkKind, Region, RegionKind
from .scratch import Stored, load, release, stored_len
from .types import CacheFileOffset, CacheVMAddr, InputFileOffset, InputVMAddr

#: chunk kind -> region it goes to
REGION_OF_KIND = {
    ChunkKind.DYLIB_TEXT: RegionKind.TEXT,
    ChunkKind.DYLIB_READ_ONLY: RegionKind.TEXT,
    ChunkKind.DYLIB_DATA_CONST: RegionKind.DATA_CONST,
    ChunkKind.DYLIB_DATA: RegionKind.DATA,
    ChunkKind.DYLIB_DATA_CONST_WORKAROUND: RegionKind.DATA,
    ChunkKind.DYLIB_DATA_DIRTY: RegionKind.DATA,
    ChunkKind.DYLIB_AUTH: RegionKind.AUTH,
    ChunkKind.DYLIB_AUTH_CONST: RegionKind.AUTH_CONST,
}

_RX = C.VM_PROT_READ | C.VM_PROT_EXECUTE
_RW = C.VM_PROT_READ | C.VM_PROT_WRITE


@dataclass(eq=False, slots=True)
class DylibSegment:
    """An input segment and the chunk it becomes."""

    index: int
    name: str
    kind: ChunkKind | None  # None for __LINKEDIT (split into pieces)
    input: Segment
    #: bytes copied from the input file (min(filesize, size of sections))
    copy_size: int
    #: VM size in the cache: end of the last section (not page rounded)
    cache_size: int
    chunk: Chunk | None = None
    #: placed at an address congruent to its input address modulo 4 KiB, so that no target's
    #: offset in its ADRP page changes (dylibs whose split seg info is synthesized)
    keeps_page_offsets: bool = False

    @property
    def input_vmaddr(self) -> InputVMAddr:
        return InputVMAddr(self.input.vmaddr)

    @property
    def input_fileoff(self) -> InputFileOffset:
        return InputFileOffset(self.input.fileoff)

    @property
    def cache_vmaddr(self) -> CacheVMAddr:
        assert self.chunk is not None
        return self.chunk.vm_addr

    @property
    def cache_fileoff(self) -> CacheFileOffset:
        assert self.chunk is not None
        return self.chunk.file_offset

    @property
    def slide(self) -> int:
        """How far the segment moved: cache address minus input address."""
        return self.cache_vmaddr - self.input_vmaddr


@dataclass(slots=True)
class DylibSymbols:
    """A dylib's new symbol table (symbol_strings.py): nlist (input n_values, adjusted when
    emitted, n_strx into the LINKEDIT region's shared pool) as its locals, globals and undefs
    parts, the counts, the indirect table.

    Planned in phase 3 and written in phase 5, the arrays wait in the build's scratch files
    (when the model has them): every dylib's symbols at once are as large as the input's."""

    nlist_parts: tuple[Stored, ...]
    locals_count: int
    globals_count: int
    undefs_count: int
    indirect_store: Stored

    @property
    def nlist_count(self) -> int:
        return self.locals_count + self.globals_count + self.undefs_count

    @property
    def indirect_count(self) -> int:
        return stored_len(self.indirect_store)

    def nlist(self) -> np.ndarray:
        """The nlist entries, an array of the caller's own."""
        parts = [load(p) for p in self.nlist_parts]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=NLIST64_DTYPE)

    def indirect(self) -> np.ndarray:
        return load(self.indirect_store)

    def release(self) -> None:
        """Give back the scratch space of the parts once the dylib's LINKEDIT is written."""
        for p in (*self.nlist_parts, self.indirect_store):
            release(p)


@dataclass(eq=False, slots=True)
class DylibLinkedit:
    """Where a dylib's LINKEDIT lives in the cache: the region (its LC_SEGMENT_64 __LINKEDIT
    spans all of it), the pieces by name ("nlist", "indirect", "exports", "function_starts",
    "data_in_code"), the region's shared string pool and the new symbol table."""

    region: Region
    pieces: dict[str, Chunk] = field(default_factory=dict)
    pool: Chunk | None = None
    symbols: DylibSymbols | None = None


@dataclass(eq=False, slots=True)
class CacheDylib:
    index: int
    input: CacheInput
    segments: list[DylibSegment] = field(default_factory=list)
    #: its LINKEDIT in the cache (phase 3: remove_unused_linkedit.py and symbol_strings.py)
    linkedit: DylibLinkedit | None = None
    #: dependency install names resolved to cache dylib indexes (None = missing weak dylib)
    dependents: list[tuple[int | None, str]] = field(default_factory=list)

    @property
    def image(self) -> MachOFile:
        return self.input.image

    @property
    def exports(self) -> ExportTable:
        return self.input.exports

    @property
    def install_name(self) -> str:
        return self.input.install_name

    @property
    def text(self) -> DylibSegment:
        return self.segments[0]

    @property
    def cache_load_address(self) -> CacheVMAddr:
        return self.text.cache_vmaddr

    def segment_for_input_address(self, addr: InputVMAddr) -> DylibSegment | None:
        for seg in self.segments:
            if seg.input_vmaddr <= addr < seg.input_vmaddr + seg.input.vmsize:
                return seg
        return None

    def cache_address(self, addr: InputVMAddr) -> CacheVMAddr:
        """One input VM address -> cache VM address, as :meth:`cache_addresses` maps it (the
        bind pass asks once per import: a scalar walk over the few segments, not numpy)."""
        chosen: DylibSegment | None = None
        lowest = self.segments[0]
        for seg in self.segments:
            start = seg.input.vmaddr
            if start < lowest.input.vmaddr:
                lowest = seg
            # the last segment (in order) of the highest start at or below the address
            if start <= addr and (chosen is None or start >= chosen.input.vmaddr):
                chosen = seg
        seg = chosen if chosen is not None else lowest
        slide = seg.slide if seg.chunk is not None else 0
        return CacheVMAddr((addr + slide) & _U64_MASK)

    def cache_addresses(self, input_addrs: np.ndarray) -> np.ndarray:
        """Vectorized input VM address -> cache VM address (by the segment containing it).

        Addresses outside every segment map with the slide of the nearest segment below
        (one-past-the-end pointers stay attached to the segment they end).
        """
        starts = np.array([s.input.vmaddr for s in self.segments], dtype=np.uint64)
        slides = np.array([s.slide if s.chunk is not None else 0 for s in self.segments], dtype=np.int64)
        order = np.argsort(starts)
        idx = np.searchsorted(starts[order], input_addrs, side="right") - 1
        idx = np.clip(idx, 0, len(order) - 1)
        return (input_addrs.astype(np.int64) + slides[order][idx]).astype(np.uint64)


_U64_MASK = (1 << 64) - 1


def _has_auth_fixups(ci: CacheInput, seg: Segment) -> bool:
    if seg.index in ci.fixup_facts.auth_segments:
        return True
    # class data gets signed method lists from the ObjC optimizers, so it lives in AUTH too
    return any(s.sectname in ("__objc_const", "__objc_data") for s in seg.sections)


def supports_data_const(image: MachOFile, install_name: str, exports: ExportTable) -> bool:
    """Whether a *_CONST segment may stay read-only (cache-format.md §8.3)."""
    if install_name in ("/usr/lib/libcrypto.0.9.7.dylib", "/usr/lib/libcrypto.0.9.8.dylib"):
        return False
    if exports.has_resolver:
        return False
    # libobjc may write pointer-based method lists (setIMP); ld64 makes relative ones into
    # __objc_methlist, so ObjC metadata without that section is taken to be pointer-based
    names = {s.sectname for s in image.sections}
    has_objc_classes = bool(names & {"__objc_classlist", "__objc_catlist", "__objc_catlist2"})
    return not (has_objc_classes and "__objc_methlist" not in names)


def categorize_segments(ci: CacheInput, config: CacheConfig) -> list[DylibSegment]:
    """One DylibSegment per input segment, with the chunk kind that decides its region."""
    image = ci.image
    # the linker's split seg info, or synthesized (always v2)
    split_v2 = ci.synthesized_split_seg or image.split_seg_version == 2
    auth_regions = config.arch.uses_pointer_auth
    const_ok: bool | None = None
    out = []
    for seg in image.segments:
        size = segment_content_size(seg)
        kind: ChunkKind | None
        prot = seg.initprot
        if seg.name == "__LINKEDIT":
            kind = None
        elif prot == _RX:
            kind = ChunkKind.DYLIB_TEXT
        elif prot == C.VM_PROT_READ:
            kind = ChunkKind.DYLIB_READ_ONLY
        elif prot == _RW:
            if not split_v2:
                kind = ChunkKind.DYLIB_DATA
            elif seg.name == "__OBJC_CONST":
                kind = ChunkKind.DYLIB_AUTH_CONST if auth_regions else ChunkKind.DYLIB_DATA_CONST
            elif seg.name == "__DATA_DIRTY":
                kind = ChunkKind.DYLIB_DATA_DIRTY
            else:
                is_auth = seg.name in ("__AUTH", "__AUTH_CONST") or (
                    auth_regions and _has_auth_fixups(ci, seg)
                )
                is_const = seg.name.endswith("_CONST")
                if is_const and const_ok is None:
                    const_ok = supports_data_const(image, ci.install_name, ci.exports)
                if is_auth:
                    if is_const:
                        kind = ChunkKind.DYLIB_AUTH_CONST if const_ok else ChunkKind.DYLIB_AUTH
                    else:
                        kind = ChunkKind.DYLIB_AUTH
                elif is_const:
                    kind = ChunkKind.DYLIB_DATA_CONST if const_ok else ChunkKind.DYLIB_DATA_CONST_WORKAROUND
                else:
                    kind = ChunkKind.DYLIB_DATA
        else:
            raise AssertionError(f"segment {seg.name} with protections {prot} passed eligibility")
        out.append(
            DylibSegment(
                seg.index,
                seg.name,
                kind,
                seg,
                min(seg.filesize, size),
                size,
                keeps_page_offsets=ci.synthesized_split_seg,
            )
        )
    return out


def segment_alignment(seg: DylibSegment) -> int:
    if seg.kind is ChunkKind.DYLIB_TEXT and seg.index == 0:
        return MACH_HEADER_ALIGNMENT
    align = max((1 << s.align for s in seg.input.sections), default=8)
    if seg.keeps_page_offsets:
        # input segments start on 4 KiB (synthesis checks it): 4 KiB alignment keeps every page
        # offset, the promise synthesize_split_seg(keep_page_offsets=True) relies on
        align = max(align, ADRP_PAGE)
    return max(align, 8)


def make_cache_dylibs(inputs: Inputs, config: CacheConfig) -> list[CacheDylib]:
    """The cache dylibs in cache order, their dependents resolved to indexes (aliases too), their
    segments categorized."""
    dylibs = [CacheDylib(ci.index, ci) for ci in inputs.dylibs]
    by_name = {d.install_name: d.index for d in dylibs}
    for d in dylibs:
        for path, kind in d.input.dependencies:
            target = by_name.get(path)
            if target is None and path in inputs.aliases:
                target = by_name.get(inputs.aliases[path])
            d.dependents.append((target, kind))
        d.segments = categorize_segments(d.input, config)
    return dylibs
