"""ObjC records of a dyld shared cache, declared once for the reader and (later) the builder.

Two families (``docs/cache-format.md`` §5; objc4 ``objc-abi.h`` and ``objc-runtime-new.h``; dyld
``include/objc-shared-cache.h`` and ``common/OptimizerObjC.h``):

- the optimization tables dyld writes: libobjc's ``objc_opt_t`` in ``__TEXT,__objc_opt_ro``
  (version 15: dyld-832..852; version 16: dyld-940..1162), the perfect-hash string tables
  (selectors; class and protocol names), the header_info lists and IMP caches;
- the runtime metadata the compiler emits and the tables point at: ``class_t``,
  ``class_ro_t``, method/protocol/property lists, ``protocol_t``, ``category_t``.

Everything is little-endian and 64-bit (the only pointer size this project reads).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ..record import Record

# ---------------------------------------------------------------------------------------------
# where the tables are

#: the image whose ``__TEXT,__objc_opt_ro`` holds objc_opt_t
LIBOBJC_PATH = "/usr/lib/libobjc.A.dylib"
OBJC_OPT_RO_SECTION = ("__TEXT", "__objc_opt_ro")
#: libobjc's IMP-cache offsets (``objc_opt_offsets``, after ``objc_opt_preopt_caches_version``)
OBJC_SCOFFS_SECTION = "__objc_scoffs"
OBJC_PREOPT_CACHES_VERSION_SYMBOL = "_objc_opt_preopt_caches_version"
#: the words dyld-1162 fills (setObjCImpCachesPointers): selector strings start, end, then
#: inlined selectors start, end (left 0)
OBJC_OPT_OFFSETS_SYMBOL = "_objc_opt_offsets"
OBJC_OPT_OFFSETS_SEGMENT = "__DATA_CONST"
#: objc_opt_t versions: 15 has the legacy table layouts, 16 the "large shared cache" ones
OBJC_OPT_VERSION_LEGACY = 15
OBJC_OPT_VERSION_LARGE = 16

# objc_opt_t.flags and ObjCOptimizationHeader.flags
OBJC_OPT_IS_PRODUCTION = 1 << 0
OBJC_OPT_NO_MISSING_WEAK_SUPERCLASSES = 1 << 1
OBJC_OPT_LARGE_SHARED_CACHE = 1 << 2
OBJC_OPT_FLAG_NAMES = {
    OBJC_OPT_IS_PRODUCTION: "IsProduction",
    OBJC_OPT_NO_MISSING_WEAK_SUPERCLASSES: "NoMissingWeakSuperclasses",
    OBJC_OPT_LARGE_SHARED_CACHE: "LargeSharedCache",
}

# objc_image_info.flags (objc-abi.h)
IMAGE_INFO_DYLD_CATEGORIES_OPTIMIZED = 1 << 0
IMAGE_INFO_SUPPORTS_GC = 1 << 1
IMAGE_INFO_REQUIRES_GC = 1 << 2
IMAGE_INFO_OPTIMIZED_BY_DYLD = 1 << 3
IMAGE_INFO_SIGNED_CLASS_RO = 1 << 4
IMAGE_INFO_IS_SIMULATED = 1 << 5
IMAGE_INFO_HAS_CATEGORY_CLASS_PROPERTIES = 1 << 6
IMAGE_INFO_OPTIMIZED_BY_DYLD_CLOSURE = 1 << 7
IMAGE_INFO_FLAG_NAMES = {
    IMAGE_INFO_DYLD_CATEGORIES_OPTIMIZED: "DyldCategoriesOptimized",
    IMAGE_INFO_SUPPORTS_GC: "SupportsGC",
    IMAGE_INFO_REQUIRES_GC: "RequiresGC",
    IMAGE_INFO_OPTIMIZED_BY_DYLD: "OptimizedByDyld",
    IMAGE_INFO_SIGNED_CLASS_RO: "SignedClassRO",
    IMAGE_INFO_IS_SIMULATED: "IsSimulated",
    IMAGE_INFO_HAS_CATEGORY_CLASS_PROPERTIES: "HasCategoryClassProperties",
    IMAGE_INFO_OPTIMIZED_BY_DYLD_CLOSURE: "OptimizedByDyldClosure",
}

# ---------------------------------------------------------------------------------------------
# objc_opt_t (libobjc __TEXT,__objc_opt_ro); every offset is relative to the objc_opt_t itself


@dataclass(frozen=True, slots=True)
class ObjCOptV15(Record):
    """objc_opt_t version 15 (dyld-832..852 ``objc-shared-cache.h``), 32 bytes"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<2I6i")
    version: int = OBJC_OPT_VERSION_LEGACY
    flags: int = 0
    selopt_offset: int = 0  # objc_selopt_t (legacy string table)
    headeropt_ro_offset: int = 0
    clsopt_offset: int = 0  # objc_clsopt_t (legacy class table)
    protocolopt_offset: int = 0  # objc_protocolopt_t (oldest protocol table; 0 once protocolopt2 exists)
    headeropt_rw_offset: int = 0
    protocolopt2_offset: int = 0  # objc_protocolopt2_t (class-table layout)


