"""dyld shared cache on-disk records (dyld-1162 ``dyld_cache_format.h``, ``CachePatching.h``,
``OptimizerSwift.h``, ``DyldSharedCache.h``), declared once for the reader and the builder.

Single records are :class:`~dyldcache.record.Record` dataclasses whose fields all default to
zero, so the builder can name only what it sets; arrays (patch table elements) are numpy
structured dtypes with explicit little-endian fields. Everything here is little-endian.

The header's own size is its ``mappingOffset`` (the mapping array follows it), so readers
test "does this header reach field X" rather than a version number: see
:meth:`CacheHeader.has_field` and ``docs/cache-format.md`` §1.4.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from ..errors import CacheFormatError
from ..record import Record, cstr

# ---------------------------------------------------------------------------------------------
# constants

#: size of the dyld-1162 header (and the mappingOffset the builder writes)
HEADER_SIZE = 0x200
#: prefix every cache magic starts with; tools only look at this part
MAGIC_PREFIX = b"dyld_v1"

#: cacheType: a development cache (dylibs kept on disk, extra checks allowed)
CACHE_TYPE_DEVELOPMENT = 0
#: cacheType: a production (customer) cache; 1162 never writes it as a cacheType
CACHE_TYPE_PRODUCTION = 1
#: cacheType: a universal (multi-cache) build whose flavour is in cacheSubType
CACHE_TYPE_UNIVERSAL = 2
#: cacheSubType of a universal cache (and of shared subcaches)
CACHE_SUBTYPE_DEVELOPMENT = 0
CACHE_SUBTYPE_PRODUCTION = 1
CACHE_TYPE_NAMES = {
    CACHE_TYPE_DEVELOPMENT: "development",
    CACHE_TYPE_PRODUCTION: "production",
    CACHE_TYPE_UNIVERSAL: "universal",
}

# dyld_cache_mapping_and_slide_info.flags
DYLD_CACHE_MAPPING_AUTH_DATA = 0x1
DYLD_CACHE_MAPPING_DIRTY_DATA = 0x2
DYLD_CACHE_MAPPING_CONST_DATA = 0x4
DYLD_CACHE_MAPPING_TEXT_STUBS = 0x8
DYLD_CACHE_DYNAMIC_CONFIG_DATA = 0x10
# later than 1162; named so readers of newer caches print them
DYLD_CACHE_READ_ONLY_DATA = 0x20
DYLD_CACHE_MAPPING_CONST_TPRO_DATA = 0x40

# slide info v2 page_starts / page_extras attributes
DYLD_CACHE_SLIDE_PAGE_ATTRS = 0xC000
DYLD_CACHE_SLIDE_PAGE_ATTR_EXTRA = 0x8000
DYLD_CACHE_SLIDE_PAGE_ATTR_NO_REBASE = 0x4000
DYLD_CACHE_SLIDE_PAGE_ATTR_END = 0x8000
DYLD_CACHE_SLIDE_PAGE_VALUE = 0x3FFF
# slide info v3 / v5: a page without pointers
DYLD_CACHE_SLIDE_V3_PAGE_ATTR_NO_REBASE = 0xFFFF
DYLD_CACHE_SLIDE_V5_PAGE_ATTR_NO_REBASE = 0xFFFF
# slide info v4 (32-bit, not produced by 1162)
DYLD_CACHE_SLIDE4_PAGE_NO_REBASE = 0xFFFF
DYLD_CACHE_SLIDE4_PAGE_INDEX = 0x7FFF
DYLD_CACHE_SLIDE4_PAGE_USE_EXTRA = 0x8000
DYLD_CACHE_SLIDE4_PAGE_EXTRA_END = 0x8000

#: ``dyld_cache_dynamic_data_header.magic`` written by dyld at run time
DYLD_SHARED_CACHE_DYNAMIC_DATA_MAGIC = b"dyld_data    v0"
#: suffix of the development main file of a universal cache
DEVELOPMENT_SUFFIX = ".development"
#: suffix of the unmapped local symbols file
SYMBOLS_SUFFIX = ".symbols"

# patch table export kinds (dyld_cache_image_export_v2 bits 28-31)
PATCH_KIND_REGULAR = 0
PATCH_KIND_CF_OBJ2 = 1
PATCH_KIND_OBJC_CLASS = 8

# ObjCOptimizationHeader.flags
OBJC_OPT_IS_PRODUCTION = 0x1
OBJC_OPT_NO_MISSING_WEAK_SUPERCLASSES = 0x2
OBJC_OPT_LARGE_SHARED_CACHE = 0x4


def cache_magic(arch: str) -> bytes:
    """The 16-byte magic of a cache for ``arch``: "dyld_v1", the arch right-aligned to column 15, NUL."""
    raw = arch.encode()
    width = 15 - len(MAGIC_PREFIX)
    if not raw or len(raw) > width:
        raise ValueError(f"architecture name {arch!r} does not fit in a cache magic (1-{width} bytes)")
    return MAGIC_PREFIX + raw.rjust(width, b" ") + b"\0"


#: first four bytes of Mach-O files (thin 64/32-bit little-endian, fat big-endian)
_MACHO_STARTS = (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf")


def show_bytes(raw: bytes) -> str:
    """Bytes for an error message: quoted text when they are printable ASCII (trailing NULs
    dropped), else hex (``cf fa ed fe``), never Python's ``b'...'``."""
    text = raw.rstrip(b"\0")
    if text and all(0x20 <= c < 0x7F for c in text):
        return "'" + text.decode("ascii") + "'"
    return raw.hex(" ") if raw else "nothing"


