"""ObjC header info and the optimization header dyld and libobjc find through
``objcOptsOffset`` (the seed's findObjCDylibs in phase 2, emitObjCHeaderInfo and
emitObjCOptsHeader in phase 6).

dyld-1162 does not null-check ``objcOptsOffset`` (``docs/cache-format.md`` §12.1, surprise 3):
whenever libobjc is in the cache, the header must point at a real ``ObjCOptimizationHeader``.
This module:

- finds the ObjC dylibs and reads their metadata (objc_input.py) for every ObjC optimizer; an
  image whose metadata is malformed is left as linked, with a warning naming it and the problem;
- emits the ``header_info_ro`` / ``header_info_rw`` lists with one entry per ObjC dylib, in
  ascending mach-header order (readers binary-search them), and the contiguous copy of the
  images' ``objc_image_info``. Every image the optimizers rewrote gets the OptimizedByDyld flag
  (in its own __objc_imageinfo and in the copy), which tells libobjc that its selectors are
  uniqued and its classes and protocols are in the tables;
- emits the ``ObjCOptimizationHeader`` (flags: LargeSharedCache, and NoMissingWeakSuperclasses
  unless an optimized class's superclass is a missing weak import; this builder writes
  development caches, so never IsProduction), and the same offsets into libobjc's own
  ``objc_opt_t`` in ``__TEXT,__objc_opt_ro`` when libobjc has that section (relative to it).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...cache.format import ObjCOptimizationHeader
from ...cache.objc_format import (
    IMAGE_INFO_DYLD_CATEGORIES_OPTIMIZED,
    IMAGE_INFO_OPTIMIZED_BY_DYLD,
    LIBOBJC_PATH,
    OBJC_OPT_LARGE_SHARED_CACHE,
    OBJC_OPT_NO_MISSING_WEAK_SUPERCLASSES,
    OBJC_OPT_RO_SECTION,
    ObjCOptV16,
)
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..headers import HeaderFields
from ..layout import Chunk, ChunkKind, RegionKind, SubCache, SubCacheKind
from ..model import CacheModel
from ..types import CacheVMAddr, InputVMAddr, vm_add, vm_offset
from .base import DylibResult, Optimizer
from .objc_canonical_selectors import ObjCCanonicalSelectors
from .objc_hash_tables import ObjCHashTables
from .objc_input import ObjCInputs
from .objc_selector_refs import buffer_offset

LIBOBJC = LIBOBJC_PATH
_RO_ENTRY = 24  # header_info_ro_64_t: mhdr_offset, info_offset, metadata_offset (int64 each)
_RW_ENTRY = 8  # header_info_rw_64_t: isLoaded:1, allClassesRealized:1, next:62
_IMAGE_INFO = 8  # objc_image_info: version, flags
#: DylibResult.extras key: the dylib has a class whose superclass is a missing weak import
MISSING_WEAK_SUPERCLASS = "objc missing weak superclass"


@dataclass(slots=True)
class ObjCChunks:
    header_ro: Chunk
    image_infos: Chunk
    header_rw: Chunk
    opts: Chunk


def _image_info_address(d: CacheDylib) -> CacheVMAddr:
    sect = next(
        s for s in d.image.sections if s.sectname == "__objc_imageinfo" and s.segname.startswith("__DATA")
    )
    return d.cache_address(InputVMAddr(sect.addr))


class ObjCHeader(Optimizer):
    name: ClassVar[str] = "ObjC header info"

    def __init__(self, objc: ObjCInputs, selectors: ObjCCanonicalSelectors, tables: ObjCHashTables) -> None:
        self.objc = objc
        self.selectors = selectors
        self.tables = tables
        self.chunks: ObjCChunks | None = None
        self.flags = 0

    def estimate(self, model: CacheModel) -> None:
        self.objc.find(model.dylibs, LIBOBJC)

    def place(self, model: CacheModel) -> None:
        """The ObjC tables go to the file that holds libobjc (none without libobjc)."""
        sub = model.text_subcache(LIBOBJC)
        if sub is None:
            return
        n = len(self.objc.dylibs)
        text = sub.region(RegionKind.TEXT)
        rw = sub.region(RegionKind.AUTH if model.config.arch.uses_pointer_auth else RegionKind.DATA)
        le = sub.region(RegionKind.LINKEDIT)

        def ro(name: str, size: int) -> Chunk:
            return text.add(Chunk(name, ChunkKind.OBJC_READ_ONLY, size, 8))

        self.chunks = ObjCChunks(
            ro("objc header info ro", 8 + _RO_ENTRY * n),
            ro("objc image infos", max(_IMAGE_INFO * n, 8)),
            rw.add(Chunk("objc header info rw", ChunkKind.OBJC_READ_WRITE, 8 + _RW_ENTRY * n, 8)),
            le.add(Chunk("objc opts header", ChunkKind.OBJC_OPTS, ObjCOptimizationHeader.SIZE, 8)),
        )

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        i = self.objc.objc_index.get(dylib.index)
        if not self.objc.active or i is None:
            return
        meta = self.objc.images[i]
        if meta.problem is not None:
            result.warnings.append(
                f"ObjC metadata of '{dylib.install_name}' not optimized (libobjc does that work at "
                f"run time): {meta.problem}"
            )
            return
        if result.bound is not None and len(result.bound.absolute_locations):
            supers = np.array([c.address + 8 for c in meta.classes], dtype=np.uint64)
            locs = dylib.cache_addresses(supers)
            nulls = result.bound.absolute_locations[result.bound.absolute_values == 0]
            if np.isin(locs, nulls).any():
                result.extras[MISSING_WEAK_SUPERCLASS] = True

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        c = self.chunks
        if c is None:
            return
        n = len(self.objc.dylibs)
        ro = bytearray(struct.pack("<II", n, _RO_ENTRY))
        infos = bytearray()
        for i, d in enumerate(self.objc.dylibs):
            info_addr = _image_info_address(d)
            if self.objc.active and self.objc.images[i].problem is None:
                extra = IMAGE_INFO_DYLD_CATEGORIES_OPTIMIZED if i in self.objc.categories_optimized else 0
                self._set_optimized(d, buffers, extra)
            infos += buffers.read(info_addr, _IMAGE_INFO)
            field = vm_add(c.header_ro.vm_addr, 8 + i * _RO_ENTRY)
            copy = vm_add(c.image_infos.vm_addr, i * _IMAGE_INFO)
            # no PrebuiltLoaderSet exists, so metadata_offset stays 0
            ro += struct.pack("<qqq", d.cache_load_address - field, copy - (field + 8), 0)
        buffers.put(c.header_ro, bytes(ro))
        buffers.put(c.image_infos, bytes(infos))
        buffers.put(c.header_rw, struct.pack("<II", n, _RW_ENTRY) + bytes(_RW_ENTRY * n))
        self.flags = OBJC_OPT_LARGE_SHARED_CACHE
        if not any(r.extras.get(MISSING_WEAK_SUPERCLASS) for r in results):
            self.flags |= OBJC_OPT_NO_MISSING_WEAK_SUPERCLASSES
        tables = self.tables.table_addresses()
        assert tables is not None and self.selectors.chunk is not None
        base = model.config.base_address
        hdr = ObjCOptimizationHeader(
            1,
            self.flags,
            vm_offset(c.header_ro.vm_addr, base),
            vm_offset(c.header_rw.vm_addr, base),
            vm_offset(tables[0], base),
            vm_offset(tables[1], base),
            vm_offset(tables[2], base),
            vm_offset(self.selectors.chunk.vm_addr, base),
        )
        buffers.put(c.opts, hdr.pack())
        self._emit_libobjc_opt(model, buffers, hdr)

    def _set_optimized(self, d: CacheDylib, buffers: CacheBuffers, extra: int) -> None:
        sect = next(
            s for s in d.image.sections if s.sectname == "__objc_imageinfo" and s.segname.startswith("__DATA")
        )
        assert d.text.chunk is not None
        buf = buffers.holding(d.text.chunk)
        at = buffer_offset(d, sect.addr) + 4
        flags = int.from_bytes(bytes(buf[at : at + 4]), "little") | IMAGE_INFO_OPTIMIZED_BY_DYLD | extra
        buf[at : at + 4] = np.frombuffer(flags.to_bytes(4, "little"), dtype=np.uint8)

    def _emit_libobjc_opt(
        self, model: CacheModel, buffers: CacheBuffers, hdr: ObjCOptimizationHeader
    ) -> None:
        """libobjc's objc_opt_t (version 16 layout): the same tables, as offsets from itself."""
        lib = next((d for d in model.dylibs if d.install_name == LIBOBJC), None)
        if lib is None:
            return
        sect = lib.image.section(*OBJC_OPT_RO_SECTION)
        if sect is None or sect.size < ObjCOptV16.SIZE:
            return
        assert lib.text.chunk is not None
        at = buffer_offset(lib, sect.addr)
        buf = buffers.holding(lib.text.chunk)
        version = int.from_bytes(bytes(buf[at : at + 4]), "little")
        own = lib.cache_address(InputVMAddr(sect.addr)) - model.config.base_address

        def rel(offset: int) -> int:
            return offset - own

        opt = ObjCOptV16(
            version,
            hdr.flags,
            rel(hdr.selector_hash_table_cache_offset),
            rel(hdr.header_info_ro_cache_offset),
            0,
            0,
            rel(hdr.header_info_rw_cache_offset),
            0,
            rel(hdr.class_hash_table_cache_offset),
            rel(hdr.protocol_hash_table_cache_offset),
            rel(hdr.relative_method_selector_base_address_offset),
        )
        buf[at : at + ObjCOptV16.SIZE] = np.frombuffer(opt.pack(), dtype=np.uint8)

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        if sub.kind is SubCacheKind.MAIN and self.chunks is not None:
            opts = self.chunks.opts
            fields.values["objc_opts_offset"] = vm_offset(opts.vm_addr, model.config.base_address)
            fields.values["objc_opts_size"] = opts.size
