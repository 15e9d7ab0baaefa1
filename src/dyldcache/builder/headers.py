"""The cache headers, placed in phase 3 and written in phase 7: the dyld_cache_header of every
file, its two mapping arrays, the image lists with their path strings, and the subcache table
(``docs/cache-format.md`` §1, §2). The optimizers supply the fields of the tables they own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cache.format import (
    CacheHeader,
    ImageInfo,
    ImageTextInfo,
    MappingAndSlideInfo,
    MappingInfo,
    SubcacheEntry,
    cache_magic,
)
from ..names import encode_name
from .buffers import CacheBuffers
from .cache_dylib import CacheDylib
from .config import REGION_ALIGNMENT, CacheConfig
from .layout import (
    Chunk,
    ChunkKind,
    RegionKind,
    SubCache,
    SubCacheKind,
    add_dynamic_config,
    max_slide,
    name_subcaches,
)
from .model import CacheModel
from .types import CacheFileOffset, align_up, vm_offset

HEADER_SIZE = CacheHeader.SIZE  # 0x200 in dyld-1162
#: region kinds the header area reserves mapping slots for (dyld-1162 reserves all of them)
_REGION_KIND_COUNT = 9


def needs_image_list(sub: SubCache) -> bool:
    return sub.kind is not SubCacheKind.SYMBOLS


def header_size(sub: SubCache, dylibs: list[CacheDylib], subcache_count: int) -> int:
    """Bytes reserved at the start of a file for its header area (a 16 KiB multiple)."""
    size = HEADER_SIZE + _REGION_KIND_COUNT * (MappingInfo.SIZE + MappingAndSlideInfo.SIZE)
    if needs_image_list(sub):
        if sub.kind is SubCacheKind.MAIN:
            size += SubcacheEntry.SIZE * subcache_count
        size += len(dylibs) * (ImageInfo.SIZE + ImageTextInfo.SIZE)
        size += sum(len(encode_name(d.install_name)) + 1 for d in dylibs)
    return align_up(size, REGION_ALIGNMENT)


@dataclass(slots=True)
class HeaderFields:
    """What the optimizers put in one file's dyld_cache_header (phase 7)."""

    #: CacheHeader field name -> value
    values: dict[str, int] = field(default_factory=dict)
    #: data region -> (file offset, bytes used) of its slide info
    slide_info: dict[RegionKind, tuple[CacheFileOffset, int]] = field(default_factory=dict)


def os_version(dylibs: list[CacheDylib], platform: int) -> int:
    """The cache's OS version: libdyld's (or libSystem's) minOS, else the highest of all."""
    for suffix in ("/libdyld.dylib", "/libSystem.B.dylib"):
        for d in dylibs:
            if d.install_name.endswith(suffix):
                for bv in d.image.build_versions:
                    if bv.platform == platform:
                        return bv.minos
    return max((d.image.minos or 0) for d in dylibs)


class CacheHeaders:
    """Every file's header chunk and the main file's own fields (the seed's addCacheHeaderChunk
    and computeCacheHeaders)."""

    def __init__(self) -> None:
        self.chunks: dict[SubCache, Chunk] = {}
        self.dynamic_config: Chunk | None = None

    def place(self, model: CacheModel) -> None:
        """After every optimizer placed its chunks: dyld's dynamic data, names, header chunks."""
        self.dynamic_config = add_dynamic_config(model.mapped_files()[-1])
        name_subcaches(model.subcaches, model.config.platform)
        listed = len([s for s in model.subcaches if s.kind is SubCacheKind.SUB])
        for sub in model.subcaches:
            size = header_size(sub, model.dylibs, listed)
            self.chunks[sub] = sub.region(RegionKind.TEXT).add(
                Chunk("cache header", ChunkKind.CACHE_HEADER, size, REGION_ALIGNMENT)
            )

    def main_fields(self, model: CacheModel) -> dict[str, int]:
        """What only the main file's header carries, besides the optimizers' tables."""
        assert self.dynamic_config is not None
        return {
            "shared_region_size": model.total_vm_size,
            "max_slide": max_slide(model.subcaches, model.config),
            "os_version": os_version(model.dylibs, model.config.platform),
            "dynamic_data_offset": vm_offset(self.dynamic_config.vm_addr, model.config.base_address),
            "dynamic_data_max_size": self.dynamic_config.size,
        }

    def write(self, model: CacheModel, buffers: CacheBuffers, fields: dict[SubCache, HeaderFields]) -> None:
        """Write every file's header area (UUIDs and code signature fields come with signing)."""
        for sub in model.subcaches:
            chunk = self.chunks[sub]
            own = fields[sub]
            if sub.kind is SubCacheKind.MAIN:
                own.values.update(self.main_fields(model))
            view = buffers.of(sub)[chunk.file_offset : chunk.file_end].data
            write_header(view, sub, model.config, model.dylibs, model.subcaches, own)
            view.release()