def not_a_cache_message(magic: bytes) -> str:
    """Why a file is not a dyld shared cache, and what it may be instead."""
    hint = ""
    if magic[:4] in _MACHO_STARTS:
        hint = "; it is a Mach-O file: 'dyldcache macho' describes it"
    return f"not a dyld shared cache: it starts with {show_bytes(magic[:16])}, not 'dyld_v1'{hint}"


def magic_arch(magic: bytes) -> str | None:
    """The arch named by a cache magic, or None if it is not one."""
    if not magic.startswith(MAGIC_PREFIX):
        return None
    name = cstr(magic[len(MAGIC_PREFIX) :]).strip()
    return name or None


def _offsets(fmt: str, names: tuple[str, ...]) -> dict[str, int]:
    """Offset of each named field of a ``struct`` format (pad bytes ``x`` have no name)."""
    tokens = re.findall(r"(\d*)([a-zA-Z?])", fmt)
    out: dict[str, int] = {}
    prefix = "<"
    it = iter(names)
    for count, code in tokens:
        if code == "x":
            prefix += count + code
            continue
        reps = 1 if code == "s" else int(count or 1)
        for _ in range(reps):
            out[next(it)] = struct.calcsize(prefix)
            prefix += (count if code == "s" else "") + code
    return out


# ---------------------------------------------------------------------------------------------
# the header


