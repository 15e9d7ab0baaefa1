"""The ObjC optimization header dyld and libobjc find through ``objcOptsOffset``.

dyld-1162 does not null-check ``objcOptsOffset`` (``docs/cache-format.md`` §12.1, surprise 3):
whenever libobjc is in the cache, the header must point at a real
``ObjCOptimizationHeader``. This module emits a structurally complete one:

- ``header_info_ro`` / ``header_info_rw`` lists with one entry per ObjC dylib, in ascending
  mach-header order (readers binary-search them), and the contiguous copy of the images'
  ``objc_image_info``;
- selector, class and protocol hash tables in the form dyld-1162 writes for an empty key set
  (a zeroed table header), and the selector-strings chunk whose first string is the magic
  relative-method-list selector base.

It does not unique selectors or pre-attach categories, so no image is marked
"optimized by dyld": libobjc keeps doing that work at run time for every image. The empty
tables and the selector strings belong to the ObjC hash tables and canonical selectors
optimizers once those exist (the seed's emitObjCHeaderInfo and emitObjCOptsHeader are what
stays here).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ...cache.format import ObjCOptimizationHeader
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..headers import HeaderFields
from ..layout import Chunk, ChunkKind, RegionKind, SubCache, SubCacheKind
from ..model import CacheModel
from ..types import CacheVMAddr, InputVMAddr, moved_address, vm_add, vm_offset
from .base import DylibResult, Optimizer

LIBOBJC = "/usr/lib/libobjc.A.dylib"
#: ObjCOptimizationHeader.flags
OBJC_OPT_LARGE_SHARED_CACHE = 1 << 2
#: the selector every relative method list offset is taken from (an emoji nobody uses)
MAGIC_SELECTOR = "\U0001f92f".encode() + b"\0"
_RO_ENTRY = 24  # header_info_ro_64_t: mhdr_offset, info_offset, metadata_offset (int64 each)
_RW_ENTRY = 8  # header_info_rw_64_t: isLoaded:1, allClassesRealized:1, next:62
_IMAGE_INFO = 8  # objc_image_info: version, flags
#: StringHashTable with no keys: version..salt (32 bytes), scramble[256], tab[1]
_EMPTY_STRING_TABLE = 32 + 256 * 4 + 1
#: ObjectHashTable with no keys: the string table and a u32 duplicateCount
_EMPTY_OBJECT_TABLE = _EMPTY_STRING_TABLE + 4


def objc_dylibs(dylibs: list[CacheDylib]) -> list[CacheDylib]:
    """Dylibs with ObjC metadata: an __objc_imageinfo section in a __DATA* segment."""
    out = []
    for d in dylibs:
        for s in d.image.sections:
            if s.sectname == "__objc_imageinfo" and s.segname.startswith("__DATA"):
                out.append(d)
                break
    return out


@dataclass(slots=True)
class ObjCChunks:
    dylibs: list[CacheDylib]
    header_ro: Chunk
    image_infos: Chunk
    selector_strings: Chunk
    selector_table: Chunk
    class_table: Chunk
    protocol_table: Chunk
    header_rw: Chunk
    opts: Chunk


def add_objc_chunks(sub: SubCache, dylibs: list[CacheDylib], auth_regions: bool) -> ObjCChunks:
    """Reserve the chunks in the subcache that holds libobjc (phase 3)."""
    objc = objc_dylibs(dylibs)
    n = len(objc)
    text = sub.region(RegionKind.TEXT)
    rw = sub.region(RegionKind.AUTH if auth_regions else RegionKind.DATA)
    le = sub.region(RegionKind.LINKEDIT)

    def ro(name: str, size: int) -> Chunk:
        return text.add(Chunk(name, ChunkKind.OBJC_READ_ONLY, size, 8))

    return ObjCChunks(
        objc,
        ro("objc header info ro", 8 + _RO_ENTRY * n),
        ro("objc image infos", max(_IMAGE_INFO * n, 8)),
        ro("objc selector strings", len(MAGIC_SELECTOR)),
        ro("objc selector table", _EMPTY_STRING_TABLE),
        ro("objc class table", _EMPTY_OBJECT_TABLE),
        ro("objc protocol table", _EMPTY_OBJECT_TABLE),
        rw.add(Chunk("objc header info rw", ChunkKind.OBJC_READ_WRITE, 8 + _RW_ENTRY * n, 8)),
        le.add(Chunk("objc opts header", ChunkKind.OBJC_OPTS, ObjCOptimizationHeader.SIZE, 8)),
    )


def emit_objc(c: ObjCChunks, base_address: CacheVMAddr, buffers: CacheBuffers) -> None:
    """Fill the header info, image infos and opts header (phase 6; the dylibs are in place)."""
    n = len(c.dylibs)
    ro = bytearray(struct.pack("<II", n, _RO_ENTRY))
    infos = bytearray()
    for i, d in enumerate(c.dylibs):
        sect = next(
            s for s in d.image.sections if s.sectname == "__objc_imageinfo" and s.segname.startswith("__DATA")
        )
        seg = d.segment_for_input_address(InputVMAddr(sect.addr))
        assert seg is not None and seg.chunk is not None
        info_addr = moved_address(InputVMAddr(sect.addr), seg.input_vmaddr, seg.chunk.vm_addr)
        infos += buffers.read(info_addr, _IMAGE_INFO)
        field = vm_add(c.header_ro.vm_addr, 8 + i * _RO_ENTRY)
        copy = vm_add(c.image_infos.vm_addr, i * _IMAGE_INFO)
        # no PrebuiltLoaderSet exists, so metadata_offset stays 0
        ro += struct.pack("<qqq", d.cache_load_address - field, copy - (field + 8), 0)
    buffers.put(c.header_ro, bytes(ro))
    buffers.put(c.image_infos, bytes(infos))
    buffers.put(c.header_rw, struct.pack("<II", n, _RW_ENTRY) + bytes(_RW_ENTRY * n))
    hdr = ObjCOptimizationHeader(
        1,
        OBJC_OPT_LARGE_SHARED_CACHE,
        vm_offset(c.header_ro.vm_addr, base_address),
        vm_offset(c.header_rw.vm_addr, base_address),
        vm_offset(c.selector_table.vm_addr, base_address),
        vm_offset(c.class_table.vm_addr, base_address),
        vm_offset(c.protocol_table.vm_addr, base_address),
        vm_offset(c.selector_strings.vm_addr, base_address),
    )
    buffers.put(c.opts, hdr.pack())


class ObjCHeader(Optimizer):
    name: ClassVar[str] = "ObjC header info"

    def __init__(self) -> None:
        self.chunks: ObjCChunks | None = None

    def place(self, model: CacheModel) -> None:
        """The ObjC tables go to the file that holds libobjc (none without libobjc)."""
        sub = model.text_subcache(LIBOBJC)
        if sub is not None:
            self.chunks = add_objc_chunks(sub, model.dylibs, model.config.arch.uses_pointer_auth)

    def pre_dylib_emit(self, model: CacheModel, buffers: CacheBuffers) -> None:
        # the seed emits the selector strings before the dylib passes, which point into them
        if self.chunks is not None:
            buffers.put(self.chunks.selector_strings, MAGIC_SELECTOR)

    def emit(self, model: CacheModel, buffers: CacheBuffers, results: Sequence[DylibResult]) -> None:
        if self.chunks is not None:
            emit_objc(self.chunks, model.config.base_address, buffers)

    def header_fields(self, model: CacheModel, sub: SubCache, fields: HeaderFields) -> None:
        if sub.kind is SubCacheKind.MAIN and self.chunks is not None:
            opts = self.chunks.opts
            fields.values["objc_opts_offset"] = vm_offset(opts.vm_addr, model.config.base_address)
            fields.values["objc_opts_size"] = opts.size
