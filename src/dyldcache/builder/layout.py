"""Phase 3's model: chunks -> regions -> subcaches, and the rules that give every chunk its
VM address and file offset (``docs/cache-format.md`` §2.3, §7.2-§7.5).

A :class:`Chunk` is the smallest unit of layout and the single owner of its bytes. Its
:class:`ChunkKind` order is its order inside a region. A :class:`Region` becomes one
mapping; a :class:`SubCache` becomes one file.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import IntEnum

from ..errors import BuildError
from ..macho import constants as C
from .config import DYNAMIC_CONFIG_SIZE, REGION_ALIGNMENT, CacheConfig
from .types import (
    UNPLACED_FILE,
    UNPLACED_VM,
    ZERO_FILE,
    ZERO_VM,
    CacheFileOffset,
    CacheVMAddr,
    align_file,
    align_up,
    align_vm,
    file_add,
    vm_add,
    vm_of_file_offset,
)

_R = C.VM_PROT_READ
_RW = C.VM_PROT_READ | C.VM_PROT_WRITE
_RX = C.VM_PROT_READ | C.VM_PROT_EXECUTE


class RegionKind(IntEnum):
    """Regions of a file, in file order."""

    TEXT = 0
    DATA_CONST = 1
    DATA = 2
    AUTH = 3
    AUTH_CONST = 4
    LINKEDIT = 5
    UNMAPPED = 6
    DYNAMIC_CONFIG = 7
    CODE_SIGNATURE = 8

    @property
    def max_prot(self) -> int:
        return {
            RegionKind.TEXT: _RX,
            RegionKind.LINKEDIT: _R,
            RegionKind.UNMAPPED: 0,
            RegionKind.DYNAMIC_CONFIG: _R,
            RegionKind.CODE_SIGNATURE: 0,
        }.get(self, _RW)

    @property
    def init_prot(self) -> int:
        if self in (RegionKind.DATA_CONST, RegionKind.AUTH_CONST):
            return _R
        return self.max_prot

    @property
    def is_data(self) -> bool:
        return self in (RegionKind.DATA_CONST, RegionKind.DATA, RegionKind.AUTH, RegionKind.AUTH_CONST)

    @property
    def mapped(self) -> bool:
        """Regions that become a dyld_cache_mapping_info."""
        return self <= RegionKind.LINKEDIT

    @property
    def reserves_vm(self) -> bool:
        return self not in (RegionKind.UNMAPPED, RegionKind.CODE_SIGNATURE)

    @property
    def mapping_flags(self) -> int:
        return {RegionKind.DATA_CONST: 0x4, RegionKind.AUTH: 0x1, RegionKind.AUTH_CONST: 0x5}.get(self, 0)


class ChunkKind(IntEnum):
    """What a chunk holds; the order is the sort order inside a region (stable sort)."""

    CACHE_HEADER = 0
    DYLIB_TEXT = 10
    DYLIB_READ_ONLY = 11
    OBJC_READ_ONLY = 20
    DYLIB_DATA_CONST = 30
    DYLIB_DATA = 40
    DYLIB_DATA_CONST_WORKAROUND = 41
    OBJC_READ_WRITE = 42
    DYLIB_DATA_DIRTY = 43
    DYLIB_AUTH = 50
    DYLIB_AUTH_CONST = 60
    SLIDE_INFO = 70
    SWIFT_OPTS = 71
    DYLIBS_TRIE = 72
    PATCH_TABLE = 73
    PREBUILT_LOADERS = 74
    LINKEDIT_DYLIB = 80
    SYMBOL_NLIST = 81
    SYMBOL_STRINGS = 82
    OBJC_OPTS = 83
    UNMAPPED_SYMBOLS = 90
    DYNAMIC_CONFIG = 95
    CODE_SIGNATURE = 99


@dataclass(eq=False, slots=True)
class Chunk:
    name: str
    kind: ChunkKind
    #: bytes of VM the chunk takes; file space equals it (except zero-fill chunks)
    size: int
    alignment: int = 1
    #: index of the dylib that owns the chunk, -1 for global chunks
    dylib: int = -1
    #: zero-fill chunks take VM but no file space (only at a region's end)
    zerofill: bool = False
    # set by layout
    vm_addr: CacheVMAddr = UNPLACED_VM
    file_offset: CacheFileOffset = UNPLACED_FILE
    region: Region | None = None

    @property
    def vm_end(self) -> CacheVMAddr:
        return vm_add(self.vm_addr, self.size)

    @property
    def file_end(self) -> CacheFileOffset:
        return file_add(self.file_offset, self.size)

    @property
    def subcache(self) -> SubCache:
        assert self.region is not None and self.region.subcache is not None
        return self.region.subcache


@dataclass(eq=False, slots=True)
class Region:
    kind: RegionKind
    chunks: list[Chunk] = field(default_factory=list)
    subcache: SubCache | None = None
    vm_addr: CacheVMAddr = ZERO_VM
    vm_size: int = 0
    file_offset: CacheFileOffset = ZERO_FILE
    file_size: int = 0

    @property
    def vm_end(self) -> CacheVMAddr:
        return vm_add(self.vm_addr, self.vm_size)

    @property
    def file_end(self) -> CacheFileOffset:
        return file_add(self.file_offset, self.file_size)

    def add(self, chunk: Chunk) -> Chunk:
        chunk.region = self
        self.chunks.append(chunk)
        return chunk


class SubCacheKind(IntEnum):
    MAIN = 0
    SUB = 1
    SYMBOLS = 2


@dataclass(eq=False, slots=True)
class SubCache:
    kind: SubCacheKind
    #: 1-based index among the main cache's subcaches (0 for the main cache)
    index: int = 0
    suffix: str = ""
    regions: dict[RegionKind, Region] = field(default_factory=dict)
    vm_addr: CacheVMAddr = ZERO_VM
    file_size: int = 0
    #: dylib indexes whose __TEXT this file holds
    dylibs: list[int] = field(default_factory=list)
    #: (address, size) of the VM Rosetta may fill (x86_64)
    rosetta_read_only: tuple[CacheVMAddr, int] = (ZERO_VM, 0)
    rosetta_read_write: tuple[CacheVMAddr, int] = (ZERO_VM, 0)

    def region(self, kind: RegionKind) -> Region:
        r = self.regions.get(kind)
        if r is None:
            r = Region(kind, subcache=self)
            self.regions[kind] = r
        return r

    def ordered_regions(self) -> list[Region]:
        return [self.regions[k] for k in sorted(self.regions)]

    def mapped_regions(self) -> list[Region]:
        return [r for r in self.ordered_regions() if r.kind.mapped]

    def chunks(self) -> list[Chunk]:
        return [c for r in self.ordered_regions() for c in r.chunks]

    def remove_empty_regions(self) -> None:
        for kind in list(self.regions):
            if not self.regions[kind].chunks:
                del self.regions[kind]

    @property
    def has_data(self) -> bool:
        return any(k.is_data for k in self.regions)


def subcache_suffix(sub: SubCache, platform: int) -> str:
    """File suffix of a subcache (cache-format.md §2.5)."""
    if sub.kind is SubCacheKind.MAIN:
        return ""
    if sub.kind is SubCacheKind.SYMBOLS:
        return ".symbols"
    nn = f".{sub.index:02d}"
    if platform in (C.PLATFORM_MACOS, C.PLATFORM_DRIVERKIT):
        return nn
    if sub.has_data:
        return nn + ".dylddata"
    if RegionKind.LINKEDIT in sub.regions:
        return nn + ".dyldlinkedit"
    return nn


# ---------------------------------------------------------------------------------------------
# VM layout


def needs_padding(prev: RegionKind, nxt: RegionKind) -> bool:
    """Contiguous layout: 32 MiB between regions that must not share page tables (§7.2)."""
    if prev is RegionKind.TEXT:
        return bool(nxt.init_prot & C.VM_PROT_WRITE)
    if prev in (RegionKind.DATA, RegionKind.AUTH):
        if prev is RegionKind.AUTH and nxt is RegionKind.AUTH_CONST:
            return False
        return not nxt.init_prot & C.VM_PROT_WRITE
    if prev in (RegionKind.DATA_CONST, RegionKind.AUTH_CONST):
        return nxt not in (RegionKind.DATA_CONST, RegionKind.AUTH_CONST)
    if prev in (RegionKind.LINKEDIT, RegionKind.DYNAMIC_CONFIG):
        return bool(nxt.max_prot & C.VM_PROT_WRITE)
    return False


def layout_vm(subcaches: list[SubCache], config: CacheConfig) -> int:
    """Give every region and subcache its VM address; returns the total VM size (excl. .symbols).

    Region sizes must already be known (``layout_files``).
    """
    addr = config.base_address
    if config.layout == "contiguous":
        prev: RegionKind | None = None
        symbols_start = None
        for sub in subcaches:
            sub.vm_addr = addr
            if sub.kind is SubCacheKind.SYMBOLS:
                symbols_start = addr
            for r in sub.ordered_regions():
                if not r.kind.reserves_vm:
                    continue
                if prev is not None and needs_padding(prev, r.kind):
                    addr = vm_add(addr, config.region_padding)
                r.vm_addr = addr
                addr = r.vm_end
                prev = r.kind
        end = symbols_start if symbols_start is not None else addr
        return end - config.base_address
    # discontiguous (x86_64): every subcache and every change of write permission on 1 GiB
    align = config.discontiguous_alignment
    prev_max = 0
    for sub in subcaches:
        addr = align_vm(addr, align)
        sub.vm_addr = addr
        for r in sub.ordered_regions():
            if not r.kind.reserves_vm:
                continue
            if (prev_max & C.VM_PROT_WRITE) != (r.kind.max_prot & C.VM_PROT_WRITE):
                addr = align_vm(addr, align)
            r.vm_addr = addr
            addr = r.vm_end
            prev_max = r.kind.max_prot
        if sub.kind is not SubCacheKind.SYMBOLS:
            ro = [
                r for r in sub.ordered_regions() if r.kind in (RegionKind.LINKEDIT, RegionKind.DYNAMIC_CONFIG)
            ]
            rw = [r for r in sub.ordered_regions() if r.kind.is_data]
            if ro:
                end_ro = ro[-1].vm_end
                addr = align_vm(vm_add(addr, 1 << 30), align)
                sub.rosetta_read_only = (end_ro, addr - end_ro)
            if rw:
                end_rw = rw[-1].vm_end
                sub.rosetta_read_write = (end_rw, (align_up(end_rw, align) - end_rw) // 2)
    return addr - config.base_address


def place_chunks(subcaches: list[SubCache]) -> None:
    """Chunk VM addresses from their region's address (file space == VM space inside a region)."""
    for sub in subcaches:
        for r in sub.ordered_regions():
            for c in r.chunks:
                c.vm_addr = vm_of_file_offset(c.file_offset, r.file_offset, r.vm_addr)