@dataclass(frozen=True, slots=True)
class CacheHeader(Record):
    """struct dyld_cache_header (0x200 bytes in dyld-1162); offsets in the comments."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<16s4I7Q16sQ2I12Q2I11Q2I5Q4I2Q2I16s4Q3I4x6Q")
    FIELD_OFFSETS: ClassVar[dict[str, int]]

    magic: bytes = b"\0" * 16  # 0x000 "dyld_v1" + arch right-aligned to 15 chars + NUL
    mapping_offset: int = 0  # 0x010 file offset of the mapping array = this header's size
    mapping_count: int = 0  # 0x014 entries in both mapping arrays (1..8)
    images_offset_old: int = 0  # 0x018 image array of headers without imagesOffset (0 in 1162)
    images_count_old: int = 0  # 0x01C its count
    dyld_base_address: int = 0  # 0x020 unused
    code_signature_offset: int = 0  # 0x028 file offset of the embedded signature
    code_signature_size: int = 0  # 0x030 its 16 KiB-rounded size; offset + size = file length
    slide_info_offset_unused: int = 0  # 0x038 single slide info of headers <= 0x138 (for mapping 1)
    slide_info_size_unused: int = 0  # 0x040 its size
    local_symbols_offset: int = 0  # 0x048 file offset of dyld_cache_local_symbols_info (.symbols only)
    local_symbols_size: int = 0  # 0x050 bytes from there to the end of the strings
    uuid: bytes = b"\0" * 16  # 0x058 this file's UUID (from its code directory)
    cache_type: int = 0  # 0x068 CACHE_TYPE_*
    branch_pools_offset: int = 0  # 0x070 unused
    branch_pools_count: int = 0  # 0x074 unused
    dyld_in_cache_mh: int = 0  # 0x078 unslid mach_header of dyld when it is a cache dylib
    dyld_in_cache_entry: int = 0  # 0x080 unslid entry point of that dyld
    images_text_offset: int = 0  # 0x088 file offset of dyld_cache_image_text_info[]
    images_text_count: int = 0  # 0x090 entries (one per cache dylib)
    patch_info_addr: int = 0  # 0x098 unslid address of the patch table header
    patch_info_size: int = 0  # 0x0A0 bytes reserved for the patch table
    other_image_group_addr_unused: int = 0  # 0x0A8 unused
    other_image_group_size_unused: int = 0  # 0x0B0 unused
    prog_closures_addr: int = 0  # 0x0B8 dyld3 launch closures (0 in 1162)
    prog_closures_size: int = 0  # 0x0C0
    prog_closures_trie_addr: int = 0  # 0x0C8
    prog_closures_trie_size: int = 0  # 0x0D0
    platform: int = 0  # 0x0D8 PLATFORM_* number of the cache
    format_flags: int = 0  # 0x0DC bitfield word; see the properties below
    shared_region_start: int = 0  # 0x0E0 unslid address of this file's first mapping
    shared_region_size: int = 0  # 0x0E8 main file: VM span of all files (+ dynamic data reserve)
    max_slide: int = 0  # 0x0F0 main file: largest slide the kernel may pick
    dylibs_image_array_addr: int = 0  # 0x0F8 dyld3 ImageArray (0 in 1162)
    dylibs_image_array_size: int = 0  # 0x100
    dylibs_trie_addr: int = 0  # 0x108 unslid address of the install-name -> image index trie
    dylibs_trie_size: int = 0  # 0x110 its size (padded to 8)
    other_image_array_addr: int = 0  # 0x118 dyld3 era, 0
    other_image_array_size: int = 0  # 0x120
    other_trie_addr: int = 0  # 0x128 dyld3 era, 0
    other_trie_size: int = 0  # 0x130
    mapping_with_slide_offset: int = 0  # 0x138 file offset of dyld_cache_mapping_and_slide_info[]
    mapping_with_slide_count: int = 0  # 0x13C = mapping_count
    dylibs_pbl_state_array_addr_unused: int = 0  # 0x140 unused
    dylibs_pbl_set_addr: int = 0  # 0x148 unslid address of the cache dylibs' PrebuiltLoaderSet
    programs_pbl_set_pool_addr: int = 0  # 0x150 pool of per-program PrebuiltLoaderSets
    programs_pbl_set_pool_size: int = 0  # 0x158
    program_trie_addr: int = 0  # 0x160 trie: program path -> offset in that pool
    program_trie_size: int = 0  # 0x168 (u32)
    os_version: int = 0  # 0x16C minOS of the cache's main platform (0xXXXXYYZZ)
    alt_platform: int = 0  # 0x170 second platform (macCatalyst on macOS) or 0
    alt_os_version: int = 0  # 0x174 its minOS
    swift_opts_offset: int = 0  # 0x178 VM offset from the cache base of SwiftOptimizationHeader
    swift_opts_size: int = 0  # 0x180 its size (1162 leaves it 0)
    sub_cache_array_offset: int = 0  # 0x188 file offset of the subcache entries
    sub_cache_array_count: int = 0  # 0x18C number of subcache files (main file only)
    symbol_file_uuid: bytes = b"\0" * 16  # 0x190 UUID of the .symbols file, zero if none
    rosetta_read_only_addr: int = 0  # 0x1A0 x86_64: space Rosetta may fill with RO/RX data
    rosetta_read_only_size: int = 0  # 0x1A8
    rosetta_read_write_addr: int = 0  # 0x1B0 x86_64: space Rosetta may fill with RW data
    rosetta_read_write_size: int = 0  # 0x1B8
    images_offset: int = 0  # 0x1C0 file offset of dyld_cache_image_info[]
    images_count: int = 0  # 0x1C4 number of cache dylibs
    cache_sub_type: int = 0  # 0x1C8 CACHE_SUBTYPE_* (universal caches); 0x1CC is padding
    objc_opts_offset: int = 0  # 0x1D0 VM offset from the cache base of ObjCOptimizationHeader
    objc_opts_size: int = 0  # 0x1D8 its size (1162 writes 32 instead of 56)
    cache_atlas_offset: int = 0  # 0x1E0 not built by 1162
    cache_atlas_size: int = 0  # 0x1E8
    dynamic_data_offset: int = 0  # 0x1F0 VM offset from the cache base of the dynamic data reserve
    dynamic_data_max_size: int = 0  # 0x1F8 size of that reserve (16 KiB)

    # -- the bitfield word at 0x0DC ----------------------------------------------------------------

    @property
    def format_version(self) -> int:
        """Bits 0-7: the dyld3 closure format version (0 in 1162)."""
        return self.format_flags & 0xFF

    @property
    def dylibs_expected_on_disk(self) -> bool:
        """Bit 8: image_info inode/mtime identify the on-disk dylibs."""
        return bool(self.format_flags >> 8 & 1)

    @property
    def simulator(self) -> bool:
        """Bit 9: a simulator cache."""
        return bool(self.format_flags >> 9 & 1)

    @property
    def locally_built_cache(self) -> bool:
        """Bit 10: built on the device rather than by Apple's build system."""
        return bool(self.format_flags >> 10 & 1)

    @property
    def built_from_chained_fixups(self) -> bool:
        """Bit 11: unused by 1162."""
        return bool(self.format_flags >> 11 & 1)

    @staticmethod
    def pack_format_flags(
        format_version: int = 0,
        *,
        dylibs_expected_on_disk: bool = False,
        simulator: bool = False,
        locally_built_cache: bool = False,
        built_from_chained_fixups: bool = False,
    ) -> int:
        """The 0x0DC word for the given bits."""
        if not 0 <= format_version <= 0xFF:
            raise ValueError(f"format version {format_version} does not fit in 8 bits")
        return (
            format_version
            | int(dylibs_expected_on_disk) << 8
            | int(simulator) << 9
            | int(locally_built_cache) << 10
            | int(built_from_chained_fixups) << 11
        )

    # -- header versions ---------------------------------------------------------------------------

    @classmethod
    def offset_of(cls, field: str) -> int:
        return cls.FIELD_OFFSETS[field]

    def has_field(self, field: str) -> bool:
        """Whether this header is long enough to hold ``field`` (its offset < mappingOffset)."""
        return self.FIELD_OFFSETS[field] < self.mapping_offset

    @property
    def arch(self) -> str | None:
        return magic_arch(self.magic)

    @classmethod
    def read_any(cls, buf: Any, path: str, offset: int = 0) -> Self:
        """Read a header of any dyld version, honouring its mappingOffset.

        Headers of older dylds are shorter; whatever follows them (the mapping array) is not
        header, so every field at or past ``mappingOffset`` reads as 0.
        """
        size = len(buf) - offset
        magic = bytes(buf[offset : offset + 16]) if size > 0 else b""
        if len(magic) >= len(MAGIC_PREFIX) and not magic.startswith(MAGIC_PREFIX):
            raise CacheFormatError(path, offset, not_a_cache_message(magic))
        if size < 0x18:
            raise CacheFormatError(
                path, offset, f"file is too small for a dyld cache header ({max(size, 0)} bytes)"
            )
        mapping_offset = int.from_bytes(buf[offset + 0x10 : offset + 0x14], "little")
        # the smallest header ever shipped (dyld-195) is 0x48 bytes; the images fields at 0x18
        # are the least any reader needs
        if mapping_offset < 0x20:
            raise CacheFormatError(
                path, offset + 0x10, f"mappingOffset {mapping_offset:#x} is smaller than any header"
            )
        have = min(mapping_offset, cls.SIZE)
        if size < have:
            raise CacheFormatError(
                path, offset, f"header ({have:#x} bytes) extends past the end of the file ({size:#x})"
            )
        raw = bytes(buf[offset : offset + have]).ljust(cls.SIZE, b"\0")
        return cls.unpack_from(raw)


