"""The ObjC optimization tables of a dyld shared cache: where they are and what they hold.

Three layouts exist (``docs/cache-format.md`` §1.4 and §5):

- dyld-1162 headers (``mappingOffset`` past ``objcOptsSize``) point at an
  ``ObjCOptimizationHeader`` through ``objcOptsOffset``; its tables use the current layouts;
- older caches have no such field: the tables hang off libobjc's ``__TEXT,__objc_opt_ro``
  section, an ``objc_opt_t`` whose offsets are relative to itself. Version 16 (dyld-940..1042)
  uses the current layouts; version 15 (dyld-832..852) the legacy ones.

The current string table starts with a version word, and its class/protocol tables hold
``ObjectData`` words (cache offset and dylib objc index); the legacy one starts with its
capacity, and its class/protocol tables hold pairs of int32 offsets from the table (object and
header_info entry). Either way a name's slot comes from :mod:`~dyldcache.cache.perfect_hash`.

:func:`read_objc_optimization` decodes all of it into plain data; it returns None when the
cache has no ObjC optimization at all. A malformed table raises
:class:`~dyldcache.errors.CacheFormatError` naming the table and the file offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import CacheFormatError, MachOFormatError
from ..names import decode_name, encode_name
from .format import ObjCOptimizationHeader
from .memory import CacheMemory
from .objc_format import (
    HEADER_INFO_RO_MIN_ENTSIZE,
    HEADER_INFO_RW_ENTSIZE,
    IMAGE_INFO,
    IMAGE_INFO_OPTIMIZED_BY_DYLD,
    LEGACY_CLASS_HEADER,
    LIBOBJC_PATH,
    LIST_HEADER,
    MAX_TABLE_CAPACITY,
    OBJC_OPT_RO_SECTION,
    OBJC_OPT_VERSION_LARGE,
    OBJC_OPT_VERSION_LEGACY,
    OBJECT_DATA_DUPLICATE,
    OBJECT_DATA_INDEX_SHIFT,
    OBJECT_DATA_OFFSET_MASK,
    OBJECT_DATA_OFFSET_SHIFT,
    SCRAMBLE_COUNT,
    STRING_TABLE_FIXED,
    LegacyStringHashHeader,
    ObjCOptV15,
    ObjCOptV16,
    StringHashHeader,
)
from .perfect_hash import check_bytes, lookup8_many, slots
from .reader import DyldCache

#: where the tables were found: the dyld-1162 header field, or libobjc's section
SOURCE_HEADER = "objcOptsOffset"
SOURCE_LIBOBJC = "__objc_opt_ro"
#: the table layouts
LAYOUT_CURRENT = "current"
LAYOUT_LEGACY = "legacy"
#: bytes of one object entry of a class/protocol table (ObjectData, or two int32 offsets)
_OBJECT_ENTRY = 8
#: header_info_rw bits
_RW_LOADED = 1
_RW_ALL_CLASSES_REALIZED = 2


# ---------------------------------------------------------------------------------------------
# plain results


@dataclass(slots=True)
class StringTable:
    """A perfect-hash string table, decoded (selectors, or the names of a class/protocol table)."""

    name: str
    address: int
    layout: str
    capacity: int
    occupied: int
    shift: int
    mask: int
    salt: int
    scramble: np.ndarray
    tab: np.ndarray
    checkbytes: np.ndarray
    #: int32 per slot: from the table's start to the string, 0 = empty
    offsets: np.ndarray
    #: the occupied slots (ascending), their strings and the strings' addresses
    slots: np.ndarray
    strings: list[bytes]
    string_addresses: np.ndarray

    @property
    def end(self) -> int:
        """Address just past the offsets array (where a class/protocol table's objects start)."""
        return self.address + STRING_TABLE_FIXED + self.mask + 1 + 5 * self.capacity

    def lookup(self, keys: list[bytes]) -> np.ndarray:
        """dyld's ``tryGetIndex`` for each key: its slot, or -1 when the table does not hold it."""
        out = np.full(len(keys), -1, dtype=np.int64)
        if not self.capacity or not keys:
            return out
        h = slots(lookup8_many(keys, self.salt), self.shift, self.mask, self.scramble, self.tab)
        ok = np.fromiter((len(k) > 0 for k in keys), dtype=bool, count=len(keys))
        ok &= h < self.capacity
        h = np.where(ok, h, 0)
        ok &= (self.checkbytes[h] == check_bytes(keys)) & (self.offsets[h] != 0)
        by_slot = dict(zip(self.slots.tolist(), self.strings, strict=True))
        for i in np.flatnonzero(ok).tolist():
            if by_slot.get(int(h[i])) == keys[i]:
                out[i] = h[i]
        return out


@dataclass(frozen=True, slots=True)
class TableObject:
    """One object (class or protocol) of a class/protocol table."""

    name: str
    address: int
    #: index into the header_info lists (None for the oldest protocol table, which has none)
    objc_index: int | None
    #: the slot of its name
    slot: int
    #: it shares its name with other objects (kept in the duplicates array)
    duplicate: bool


@dataclass(slots=True)
class ObjectTable:
    """A class or protocol hash table: its names and the objects they map to."""

    strings: StringTable
    objects: list[TableObject]
    duplicate_count: int

    def find(self, name: str) -> list[TableObject]:
        """Every object the table gives for ``name``, found through the perfect hash."""
        slot = int(self.strings.lookup([encode_name(name)])[0])
        return [o for o in self.objects if o.slot == slot] if slot >= 0 else []


@dataclass(frozen=True, slots=True)
class ObjCImage:
    """One entry of the header_info lists: an image whose ObjC metadata the cache covers."""

    #: position in the lists (the "dylib objc index" of the class/protocol tables)
    objc_index: int
    mach_header: int
    #: the cache image at that address and its install name (None when no image starts there)
    image_index: int | None
    path: str | None
    #: the objc_image_info the RO entry points to, and its fields
    image_info_address: int
    image_info_version: int
    image_info_flags: int
    #: dyld-1162 RO entries (entsize 24): where the dylib's PrebuiltLoader is
    metadata_address: int | None
    #: the RW entry's bits (None when the RW list is shorter)
    loaded: bool | None
    all_classes_realized: bool | None

    @property
    def optimized_by_dyld(self) -> bool:
        return bool(self.image_info_flags & IMAGE_INFO_OPTIMIZED_BY_DYLD)


@dataclass(slots=True)
class ObjCOptimization:
    """Every ObjC optimization table of a cache."""

    #: SOURCE_HEADER or SOURCE_LIBOBJC
    source: str
    #: LAYOUT_CURRENT or LAYOUT_LEGACY tables
    layout: str
    #: ObjCOptimizationHeader.version (dyld-1162 header), else objc_opt_t.version
    version: int
    flags: int
    #: address of the structure the tables were found from
    address: int
    #: the dyld-1162 header, when the cache has one
    header: ObjCOptimizationHeader | None
    #: libobjc's objc_opt_t (also read next to a dyld-1162 header) and its address
    objc_opt: ObjCOptV15 | ObjCOptV16 | None
    objc_opt_address: int | None
    header_info_ro: int | None
    header_info_rw: int | None
    images: list[ObjCImage]
    selectors: StringTable | None
    classes: ObjectTable | None
    protocols: ObjectTable | None
    #: relative method lists' direct selectors are offsets from here (the magic selector)
    relative_method_selector_base: int | None
    #: oddities that do not stop reading (an RO entry naming no image, say)
    notes: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        """No selector, class or protocol in the tables (what our builder writes today)."""
        tables = [self.selectors]
        tables += [t.strings for t in (self.classes, self.protocols) if t is not None]
        return not any(t is not None and t.occupied for t in tables)


# ---------------------------------------------------------------------------------------------
# reading


class _Params(NamedTuple):
    capacity: int
    occupied: int
    shift: int
    mask: int
    salt: int


#: (first RO entry address, entsize, count): what legacy tables' header_info offsets index
_RoList = tuple[int, int, int]


class _Reader:
    def __init__(self, cache: DyldCache, memory: CacheMemory) -> None:
        self.cache = cache
        self.memory = memory

    def error(self, address: int | None, message: str) -> CacheFormatError:
        return self.memory.error(message, address)

    def need(self, address: int, size: int, what: str) -> memoryview:
        return self.memory.read(address, size, what)

    # -- string tables ---------------------------------------------------------------------------

    def _params(self, name: str, address: int, head: memoryview, layout: str) -> _Params:
        if layout == LAYOUT_LEGACY:
            lh = LegacyStringHashHeader.unpack_from(head)
            p = _Params(lh.capacity, lh.occupied, lh.shift, lh.mask, lh.salt)
        else:
            ch = StringHashHeader.unpack_from(head)
            p = _Params(ch.capacity, ch.occupied, ch.shift, ch.mask, ch.salt)
        if p.capacity == 0:  # dyld-1162 zeroes the header of a table without strings
            if p.occupied:
                raise self.error(address, f"{name}: {p.occupied} strings in a table of capacity 0")
            return p
        if p.capacity > MAX_TABLE_CAPACITY or p.capacity & (p.capacity - 1):
            raise self.error(
                address, f"{name}: capacity {p.capacity} is not a power of two up to {MAX_TABLE_CAPACITY}"
            )
        if p.occupied > p.capacity:
            raise self.error(address, f"{name}: {p.occupied} strings in a table of capacity {p.capacity}")
        if p.mask >= p.capacity or (p.mask + 1) & p.mask:
            raise self.error(address, f"{name}: mask {p.mask:#x} is not 2**n - 1 below the capacity")
        if p.shift > 64:
            raise self.error(address, f"{name}: shift {p.shift} is more than 64")
        return p

    def string_table(self, name: str, address: int, layout: str) -> StringTable:
        head = self.need(address, STRING_TABLE_FIXED, name)
        p = self._params(name, address, head, layout)
        scramble = np.frombuffer(head, "<u4", SCRAMBLE_COUNT, 32).copy()
        if p.capacity == 0:
            none = np.zeros(0, dtype=np.int64)
            return StringTable(
                name, address, layout, 0, 0, p.shift, p.mask, p.salt, scramble,
                np.zeros(1, np.uint8), np.zeros(0, np.uint8), np.zeros(0, np.int32), none, [],
                np.zeros(0, np.uint64),
            )  # fmt: skip
        tab_at = STRING_TABLE_FIXED
        check_at = tab_at + p.mask + 1
        offsets_at = check_at + p.capacity
        body = self.need(address, offsets_at + 4 * p.capacity, name)
        tab = np.frombuffer(body, np.uint8, p.mask + 1, tab_at).copy()
        checkbytes = np.frombuffer(body, np.uint8, p.capacity, check_at).copy()
        offsets = np.frombuffer(body, "<i4", p.capacity, offsets_at).copy()
        used = np.flatnonzero(offsets != 0).astype(np.int64)
        if used.size != p.occupied:
            raise self.error(
                address, f"{name}: {used.size} slots hold a string but the header says {p.occupied}"
            )
        addresses = (np.int64(address) + offsets[used].astype(np.int64)).astype(np.uint64)
        strings = self.memory.cstrings(addresses, f"{name} strings")
        return StringTable(
            name, address, layout, *p, scramble, tab, checkbytes, offsets, used, strings, addresses
        )

    def object_table(self, name: str, address: int, layout: str, ro: _RoList | None) -> ObjectTable:
        """A class/protocol table (StringTable, object entries, duplicate count, duplicates)."""
        strings = self.string_table(name, address, layout)
        cap = strings.capacity
        if not cap:
            return ObjectTable(strings, [], 0)
        at = strings.end
        entries = self.need(at, cap * _OBJECT_ENTRY + 4, f"{name} objects")
        dup_count = int.from_bytes(entries[cap * _OBJECT_ENTRY :], "little")
        if dup_count > MAX_TABLE_CAPACITY:
            raise self.error(at + cap * _OBJECT_ENTRY, f"{name}: {dup_count} duplicates")
        dups_at = at + cap * _OBJECT_ENTRY + 4
        dups = self.need(dups_at, dup_count * _OBJECT_ENTRY, f"{name} duplicates") if dup_count else b""

        def entry(raw: bytes, entry_at: int, slot: int, text: str, duplicate: bool) -> TableObject:
            if layout == LAYOUT_CURRENT:
                value = int.from_bytes(raw, "little")
                offset = (value >> OBJECT_DATA_OFFSET_SHIFT) & OBJECT_DATA_OFFSET_MASK
                index = value >> OBJECT_DATA_INDEX_SHIFT
                return TableObject(text, self.cache.base_address + offset, index, slot, duplicate)
            cls_off, hi_off = LEGACY_CLASS_HEADER.unpack(raw)
            index = self._ro_index(name, entry_at, address + hi_off, ro)
            return TableObject(text, address + cls_off, index, slot, duplicate)

        objects: list[TableObject] = []
        for slot, key in zip(strings.slots.tolist(), strings.strings, strict=True):
            text = decode_name(key)
            raw = bytes(entries[slot * _OBJECT_ENTRY : (slot + 1) * _OBJECT_ENTRY])
            first, count = self._duplicates(raw, layout)
            if count is None:
                objects.append(entry(raw, at + slot * _OBJECT_ENTRY, slot, text, False))
                continue
            if count == 0 or first + count > dup_count:
                raise self.error(
                    at + slot * _OBJECT_ENTRY,
                    f"{name}: slot {slot} names duplicates {first}..{first + count - 1} of {dup_count}",
                )
            for k in range(first, first + count):
                dup = bytes(dups[k * _OBJECT_ENTRY : (k + 1) * _OBJECT_ENTRY])
                objects.append(entry(dup, dups_at + k * _OBJECT_ENTRY, slot, text, True))
        return ObjectTable(strings, objects, dup_count)

    @staticmethod
    def _duplicates(raw: bytes, layout: str) -> tuple[int, int | None]:
        """(first index, count) of a duplicate entry's run; count None for a single object."""
        if layout == LAYOUT_CURRENT:
            value = int.from_bytes(raw, "little")
            if not value & OBJECT_DATA_DUPLICATE:
                return 0, None
            first = (value >> OBJECT_DATA_OFFSET_SHIFT) & OBJECT_DATA_OFFSET_MASK
            return first, value >> OBJECT_DATA_INDEX_SHIFT
        cls_off, hi_off = LEGACY_CLASS_HEADER.unpack(raw)
        if not cls_off & 1:
            return 0, None
        return hi_off & 0xFFFFFFFF, (cls_off & 0xFFFFFFFF) >> 1

    def _ro_index(self, name: str, at: int, hinfo: int, ro: _RoList | None) -> int:
        if ro is None:
            raise self.error(at, f"{name}: an entry points at a header_info but there is no header_info list")
        first, entsize, count = ro
        index, rest = divmod(hinfo - first, entsize)
        if rest or not 0 <= index < count:
            raise self.error(at, f"{name}: {hinfo:#x} is not one of the {count} header_info entries")
        return index

    def legacy_protocol_table(self, name: str, address: int) -> ObjectTable:
        """objc_protocolopt_t: a legacy string table and int32 protocol offsets, no header_info."""
        strings = self.string_table(name, address, LAYOUT_LEGACY)
        if not strings.capacity:
            return ObjectTable(strings, [], 0)
        offs = np.frombuffer(self.need(strings.end, 4 * strings.capacity, f"{name} objects"), "<i4")
        objects = [
            TableObject(decode_name(key), address + int(offs[slot]), None, slot, False)
            for slot, key in zip(strings.slots.tolist(), strings.strings, strict=True)
        ]
        return ObjectTable(strings, objects, 0)

    # -- header_info lists -------------------------------------------------------------------------

    def _list(self, address: int, what: str) -> tuple[int, int]:
        count, entsize = LIST_HEADER.unpack(self.need(address, LIST_HEADER.size, what))
        if count > MAX_TABLE_CAPACITY or not entsize or entsize % 8:
            raise self.error(address, f"{what}: {count} entries of {entsize} bytes")
        return count, entsize

    def header_infos(
        self, ro_addr: int | None, rw_addr: int | None, notes: list[str]
    ) -> tuple[list[ObjCImage], _RoList | None]:
        if ro_addr is None:
            return [], None
        count, entsize = self._list(ro_addr, "header_info_ro list")
        if entsize < HEADER_INFO_RO_MIN_ENTSIZE:
            raise self.error(ro_addr, f"header_info_ro list: entries of {entsize} bytes")
        first = ro_addr + LIST_HEADER.size
        words = np.frombuffer(self.need(first, count * entsize, "header_info_ro entries"), "<i8")
        words = words.reshape(count, entsize // 8).astype(np.int64)
        at = first + entsize * np.arange(count, dtype=np.int64)
        mhdrs = (at + words[:, 0]).tolist()
        infos = (at + 8 + words[:, 1]).tolist()
        metas = (at + 16 + words[:, 2]).tolist() if entsize >= 24 else [None] * count
        meta_set = words[:, 2].tolist() if entsize >= 24 else [0] * count
        rw: list[int] = []
        if rw_addr is not None:
            rw_count, rw_entsize = self._list(rw_addr, "header_info_rw list")
            if rw_entsize != HEADER_INFO_RW_ENTSIZE:
                raise self.error(rw_addr, f"header_info_rw list: entries of {rw_entsize} bytes")
            if rw_count != count:
                notes.append(f"header_info_rw has {rw_count} entries, header_info_ro {count}")
            body = self.need(rw_addr + LIST_HEADER.size, rw_count * rw_entsize, "header_info_rw entries")
            rw = np.frombuffer(body, "<u8", rw_count).tolist()
        by_address = {img.address: img for img in self.cache.images}
        images = []
        for i in range(count):
            version, flags = IMAGE_INFO.unpack(self.need(infos[i], IMAGE_INFO.size, "objc_image_info"))
            img = by_address.get(mhdrs[i])
            if img is None:
                notes.append(f"header_info_ro entry {i} points at {mhdrs[i]:#x}, where no image starts")
            if i and mhdrs[i] <= mhdrs[i - 1]:
                notes.append(f"header_info_ro entry {i} ({mhdrs[i]:#x}) is out of ascending address order")
            bits = rw[i] if i < len(rw) else None
            images.append(
                ObjCImage(
                    i, mhdrs[i], img.index if img else None, img.path if img else None, infos[i], version,
                    flags, metas[i] if meta_set[i] else None,
                    None if bits is None else bool(bits & _RW_LOADED),
                    None if bits is None else bool(bits & _RW_ALL_CLASSES_REALIZED),
                )
            )  # fmt: skip
        return images, (first, entsize, count)

    # -- libobjc's objc_opt_t ----------------------------------------------------------------------

    def libobjc_opt(self) -> tuple[int, ObjCOptV15 | ObjCOptV16] | None:
        """libobjc's objc_opt_t when libobjc is in the cache with a version this reader knows."""
        index = next((img.index for img in self.cache.images if img.path == LIBOBJC_PATH), None)
        if index is None:
            return None
        try:
            sect = self.cache.image_macho(index).section(*OBJC_OPT_RO_SECTION)
        except MachOFormatError as exc:
            raise CacheFormatError(exc.path, exc.offset, f"libobjc: {exc.message}") from None
        if sect is None or sect.size < ObjCOptV15.SIZE:
            return None
        head = self.need(sect.addr, ObjCOptV15.SIZE, "objc_opt_t")
        version = int.from_bytes(head[:4], "little")
        if version == OBJC_OPT_VERSION_LEGACY:
            return sect.addr, ObjCOptV15.unpack_from(head)
        if version == OBJC_OPT_VERSION_LARGE and sect.size >= ObjCOptV16.SIZE:
            return sect.addr, ObjCOptV16.unpack_from(self.need(sect.addr, ObjCOptV16.SIZE, "objc_opt_t"))
        return None


def _at(base: int, offset: int) -> int | None:
    """``base + offset``, or None for a 0 offset (a table that is not there)."""
    return base + offset if offset else None


def read_objc_optimization(cache: DyldCache, memory: CacheMemory | None = None) -> ObjCOptimization | None:
    """The cache's ObjC optimization tables, or None when it has none."""
    r = _Reader(cache, memory or CacheMemory(cache))
    h = cache.header
    base = cache.base_address
    found = r.libobjc_opt()
    opt_addr, opt = found if found else (None, None)
    notes: list[str] = []
    if h.has_field("objc_opts_size") and h.objc_opts_offset:
        at = base + h.objc_opts_offset
        hdr = ObjCOptimizationHeader.unpack_from(r.need(at, ObjCOptimizationHeader.SIZE, "ObjC opts header"))
        ro = _at(base, hdr.header_info_ro_cache_offset)
        rw = _at(base, hdr.header_info_rw_cache_offset)
        images, ro_list = r.header_infos(ro, rw, notes)
        sel = _at(base, hdr.selector_hash_table_cache_offset)
        cls = _at(base, hdr.class_hash_table_cache_offset)
        pro = _at(base, hdr.protocol_hash_table_cache_offset)
        return ObjCOptimization(
            SOURCE_HEADER, LAYOUT_CURRENT, hdr.version, hdr.flags, at, hdr, opt, opt_addr, ro, rw, images,
            r.string_table("selector table", sel, LAYOUT_CURRENT) if sel else None,
            r.object_table("class table", cls, LAYOUT_CURRENT, ro_list) if cls else None,
            r.object_table("protocol table", pro, LAYOUT_CURRENT, ro_list) if pro else None,
            _at(base, hdr.relative_method_selector_base_address_offset), notes,
        )  # fmt: skip
    if opt_addr is None or opt is None:
        return None
    ro = _at(opt_addr, opt.headeropt_ro_offset)
    rw = _at(opt_addr, opt.headeropt_rw_offset)
    images, ro_list = r.header_infos(ro, rw, notes)
    sel = _at(opt_addr, opt.selopt_offset)
    if isinstance(opt, ObjCOptV15):
        layout = LAYOUT_LEGACY
        cls = _at(opt_addr, opt.clsopt_offset)
        pro = _at(opt_addr, opt.protocolopt2_offset)
        oldest = _at(opt_addr, opt.protocolopt_offset)
        selector_base = None
    else:
        layout = LAYOUT_CURRENT
        cls = _at(opt_addr, opt.large_shared_caches_class_offset)
        pro = _at(opt_addr, opt.large_shared_caches_protocol_offset)
        oldest = None
        selector_base = _at(opt_addr, opt.relative_method_selector_base_address_offset)
    protocols = None
    if pro:
        protocols = r.object_table("protocol table", pro, layout, ro_list)
    elif oldest:
        protocols = r.legacy_protocol_table("protocol table", oldest)
    return ObjCOptimization(
        SOURCE_LIBOBJC, layout, opt.version, opt.flags, opt_addr, None, opt, opt_addr, ro, rw, images,
        r.string_table("selector table", sel, layout) if sel else None,
        r.object_table("class table", cls, layout, ro_list) if cls else None,
        protocols, selector_base, notes,
    )  # fmt: skip