def layout_files(subcaches: list[SubCache]) -> None:
    """Sort chunks, give them file offsets, and size every region (VM and file).

    It depends only on the chunks' kinds, sizes and alignments, so it runs again whenever a
    chunk's size is set from an earlier layout (slide info, code signature).
    """
    for sub in subcaches:
        offset = CacheFileOffset(0)
        for r in sub.ordered_regions():
            r.chunks.sort(key=lambda c: c.kind)
            offset = align_file(offset, REGION_ALIGNMENT)
            r.file_offset = offset
            cursor = offset
            vm_extra = 0
            for c in r.chunks:
                if c.zerofill:
                    vm_extra = align_up(vm_extra, c.alignment) + c.size
                    c.file_offset = file_add(cursor, vm_extra - c.size)
                    continue
                if vm_extra:
                    raise BuildError(f"internal: chunk {c.name} follows a zero-fill chunk in {r.kind.name}")
                cursor = align_file(cursor, c.alignment)
                c.file_offset = cursor
                cursor = c.file_end
            if r.kind is RegionKind.CODE_SIGNATURE:
                r.file_size = cursor - offset
                r.vm_size = 0
            else:
                r.file_size = (
                    align_up(cursor - offset, REGION_ALIGNMENT)
                    if r.kind.mapped or r.kind is RegionKind.UNMAPPED
                    else 0
                )
                r.vm_size = align_up(cursor - offset + vm_extra, REGION_ALIGNMENT)
            offset = r.file_end
        sub.file_size = offset