CacheHeader.FIELD_OFFSETS = _offsets(CacheHeader.STRUCT.format, CacheHeader.__match_args__)
assert CacheHeader.SIZE == HEADER_SIZE
assert CacheHeader.FIELD_OFFSETS["format_flags"] == 0xDC
assert CacheHeader.FIELD_OFFSETS["mapping_with_slide_offset"] == 0x138
assert CacheHeader.FIELD_OFFSETS["os_version"] == 0x16C
assert CacheHeader.FIELD_OFFSETS["symbol_file_uuid"] == 0x190
assert CacheHeader.FIELD_OFFSETS["images_offset"] == 0x1C0
assert CacheHeader.FIELD_OFFSETS["cache_sub_type"] == 0x1C8
assert CacheHeader.FIELD_OFFSETS["objc_opts_offset"] == 0x1D0
assert CacheHeader.FIELD_OFFSETS["dynamic_data_max_size"] == 0x1F8


# ---------------------------------------------------------------------------------------------
# mappings, images, subcaches


@dataclass(frozen=True, slots=True)
class MappingInfo(Record):
    """struct dyld_cache_mapping_info (at mappingOffset)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<3Q2I")
    address: int = 0  # unslid VM address
    size: int = 0  # VM size = file size (16 KiB multiple)
    file_offset: int = 0  # where the bytes are in this file
    max_prot: int = 0  # VM_PROT_* ceiling
    init_prot: int = 0  # VM_PROT_* at map time


assert MappingInfo.SIZE == 32


@dataclass(frozen=True, slots=True)
class MappingAndSlideInfo(Record):
    """struct dyld_cache_mapping_and_slide_info (at mappingWithSlideOffset)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6Q2I")
    address: int = 0  # unslid VM address
    size: int = 0  # VM size = file size
    file_offset: int = 0  # where the bytes are in this file
    slide_info_file_offset: int = 0  # slide info blob, in this file's LINKEDIT mapping
    slide_info_file_size: int = 0  # 0 = the mapping holds no pointers to slide
    flags: int = 0  # DYLD_CACHE_MAPPING_*
    max_prot: int = 0
    init_prot: int = 0


