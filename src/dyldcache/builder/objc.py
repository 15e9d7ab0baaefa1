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
"optimized by dyld": libobjc keeps doing that work at run time for every image.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..cache.format import ObjCOptimizationHeader
from .cache_dylib import CacheDylib
from .layout import Chunk, ChunkKind, RegionKind, SubCache

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


def add_objc_chunks(sub: SubCache, dylibs: list[CacheDylib], auth_regions: bool) -> ObjCChunks | None:
    """Reserve the chunks in the subcache that holds libobjc (phase 3)."""
    if not any(d.install_name == LIBOBJC for d in dylibs):
        return None
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


def emit_objc(
    c: ObjCChunks, base_address: int, read: Callable[[int, int], bytes], write: Callable[[Chunk, bytes], None]
) -> None:
    """Fill the chunks (phase 6). ``read(addr, size)`` / ``write(chunk, bytes)`` access the cache."""
    n = len(c.dylibs)
    ro = bytearray(struct.pack("<II", n, _RO_ENTRY))
    infos = bytearray()
    for i, d in enumerate(c.dylibs):
        sect = next(
            s for s in d.image.sections if s.sectname == "__objc_imageinfo" and s.segname.startswith("__DATA")
        )
        seg = d.segment_for_input_address(sect.addr)
        assert seg is not None and seg.chunk is not None
        info_addr = seg.chunk.vm_addr + (sect.addr - seg.input.vmaddr)
        infos += bytes(read(info_addr, _IMAGE_INFO))
        field = c.header_ro.vm_addr + 8 + i * _RO_ENTRY
        copy = c.image_infos.vm_addr + i * _IMAGE_INFO
        # no PrebuiltLoaderSet exists, so metadata_offset stays 0
        ro += struct.pack("<qqq", d.cache_load_address - field, copy - (field + 8), 0)
    write(c.header_ro, bytes(ro))
    write(c.image_infos, bytes(infos))
    write(c.selector_strings, MAGIC_SELECTOR)
    write(c.header_rw, struct.pack("<II", n, _RW_ENTRY) + bytes(_RW_ENTRY * n))
    hdr = ObjCOptimizationHeader(
        1,
        OBJC_OPT_LARGE_SHARED_CACHE,
        c.header_ro.vm_addr - base_address,
        c.header_rw.vm_addr - base_address,
        c.selector_table.vm_addr - base_address,
        c.class_table.vm_addr - base_address,
        c.protocol_table.vm_addr - base_address,
        c.selector_strings.vm_addr - base_address,
    )
    write(c.opts, hdr.pack())