def lay_out(subcaches: list[SubCache], config: CacheConfig) -> int:
    """File offsets, then VM addresses, of every region and chunk; returns the VM the cache
    spans (BuildError when that is more than the shared region)."""
    layout_files(subcaches)
    total_vm_size = layout_vm(subcaches, config)
    place_chunks(subcaches)
    check_no_overlap(subcaches)
    if total_vm_size > config.cache_size:
        raise BuildError(
            f"cache needs {total_vm_size:#x} bytes of VM, more than the shared region "
            f"({config.cache_size:#x})"
        )
    return total_vm_size


def check_no_overlap(subcaches: list[SubCache]) -> None:
    """Every byte has one owner: chunks of a file must not overlap (layout-time assertion)."""
    for sub in subcaches:
        spans = sorted(
            (c.file_offset, c.file_offset + (0 if c.zerofill else c.size), c.name) for c in sub.chunks()
        )
        for (_, a1, an), (b0, b1, bn) in itertools.pairwise(spans):
            if b0 < a1 and b1 > b0:
                raise BuildError(f"internal: chunks {an} and {bn} overlap in {sub.suffix or 'main'}")


def name_subcaches(subcaches: list[SubCache], platform: int) -> None:
    """Number the subcaches the main file lists (1, 2, ...) and give every file its suffix."""
    for i, sub in enumerate(s for s in subcaches if s.kind is SubCacheKind.SUB):
        sub.index = i + 1
    for sub in subcaches:
        sub.suffix = subcache_suffix(sub, platform)