assert MappingAndSlideInfo.SIZE == 56


@dataclass(frozen=True, slots=True)
class ImageInfo(Record):
    """struct dyld_cache_image_info"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<3Q2I")
    address: int = 0  # unslid address of the image's mach_header
    mod_time: int = 0  # input file mtime when dylibs stay on disk, else 0
    inode: int = 0  # input file inode when dylibs stay on disk, else 0
    path_file_offset: int = 0  # install name string, offset in this (main) file
    pad: int = 0


assert ImageInfo.SIZE == 32


@dataclass(frozen=True, slots=True)
class ImageTextInfo(Record):
    """struct dyld_cache_image_text_info"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<16sQ2I")
    uuid: bytes = b"\0" * 16  # the image's LC_UUID
    load_address: int = 0  # unslid address of its __TEXT
    text_segment_size: int = 0  # cache vmsize of that __TEXT
    path_offset: int = 0  # install name string, offset in this (main) file


assert ImageTextInfo.SIZE == 32


@dataclass(frozen=True, slots=True)
class SubcacheEntryV1(Record):
    """struct dyld_subcache_entry_v1 (headers without cacheSubType; files named <main>.N)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<16sQ")
    uuid: bytes = b"\0" * 16  # UUID in that file's header
    cache_vm_offset: int = 0  # its first address minus the cache base


assert SubcacheEntryV1.SIZE == 24


@dataclass(frozen=True, slots=True)
class SubcacheEntry(Record):
    """struct dyld_subcache_entry (dyld-1162)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<16sQ32s")
    uuid: bytes = b"\0" * 16  # UUID in that file's header
    cache_vm_offset: int = 0  # its first address minus the cache base
    file_suffix: bytes = b"\0" * 32  # appended to the main path, e.g. ".01", NUL padded

    @property
    def suffix(self) -> str:
        return cstr(self.file_suffix)


assert SubcacheEntry.SIZE == 56


@dataclass(frozen=True, slots=True)
class LocalSymbolsInfo(Record):
    """struct dyld_cache_local_symbols_info; offsets are from the start of this record"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6I")
    nlist_offset: int = 0  # nlist array
    nlist_count: int = 0
    strings_offset: int = 0  # string pool shared by all entries
    strings_size: int = 0
    entries_offset: int = 0  # per-dylib entries
    entries_count: int = 0


assert LocalSymbolsInfo.SIZE == 24


@dataclass(frozen=True, slots=True)
class LocalSymbolsEntry64(Record):
    """struct dyld_cache_local_symbols_entry_64 (headers reaching symbolFileUUID)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<Q2I")
    dylib_offset: int = 0  # VM offset of the dylib's mach_header from the cache base
    nlist_start_index: int = 0  # first of its locals in the nlist array
    nlist_count: int = 0


assert LocalSymbolsEntry64.SIZE == 16


@dataclass(frozen=True, slots=True)
class LocalSymbolsEntry32(Record):
    """struct dyld_cache_local_symbols_entry (older headers)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<3I")
    dylib_offset: int = 0  # file offset of the dylib's mach_header in the cache file
    nlist_start_index: int = 0
    nlist_count: int = 0


assert LocalSymbolsEntry32.SIZE == 12


@dataclass(frozen=True, slots=True)
class DynamicDataHeader(Record):
    """struct dyld_cache_dynamic_data_header (written by dyld, not the builder)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<16s2Q")
    magic: bytes = b"\0" * 16  # DYLD_SHARED_CACHE_DYNAMIC_DATA_MAGIC
    fs_id: int = 0  # fsid_t of the cache file in use
    fs_obj_id: int = 0  # fs_obj_id_t of that file