assert ObjCOptV15.SIZE == 32


@dataclass(frozen=True, slots=True)
class ObjCOptV16(Record):
    """objc_opt_t version 16 (dyld-940..1162 ``objc-shared-cache.h``), 48 bytes"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<2I8iq")
    version: int = OBJC_OPT_VERSION_LARGE
    flags: int = 0
    selopt_offset: int = 0  # SelectorHashTable
    headeropt_ro_offset: int = 0
    unused_clsopt_offset: int = 0
    unused_protocolopt_offset: int = 0
    headeropt_rw_offset: int = 0
    unused_protocolopt2_offset: int = 0
    large_shared_caches_class_offset: int = 0  # ClassHashTable
    large_shared_caches_protocol_offset: int = 0  # ProtocolHashTable
    relative_method_selector_base_address_offset: int = 0  # int64; the magic selector


assert ObjCOptV16.SIZE == 48

# ---------------------------------------------------------------------------------------------
# perfect-hash string tables (selectors; names of the class and protocol tables)


@dataclass(frozen=True, slots=True)
class LegacyStringHashHeader(Record):
    """objc_stringhash_t (objc_opt_t v15): string offsets are from the table's start"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6IQ")
    capacity: int = 0
    occupied: int = 0
    shift: int = 0
    mask: int = 0
    unused1: int = 0
    unused2: int = 0
    salt: int = 0