def add_dynamic_config(sub: SubCache) -> Chunk:
    """VM reserved after the last LINKEDIT for dyld's dynamic data (zero-fill, no file bytes)."""
    return sub.region(RegionKind.DYNAMIC_CONFIG).add(
        Chunk(
            "dynamic config", ChunkKind.DYNAMIC_CONFIG, DYNAMIC_CONFIG_SIZE, REGION_ALIGNMENT, zerofill=True
        )
    )


def max_slide(subcaches: list[SubCache], config: CacheConfig) -> int:
    """The largest slide the kernel may pick for this layout (the main header's maxSlide)."""
    subs = [s for s in subcaches if s.kind is not SubCacheKind.SYMBOLS]
    if config.layout == "discontiguous":
        limit = config.discontiguous_alignment
        best = limit
        for s in subs:
            data = [r for r in s.ordered_regions() if r.kind.is_data]
            for r in s.ordered_regions():
                if r.kind in (RegionKind.TEXT, RegionKind.LINKEDIT, RegionKind.DYNAMIC_CONFIG):
                    best = min(best, limit - r.vm_size)
            if data:
                best = min(best, limit - (data[-1].vm_end - data[0].vm_addr))
        return best
    last = subcaches[-1]
    end = max(r.vm_end for r in last.ordered_regions() if r.kind.reserves_vm)
    slide = config.base_address + config.cache_size - end
    text_end = max(r.vm_end for s in subcaches for r in s.ordered_regions() if r.kind is RegionKind.TEXT)
    if text_end - config.base_address <= 0x80000000:
        slide = 0x80000000 - (text_end - config.base_address)
    if config.max_slide_cap is not None:
        slide = min(slide, config.max_slide_cap)
    return slide