assert DynamicDataHeader.SIZE == 32


# ---------------------------------------------------------------------------------------------
# slide info headers (the arrays after them are u16)


@dataclass(frozen=True, slots=True)
class SlideInfo1(Record):
    """struct dyld_cache_slide_info: a table of contents into 128-byte page bitmaps"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6I")
    version: int = 1
    toc_offset: int = 0  # u16 toc[toc_count]: bitmap index per 4 KiB page
    toc_count: int = 0
    entries_offset: int = 0  # bitmaps: bit k of byte j marks the u32 at (8j+k)*4
    entries_count: int = 0
    entries_size: int = 128


assert SlideInfo1.SIZE == 24


@dataclass(frozen=True, slots=True)
class SlideInfo2(Record):
    """struct dyld_cache_slide_info2: per-page chains threaded through the pointers' spare bits"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6I2Q")
    version: int = 2
    page_size: int = 0  # 4096 for the kernel
    page_starts_offset: int = 0  # u16 page_starts[], from the start of this header
    page_starts_count: int = 0  # mapping size / page size
    page_extras_offset: int = 0  # u16 page_extras[] (0 when unused)
    page_extras_count: int = 0
    delta_mask: int = 0  # contiguous bits holding (distance to next pointer) / 4
    value_add: int = 0  # added to every non-zero value (the cache base on x86_64)


assert SlideInfo2.SIZE == 40


@dataclass(frozen=True, slots=True)
class SlideInfo3(Record):
    """struct dyld_cache_slide_info3 (arm64e); u16 page_starts[] follow at offset 24"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<3I4xQ")
    version: int = 3
    page_size: int = 0  # 4096 for the kernel
    page_starts_count: int = 0  # mapping size / page size
    auth_value_add: int = 0  # added to the 32-bit offset of authenticated pointers (cache base)


assert SlideInfo3.SIZE == 24


@dataclass(frozen=True, slots=True)
class SlideInfo4(Record):
    """struct dyld_cache_slide_info4 (32-bit caches; same shape as v2, not produced by 1162)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6I2Q")
    version: int = 4
    page_size: int = 0
    page_starts_offset: int = 0
    page_starts_count: int = 0
    page_extras_offset: int = 0
    page_extras_count: int = 0
    delta_mask: int = 0  # 0xC0000000
    value_add: int = 0  # cache base


assert SlideInfo4.SIZE == 40


@dataclass(frozen=True, slots=True)
class SlideInfo5(Record):
    """struct dyld_cache_slide_info5 (arm64e, caches over 4 GiB); u16 page_starts[] at offset 24"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<3I4xQ")
    version: int = 5
    page_size: int = 0  # 16384 for the kernel
    page_starts_count: int = 0  # mapping size / page size
    value_add: int = 0  # added to every 34-bit runtime offset (cache base)


assert SlideInfo5.SIZE == 24


# ---------------------------------------------------------------------------------------------
# ObjC and Swift optimization headers (in LINKEDIT; located by VM offsets in the main header)


@dataclass(frozen=True, slots=True)
class ObjCOptimizationHeader(Record):
    """ObjCOptimizationHeader (DyldSharedCache.h); every *_offset is a VM offset from the cache base"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<2I6Q")
    version: int = 1
    flags: int = 0  # OBJC_OPT_*
    header_info_ro_cache_offset: int = 0  # header_info_ro list (text region)
    header_info_rw_cache_offset: int = 0  # header_info_rw list (data or auth region)
    selector_hash_table_cache_offset: int = 0
    class_hash_table_cache_offset: int = 0
    protocol_hash_table_cache_offset: int = 0
    relative_method_selector_base_address_offset: int = 0  # start of the selector strings


assert ObjCOptimizationHeader.SIZE == 56


@dataclass(frozen=True, slots=True)
class SwiftOptimizationHeader(Record):
    """SwiftOptimizationHeader (OptimizerSwift.h); the offsets are VM offsets from the cache base"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<2I3Q")
    version: int = 1
    padding: int = 0
    type_conformance_hash_table_cache_offset: int = 0
    metadata_conformance_hash_table_cache_offset: int = 0
    foreign_type_conformance_hash_table_cache_offset: int = 0


assert SwiftOptimizationHeader.SIZE == 32


# ---------------------------------------------------------------------------------------------
# patch table (CachePatching.h); every *_addr is an unslid VM address


@dataclass(frozen=True, slots=True)
class PatchInfoV1(Record):
    """struct dyld_cache_patch_info_v1 (headers up to swiftOptsSize)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<8Q")
    patch_table_array_addr: int = 0  # PATCH_IMAGE_V1_DTYPE[], one per image
    patch_table_array_count: int = 0
    patch_export_array_addr: int = 0  # PATCH_EXPORT_V1_DTYPE[]
    patch_export_array_count: int = 0
    patch_location_array_addr: int = 0  # PATCH_LOCATION_V1_DTYPE[]
    patch_location_array_count: int = 0
    patch_export_names_addr: int = 0  # NUL-terminated names
    patch_export_names_size: int = 0


