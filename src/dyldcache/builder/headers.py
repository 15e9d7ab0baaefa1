"""Phase 7's cache headers: the dyld_cache_header of every file, its two mapping arrays, the
image lists with their path strings, and the subcache table (``docs/cache-format.md`` §1, §2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
from .cache_dylib import CacheDylib
from .config import REGION_ALIGNMENT, CacheConfig
from .layout import Chunk, RegionKind, SubCache, SubCacheKind
from .types import align_up

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
class MainHeaderInfo:
    """What only the main file's header carries."""

    shared_region_size: int
    max_slide: int
    dylibs_trie: Chunk
    patch_table: Chunk
    prebuilt_loaders: Chunk
    dynamic_config: Chunk
    os_version: int
    alt_platform: int = 0
    alt_os_version: int = 0
    objc_opts: Chunk | None = None
    swift_opts: Chunk | None = None


def write_header(
    buf: bytearray | memoryview,
    sub: SubCache,
    config: CacheConfig,
    dylibs: list[CacheDylib],
    subcaches: list[SubCache],
    slide_infos: dict[RegionKind, tuple[int, int]],
    main: MainHeaderInfo | None,
    symbols_info: tuple[int, int] | None,
) -> CacheHeader:
    """Write ``sub``'s header area into ``buf`` (its first bytes); returns the header record.

    ``slide_infos`` maps a data region kind to (file offset, used size) of its slide info.
    UUIDs and the code signature fields are filled in later (finalize).
    """
    regions = sub.mapped_regions()
    n = len(regions)
    mapping_off = HEADER_SIZE
    with_slide_off = mapping_off + n * MappingAndSlideInfo.SIZE
    for i, r in enumerate(regions):
        MappingInfo(r.vm_addr, r.file_size, r.file_offset, r.kind.max_prot, r.kind.init_prot).pack_into(
            buf, mapping_off + i * MappingInfo.SIZE
        )
        so, ss = slide_infos.get(r.kind, (0, 0))
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
                bytes(16), s.vm_addr - config.base_address, s.suffix.encode().ljust(32, b"\0")
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
    if main is not None:
        base = config.base_address
        header = dataclasses.replace(
            header,
            shared_region_size=main.shared_region_size,
            max_slide=main.max_slide,
            dylibs_trie_addr=main.dylibs_trie.vm_addr,
            dylibs_trie_size=main.dylibs_trie.size,
            patch_info_addr=main.patch_table.vm_addr,
            patch_info_size=main.patch_table.size,
            dylibs_pbl_set_addr=main.prebuilt_loaders.vm_addr,
            os_version=main.os_version,
            alt_platform=main.alt_platform,
            alt_os_version=main.alt_os_version,
            dynamic_data_offset=main.dynamic_config.vm_addr - base,
            dynamic_data_max_size=main.dynamic_config.size,
            objc_opts_offset=main.objc_opts.vm_addr - base if main.objc_opts is not None else 0,
            objc_opts_size=main.objc_opts.size if main.objc_opts is not None else 0,
            swift_opts_offset=main.swift_opts.vm_addr - base if main.swift_opts is not None else 0,
            swift_opts_size=main.swift_opts.size if main.swift_opts is not None else 0,
        )
    if symbols_info is not None:
        header = dataclasses.replace(
            header, local_symbols_offset=symbols_info[0], local_symbols_size=symbols_info[1]
        )
    header.pack_into(buf, 0)
    return header