def write_header(
    buf: bytearray | memoryview,
    sub: SubCache,
    config: CacheConfig,
    dylibs: list[CacheDylib],
    subcaches: list[SubCache],
    fields: HeaderFields,
) -> CacheHeader:
    """Write ``sub``'s header area into ``buf`` (its first bytes); returns the header record.

    ``fields`` holds the slide info of each data region and the fields the optimizers own.
    UUIDs and the code signature fields are filled in later (code_sign.py).
    """
    regions = sub.mapped_regions()
    n = len(regions)
    mapping_off = HEADER_SIZE
    with_slide_off = mapping_off + n * MappingAndSlideInfo.SIZE
    for i, r in enumerate(regions):
        MappingInfo(r.vm_addr, r.file_size, r.file_offset, r.kind.max_prot, r.kind.init_prot).pack_into(
            buf, mapping_off + i * MappingInfo.SIZE
        )
        so, ss = fields.slide_info.get(r.kind, (0, 0))
        MappingAndSlideInfo(
            r.vm_addr,
            r.file_size,
            r.file_offset,
            so,
            ss,
            r.kind.mapping_flags,
            r.kind.max_prot,
            r.kind.init_prot,
        ).pack_into(buf, with_slide_off + i * MappingAndSlideInfo.SIZE)
    header = CacheHeader(
        magic=cache_magic(config.arch.name),
        mapping_offset=mapping_off,
        mapping_count=n,
        mapping_with_slide_offset=with_slide_off,
        mapping_with_slide_count=n,
        cache_type=config.cache_type,
        platform=config.platform & 0xFF,
        format_flags=CacheHeader.pack_format_flags(dylibs_expected_on_disk=config.dylibs_expected_on_disk),
        shared_region_start=sub.vm_addr,
        rosetta_read_only_addr=sub.rosetta_read_only[0],
        rosetta_read_only_size=sub.rosetta_read_only[1],
        rosetta_read_write_addr=sub.rosetta_read_write[0],
        rosetta_read_write_size=sub.rosetta_read_write[1],
        # shared subcaches and .symbols are "customer" (1); the main development cache is 0
        cache_sub_type=0 if sub.kind is SubCacheKind.MAIN else 1,
    )
    if needs_image_list(sub):
        images_off = with_slide_off + n * MappingAndSlideInfo.SIZE
        text_off = images_off + ImageInfo.SIZE * len(dylibs)
        sub_off = text_off + ImageTextInfo.SIZE * len(dylibs)
        listed = [s for s in subcaches if s.kind is SubCacheKind.SUB] if sub.kind is SubCacheKind.MAIN else []
        string_off = sub_off + SubcacheEntry.SIZE * len(listed)
        for i, d in enumerate(dylibs):
            path = encode_name(d.install_name) + b"\0"
            buf[string_off : string_off + len(path)] = path
            f = d.input.file
            mtime, inode = (f.mtime, f.inode) if config.dylibs_expected_on_disk else (0, 0)
            ImageInfo(d.cache_load_address, mtime, inode, string_off, 0).pack_into(
                buf, images_off + i * ImageInfo.SIZE
            )
            ImageTextInfo(
                d.image.uuid or bytes(16), d.cache_load_address, d.text.cache_size, string_off
            ).pack_into(buf, text_off + i * ImageTextInfo.SIZE)
            string_off += len(path)
        for i, s in enumerate(listed):
            # the UUID is copied in once that file is signed
            SubcacheEntry(
                bytes(16), vm_offset(s.vm_addr, config.base_address), s.suffix.encode().ljust(32, b"\0")
            ).pack_into(buf, sub_off + i * SubcacheEntry.SIZE)
        header = dataclasses.replace(
            header,
            images_offset=images_off,
            images_count=len(dylibs),
            images_text_offset=text_off,
            images_text_count=len(dylibs),
            sub_cache_array_offset=sub_off,
            sub_cache_array_count=len(listed),
        )
    values: dict[str, Any] = dict(fields.values)
    header = dataclasses.replace(header, **values)
    header.pack_into(buf, 0)
    return header


def header_uuid(buf: np.ndarray) -> bytes:
    """The UUID in the header at the start of ``buf`` (set when the file is signed)."""
    return CacheHeader.unpack_from(buf, 0).uuid