assert PatchInfoV1.SIZE == 64


@dataclass(frozen=True, slots=True)
class PatchInfoV2(Record):
    """struct dyld_cache_patch_info_v2 (patchTableVersion 2)"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<2I12Q")
    patch_table_version: int = 2
    patch_location_version: int = 0
    patch_table_array_addr: int = 0  # PATCH_IMAGE_V2_DTYPE[], one per image
    patch_table_array_count: int = 0
    patch_image_exports_array_addr: int = 0  # PATCH_IMAGE_EXPORT_V2_DTYPE[]
    patch_image_exports_array_count: int = 0
    patch_clients_array_addr: int = 0  # PATCH_IMAGE_CLIENTS_V2_DTYPE[]
    patch_clients_array_count: int = 0
    patch_client_exports_array_addr: int = 0  # PATCH_CLIENT_EXPORT_V2_DTYPE[]
    patch_client_exports_array_count: int = 0
    patch_location_array_addr: int = 0  # PATCH_LOCATION_V2_DTYPE[]
    patch_location_array_count: int = 0
    patch_export_names_addr: int = 0  # NUL-terminated names
    patch_export_names_size: int = 0


assert PatchInfoV2.SIZE == 104


@dataclass(frozen=True, slots=True)
class PatchInfoV3(PatchInfoV2):
    """struct dyld_cache_patch_info_v3 / _v4 (same layout; 1162 writes version 4): v2's fields,
    then the GOT tables. In v3 the location arrays hold PATCH_LOCATION_V2_DTYPE /
    PATCH_LOCATION_V3_DTYPE; in v4 PATCH_LOCATION_V4_DTYPE / PATCH_LOCATION_V4_GOT_DTYPE."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<2I18Q")
    patch_table_version: int = 4
    got_clients_array_addr: int = 0  # PATCH_GOT_CLIENTS_V3_DTYPE[], one per image
    got_clients_array_count: int = 0
    got_client_exports_array_addr: int = 0  # PATCH_CLIENT_EXPORT_V2_DTYPE[] for GOT uses
    got_client_exports_array_count: int = 0
    got_location_array_addr: int = 0
    got_location_array_count: int = 0


#: v4 changed only the location element types, not the header
PatchInfoV4 = PatchInfoV3
assert PatchInfoV3.SIZE == 152