@dataclass(frozen=True, slots=True)
class StringHashHeader(Record):
    """objc::StringHashTable (v16 and dyld-1162): a version word first, offsets from the table"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<6IQ")
    version: int = 0
    capacity: int = 0
    occupied: int = 0
    shift: int = 0
    mask: int = 0
    padding: int = 0
    salt: int = 0


assert LegacyStringHashHeader.SIZE == StringHashHeader.SIZE == 32
#: scramble[256] (u32) follows either header
SCRAMBLE_COUNT = 256
#: the fixed part of a string table: header and scramble; then tab[mask+1], checkbytes[capacity],
#: offsets[capacity] (int32)
STRING_TABLE_FIXED = 32 + 4 * SCRAMBLE_COUNT
#: the largest capacity a reader accepts (2**26 strings; Apple's largest caches hold < 2**20)
MAX_TABLE_CAPACITY = 1 << 26

# ObjectHashTable.ObjectData (v16 / 1162): bit 0 isDuplicate, bits 1-47 cache offset (or index
# into the duplicates), bits 48-63 dylib objc index (or duplicate count)
OBJECT_DATA_DUPLICATE = 1
OBJECT_DATA_OFFSET_SHIFT = 1
OBJECT_DATA_OFFSET_MASK = (1 << 47) - 1
OBJECT_DATA_INDEX_SHIFT = 48
#: objc_classheader_t (v15): int32 clsOffset, int32 hiOffset, both from the table's start; a
#: duplicate has clsOffset = count << 1 | 1 and hiOffset = its first index in the duplicates
LEGACY_CLASS_HEADER = struct.Struct("<ii")

# ---------------------------------------------------------------------------------------------
# header_info lists (objc_headeropt_ro_t / objc_headeropt_rw_t)

#: {u32 count, u32 entsize} before the entries of both lists
LIST_HEADER = struct.Struct("<II")
#: header_info_ro entry: int64 mhdr_offset, int64 info_offset (each from its own field), then
#: (dyld-1162, entsize 24) int64 metadata_offset to the dylib's PrebuiltLoader
HEADER_INFO_RO_MIN_ENTSIZE = 16
#: header_info_rw entry (64-bit): isLoaded:1, allClassesRealized:1, next:62
HEADER_INFO_RW_ENTSIZE = 8
#: objc_image_info: u32 version, u32 flags
IMAGE_INFO = struct.Struct("<II")

# ---------------------------------------------------------------------------------------------
# IMP caches (preopt_cache_t in objc4; ImpCacheHeader_v1/v2 in dyld's OptimizerObjC.h)

#: v1 (objc_opt_preopt_caches_version < 3): int32 fallback_class_offset, then
#: cache_shift:5, cache_mask:11, occupied:14, has_inlines:1, bit_one:1
IMP_CACHE_HEADER_V1 = struct.Struct("<iI")
#: v2 (version >= 3): int64 fallback_class_offset, the same bits, then unused:31, bit_one:1
IMP_CACHE_HEADER_V2 = struct.Struct("<qII")
#: ImpCacheEntry_v1: u32 selOffset, u32 impOffset (IMP = class - impOffset)
IMP_CACHE_ENTRY_V1_EMPTY_SEL = 0xFFFFFFF
#: ImpCacheEntry_v2: impOffset:38 (signed, in 4-byte units, IMP = class - impOffset*4), selOffset:26
IMP_CACHE_ENTRY_V2_EMPTY_SEL = 0x3FFFFFF
IMP_CACHES_V2_FROM_VERSION = 3

# ---------------------------------------------------------------------------------------------
# runtime metadata (objc-runtime-new.h, 64-bit)

#: objc_class: isa, superclass, cache (buckets, maybe-mask/preopt cache), bits (class_ro_t | flags)
CLASS_T_WORDS = 5
CLASS_T_PREOPT_CACHE_WORD = 3
CLASS_T_BITS_WORD = 4
#: class_t.bits: the class_ro_t pointer (the 0x0f.. bits are ptrauth-free tag bits on device)
FAST_DATA_MASK = 0x00007FFFFFFFFFF8
FAST_IS_SWIFT_LEGACY = 1 << 0
FAST_IS_SWIFT_STABLE = 1 << 1
#: class_ro_t: u32 flags, instanceStart, instanceSize, reserved; then 7 pointers: ivarLayout,
#: name, baseMethods, baseProtocols, ivars, weakIvarLayout, baseProperties
CLASS_RO_HEAD = struct.Struct("<4I")
CLASS_RO_POINTERS = 7
CLASS_RO_NAME_WORD = 1
CLASS_RO_METHODS_WORD = 2
CLASS_RO_PROTOCOLS_WORD = 3
CLASS_RO_PROPERTIES_WORD = 6
RO_META = 1 << 0
#: PointerUnion tag: the pointer is a relative_list_list_t, not a plain list
LIST_OF_LISTS_TAG = 1
#: method_list_t.entsizeAndFlags: the flag bits (FlagMask 0xffff0003) and two of them
METHOD_LIST_FLAG_MASK = 0xFFFF0003
SMALL_METHOD_LIST_FLAG = 0x80000000
RELATIVE_SELECTORS_ARE_DIRECT_FLAG = 0x40000000
#: entsize of relative (small) methods: int32 name, types, imp offsets; and of pointer (big) ones
SMALL_METHOD_SIZE = 12
BIG_METHOD_SIZE = 24
#: entsize_list_tt header: u32 entsizeAndFlags, u32 count
ENTSIZE_LIST = struct.Struct("<II")
#: relative_list_list_entry_t: imageIndex:16, listOffset:48 (signed, from the entry)
LIST_OF_LISTS_ENTRY = 8
#: the largest element count a list may claim (a guard against garbage)
MAX_LIST_COUNT = 1 << 20
#: protocol_t: isa, mangledName, protocols, instanceMethods, classMethods,
#: optionalInstanceMethods, optionalClassMethods, instanceProperties, then u32 size, u32 flags,
#: then (if size covers them) extendedMethodTypes, demangledName, classProperties
PROTOCOL_T_WORDS = 8
PROTOCOL_T_SIZE_FLAGS = struct.Struct("<II")
#: category_t: name, cls, instanceMethods, classMethods, protocols, instanceProperties,
#: classProperties (present when the image info has HasCategoryClassProperties)
CATEGORY_T_WORDS = 7