#: dyld_cache_image_patches_v1
PATCH_IMAGE_V1_DTYPE = np.dtype([("patch_exports_start_index", "<u4"), ("patch_exports_count", "<u4")])
#: dyld_cache_patchable_export_v1
PATCH_EXPORT_V1_DTYPE = np.dtype(
    [
        ("cache_offset_of_impl", "<u4"),
        ("patch_locations_start_index", "<u4"),
        ("patch_locations_count", "<u4"),
        ("export_name_offset", "<u4"),
    ]
)
#: dyld_cache_patchable_location_v1: the u64 bitfield starts at bit 32 of the first word, so the
#: record is 8 bytes (bits: high7:7, addend:5, authenticated:1, usesAddressDiversity:1, key:2,
#: discriminator:16), as clang lays it out for arm64-apple targets
PATCH_LOCATION_V1_DTYPE = np.dtype([("cache_offset", "<u4"), ("bits", "<u4")])
#: dyld_cache_image_patches_v2
PATCH_IMAGE_V2_DTYPE = np.dtype(
    [
        ("patch_clients_start_index", "<u4"),
        ("patch_clients_count", "<u4"),
        ("patch_exports_start_index", "<u4"),  # into the image exports
        ("patch_exports_count", "<u4"),
    ]
)
#: dyld_cache_image_export_v2; name_and_kind bits 0-27 exportNameOffset, 28-31 patchKind
PATCH_IMAGE_EXPORT_V2_DTYPE = np.dtype([("dylib_offset_of_impl", "<u4"), ("name_and_kind", "<u4")])
PATCH_EXPORT_NAME_OFFSET_MASK = 0x0FFFFFFF
PATCH_KIND_SHIFT = 28
#: dyld_cache_image_clients_v2
PATCH_IMAGE_CLIENTS_V2_DTYPE = np.dtype(
    [("client_dylib_index", "<u4"), ("patch_exports_start_index", "<u4"), ("patch_exports_count", "<u4")]
)
#: dyld_cache_patchable_export_v2 (and _v3, identical)
PATCH_CLIENT_EXPORT_V2_DTYPE = np.dtype(
    [("image_export_index", "<u4"), ("patch_locations_start_index", "<u4"), ("patch_locations_count", "<u4")]
)
#: dyld_cache_image_got_clients_v3
PATCH_GOT_CLIENTS_V3_DTYPE = np.dtype([("patch_exports_start_index", "<u4"), ("patch_exports_count", "<u4")])
#: dyld_cache_patchable_location_v2; bits: 0-6 high7, 7-11 addend, 12 authenticated,
#: 13 usesAddressDiversity, 14-15 key, 16-31 discriminator
PATCH_LOCATION_V2_DTYPE = np.dtype([("dylib_offset_of_use", "<u4"), ("bits", "<u4")])
#: dyld_cache_patchable_location_v3: cache offset of the use, the v2 bits, padding
PATCH_LOCATION_V3_DTYPE = np.dtype([("cache_offset_of_use", "<u8"), ("bits", "<u4"), ("pad", "<u4")])
#: dyld_cache_patchable_location_v4; bits, auth form: 0 authenticated=1, 1-7 high7, 8 isWeakImport,
#: 9-13 addend, 14 usesAddressDiversity, 15 keyIsD, 16-31 discriminator; regular form: 0
#: authenticated=0, 1-7 high7, 8 isWeakImport, 9-31 addend
PATCH_LOCATION_V4_DTYPE = np.dtype([("dylib_offset_of_use", "<u4"), ("bits", "<u4")])
#: dyld_cache_patchable_location_v4_got: cache offset of the GOT slot, the v4 bits, padding
PATCH_LOCATION_V4_GOT_DTYPE = np.dtype(
    [("cache_offset_of_use", "<u8"), ("bits", "<u4"), ("unused_padding", "<u4")]
)

for _dtype, _size in (
    (PATCH_IMAGE_V1_DTYPE, 8),
    (PATCH_EXPORT_V1_DTYPE, 16),
    (PATCH_LOCATION_V1_DTYPE, 8),
    (PATCH_IMAGE_V2_DTYPE, 16),
    (PATCH_IMAGE_EXPORT_V2_DTYPE, 8),
    (PATCH_IMAGE_CLIENTS_V2_DTYPE, 12),
    (PATCH_CLIENT_EXPORT_V2_DTYPE, 12),
    (PATCH_GOT_CLIENTS_V3_DTYPE, 8),
    (PATCH_LOCATION_V2_DTYPE, 8),
    (PATCH_LOCATION_V3_DTYPE, 16),
    (PATCH_LOCATION_V4_DTYPE, 8),
    (PATCH_LOCATION_V4_GOT_DTYPE, 16),
):
    assert _dtype.itemsize == _size, (_dtype, _size)
del _dtype, _size


# ---------------------------------------------------------------------------------------------
# naming


def mapping_name(max_prot: int, flags: int) -> str:
    """The name dyld's tools give a mapping, from its max protection and flags."""
    if max_prot & 4:  # VM_PROT_EXECUTE
        return "__TEXT_STUBS" if flags & DYLD_CACHE_MAPPING_TEXT_STUBS else "__TEXT"
    if max_prot & 2:  # VM_PROT_WRITE
        family = "__AUTH" if flags & DYLD_CACHE_MAPPING_AUTH_DATA else "__DATA"
        if flags & DYLD_CACHE_MAPPING_DIRTY_DATA:
            return family + "_DIRTY"
        if flags & DYLD_CACHE_MAPPING_CONST_TPRO_DATA:
            return "__AUTH_TPRO_CONST" if family == "__AUTH" else "__TPRO_CONST"
        if flags & DYLD_CACHE_MAPPING_CONST_DATA:
            return family + "_CONST"
        return family
    if max_prot & 1:  # VM_PROT_READ
        return "__READ_ONLY" if flags & DYLD_CACHE_READ_ONLY_DATA else "__LINKEDIT"
    return "*unknown*"


def uuid_string(raw: bytes) -> str:
    """8-4-4-4-12 upper-case hex, as Apple's tools print UUIDs."""
    h = raw.hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
