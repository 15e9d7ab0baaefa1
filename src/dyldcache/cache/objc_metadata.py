"""ObjC runtime metadata of a cache image: classes, method lists, protocols, categories, IMP caches.

What the compiler emits and libobjc reads (objc4 ``objc-runtime-new.h``, 64-bit):

- ``__objc_classlist`` points at ``class_t``s (isa = the metaclass, superclass, a cache of two
  words, and the class_ro_t pointer with flag bits); ``class_ro_t`` holds the name and the
  base method, protocol and property lists;
- a method list is ``{entsizeAndFlags, count}`` and entries. Pointer ("big") entries are three
  pointers: selector, type string, IMP. Relative ("small", flag 0x80000000) entries are three
  int32 offsets from their own fields; the name offset reaches a selector reference, or, when
  the cache builder set 0x40000000, the selector string itself: from the field in caches
  without a relative-method selector base (objc_opt_t v15), from that base otherwise
  (dyld ``MachOAnalyzer::forEachObjCMethod``);
- a pointer with its low bit set in class_ro_t's list fields is a ``relative_list_list_t``
  (lists pre-attached by the cache builder, each tagged with its image's objc index);
- ``protocol_t``, ``protocol_list_t`` (a pointer-sized count, then pointers), ``category_t``;
- IMP caches (``preopt_cache_t``): the builder points a class's second cache word at one.

Every pointer is read through :class:`~dyldcache.cache.memory.CacheMemory` (slide info
decoded). All the pointers and strings of one image are resolved in bulk, so that the
Python work is per list and per class rather than per pointer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from ..errors import CacheFormatError, MachOFormatError
from ..names import decode_name
from .memory import CacheMemory, as_addresses
from .objc import ObjCOptimization
from .objc_format import (
    BIG_METHOD_SIZE,
    CATEGORY_T_WORDS,
    CLASS_RO_HEAD,
    CLASS_RO_METHODS_WORD,
    CLASS_RO_NAME_WORD,
    CLASS_RO_POINTERS,
    CLASS_RO_PROTOCOLS_WORD,
    CLASS_T_BITS_WORD,
    CLASS_T_PREOPT_CACHE_WORD,
    CLASS_T_WORDS,
    ENTSIZE_LIST,
    FAST_DATA_MASK,
    FAST_IS_SWIFT_LEGACY,
    FAST_IS_SWIFT_STABLE,
    IMAGE_INFO,
    IMAGE_INFO_HAS_CATEGORY_CLASS_PROPERTIES,
    IMP_CACHE_ENTRY_V1_EMPTY_SEL,
    IMP_CACHE_ENTRY_V2_EMPTY_SEL,
    IMP_CACHE_HEADER_V1,
    IMP_CACHE_HEADER_V2,
    IMP_CACHES_V2_FROM_VERSION,
    LIBOBJC_PATH,
    LIST_OF_LISTS_ENTRY,
    LIST_OF_LISTS_TAG,
    MAX_LIST_COUNT,
    METHOD_LIST_FLAG_MASK,
    OBJC_OPT_OFFSETS_SYMBOL,
    OBJC_PREOPT_CACHES_VERSION_SYMBOL,
    OBJC_SCOFFS_SECTION,
    PROTOCOL_T_SIZE_FLAGS,
    PROTOCOL_T_WORDS,
    RELATIVE_SELECTORS_ARE_DIRECT_FLAG,
    RO_META,
    SMALL_METHOD_LIST_FLAG,
    SMALL_METHOD_SIZE,
)
from .reader import DyldCache

_U64 = np.uint64
#: method list kinds
RELATIVE = "relative"
POINTER = "pointer"
_SWIFT_BITS = FAST_IS_SWIFT_LEGACY | FAST_IS_SWIFT_STABLE
#: where class_ro_t's name pointer is
_RO_NAME = CLASS_RO_HEAD.size + 8 * CLASS_RO_NAME_WORD


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    #: the selector string's address
    selector: int
    types: str
    #: 0 when the entry has no implementation
    imp: int


@dataclass(frozen=True, slots=True)
class MethodList:
    address: int
    #: RELATIVE (int32 offsets) or POINTER (three pointers per method)
    kind: str
    #: relative lists: names point straight at selector strings (set by the cache builder)
    direct_selectors: bool
    entsize: int
    #: the flag bits of entsizeAndFlags (0xffff0003)
    flags: int
    methods: tuple[Method, ...]
    #: the objc index of the image a pre-attached list comes from (lists of lists only)
    objc_index: int | None = None


@dataclass(frozen=True, slots=True)
class ImpCacheEntry:
    selector: str
    selector_address: int
    imp: int


@dataclass(frozen=True, slots=True)
class ImpCache:
    """A preoptimized method cache the builder attached to a class."""

    address: int
    #: ImpCacheHeader_v1 (objc_opt_preopt_caches_version < 3) or _v2
    version: int
    fallback_class: int
    shift: int
    mask: int
    occupied: int
    has_inlines: bool
    #: occupied buckets only, in bucket order
    entries: tuple[ImpCacheEntry, ...]


@dataclass(slots=True)
class ObjCClass:
    address: int
    name: str
    is_meta: bool
    image_index: int
    #: isa: the metaclass of a class, the root metaclass of a metaclass
    isa: int
    superclass: int
    #: None for a root class, or when the superclass cannot be read
    superclass_name: str | None
    ro_address: int
    ro_flags: int
    instance_start: int
    instance_size: int
    #: the low bits of class_t.bits (FAST_IS_SWIFT_LEGACY / _STABLE)
    swift_flags: int
    method_lists: list[MethodList]
    protocols: list[str]
    imp_cache: ImpCache | None = None

    @property
    def methods(self) -> list[Method]:
        return [m for ml in self.method_lists for m in ml.methods]


@dataclass(slots=True)
class ObjCProtocol:
    address: int
    name: str
    image_index: int
    flags: int
    protocols: list[str]
    instance_methods: MethodList | None
    class_methods: MethodList | None
    optional_instance_methods: MethodList | None
    optional_class_methods: MethodList | None


@dataclass(slots=True)
class ObjCCategory:
    address: int
    name: str
    image_index: int
    class_address: int
    class_name: str | None
    instance_methods: MethodList | None
    class_methods: MethodList | None
    protocols: list[str]


@dataclass(slots=True)
class ImageMetadata:
    image_index: int
    path: str
    #: (version, flags) of the image's __objc_imageinfo, None if it has none
    image_info: tuple[int, int] | None
    #: classes of __objc_classlist, each followed by its metaclass
    classes: list[ObjCClass] = field(default_factory=list)
    protocols: list[ObjCProtocol] = field(default_factory=list)
    categories: list[ObjCCategory] = field(default_factory=list)
    #: (selector, its address) of every __objc_selrefs entry, in section order
    selector_references: list[tuple[str, int]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# bulk reading


def _grid(addresses: list[int] | np.ndarray | int, fields: int, stride: int = 8) -> np.ndarray:
    """The addresses of ``fields`` consecutive fields of each record at ``addresses`` (flat uint64;
    garbage wraps around and then lies in no mapping)."""
    starts = as_addresses([addresses] if isinstance(addresses, int) else addresses).reshape(-1, 1)
    out: np.ndarray = (starts + np.arange(fields, dtype=_U64) * _U64(stride)).reshape(-1)
    return out


@dataclass(slots=True)
class _PendingList:
    address: int
    kind: str
    direct: bool
    entsize: int
    flags: int
    count: int
    #: index of its first method in the batch's arrays
    first: int
    objc_index: int | None


class _MethodBatch:
    """The method lists of one image: headers parsed as they are queued, names resolved together."""

    def __init__(self, meta: _MetadataReader) -> None:
        self.meta = meta
        self.lists: list[_PendingList] = []
        #: per method: where its name is (a string, or a pointer to one), its types string, its IMP
        self.name_at: list[np.ndarray] = []
        self.name_indirect: list[np.ndarray] = []
        self.types_at: list[np.ndarray] = []
        self.imp: list[np.ndarray] = []
        self.size = 0

    def add(self, address: int, objc_index: int | None = None) -> int:
        """Queue the list at ``address``; returns its position in :meth:`resolve`'s result."""
        what = f"method list at {address:#x}"
        entsize_flags, count = ENTSIZE_LIST.unpack(self.meta.read(address, ENTSIZE_LIST.size, what))
        flags = entsize_flags & METHOD_LIST_FLAG_MASK
        entsize = entsize_flags & ~METHOD_LIST_FLAG_MASK & 0xFFFFFFFF
        small = bool(flags & SMALL_METHOD_LIST_FLAG)
        expected = SMALL_METHOD_SIZE if small else BIG_METHOD_SIZE
        if entsize != expected or count > MAX_LIST_COUNT:
            raise self.meta.error(address, f"{what}: {count} methods of {entsize} bytes, not {expected}")
        first = address + ENTSIZE_LIST.size
        body = self.meta.read(first, count * entsize, what)
        direct = small and bool(flags & RELATIVE_SELECTORS_ARE_DIRECT_FLAG)
        # the list was read, so its addresses are mapped ones (and fit in int64)
        entries = first + entsize * np.arange(count, dtype=np.int64)
        fields = _grid(entries, 3, entsize // 3).astype(np.int64).reshape(count, 3)
        if small:
            rel = np.frombuffer(body, "<i4").reshape(count, 3).astype(np.int64)
            base = self.meta.selector_base
            names = (base if direct and base is not None else fields[:, 0]) + rel[:, 0]
            self.name_at.append(names.astype(_U64))
            self.name_indirect.append(np.full(count, not direct))
            self.types_at.append((fields[:, 1] + rel[:, 1]).astype(_U64))
            self.imp.append(np.where(rel[:, 2] != 0, fields[:, 2] + rel[:, 2], 0).astype(_U64))
        else:
            words = self.meta.words(fields.reshape(-1), what).reshape(count, 3)
            self.name_at.append(words[:, 0])
            self.name_indirect.append(np.zeros(count, bool))
            self.types_at.append(words[:, 1])
            self.imp.append(words[:, 2])
        kind = RELATIVE if small else POINTER
        self.lists.append(_PendingList(address, kind, direct, entsize, flags, count, self.size, objc_index))
        self.size += count
        return len(self.lists) - 1

    def resolve(self) -> list[MethodList]:
        if not self.lists:
            return []
        selectors = np.concatenate(self.name_at)
        indirect = np.concatenate(self.name_indirect)
        if indirect.any():
            selectors[indirect] = self.meta.words(selectors[indirect], "selector references of method lists")
        names = self.meta.strings(selectors, "method names")
        types = self.meta.strings(np.concatenate(self.types_at), "method types")
        imps = np.concatenate(self.imp).tolist()
        sels = selectors.tolist()
        out = []
        for pl in self.lists:
            span = range(pl.first, pl.first + pl.count)
            methods = tuple(Method(names[i], sels[i], types[i], imps[i]) for i in span)
            pieces = (pl.address, pl.kind, pl.direct, pl.entsize, pl.flags, methods, pl.objc_index)
            out.append(MethodList(*pieces))
        return out


# ---------------------------------------------------------------------------------------------
# the reader


class _MetadataReader:
    def __init__(self, cache: DyldCache, memory: CacheMemory, opt: ObjCOptimization | None) -> None:
        self.cache = cache
        self.memory = memory
        #: relative method lists with direct selectors count from here (None: from the field)
        self.selector_base = opt.relative_method_selector_base if opt else None
        self._class_names: dict[int, str | None] = {}
        self._imp_context: tuple[int, int] | None = None
        self._imp_context_read = False

    def error(self, address: int | None, message: str) -> CacheFormatError:
        return self.memory.error(message, address)

    def read(self, address: int, size: int, what: str) -> memoryview:
        return self.memory.read(address, size, what)

    def words(self, addresses: np.ndarray | list[int], what: str) -> np.ndarray:
        return self.memory.words(addresses, what)

    def record(self, address: int, fields: int, what: str) -> list[int]:
        """The ``fields`` pointer-sized words of the record at ``address``."""
        self.read(address, 8 * fields, what)
        return [int(w) for w in self.words(_grid(address, fields), what).tolist()]

    def strings(self, addresses: np.ndarray | list[int], what: str) -> list[str]:
        """C strings at ``addresses``; address 0 reads as ''. Each distinct address is read once
        (uniqued selectors are shared by many methods)."""
        addrs = as_addresses(addresses)
        distinct, which = np.unique(addrs, return_inverse=True)
        texts = [decode_name(raw) for raw in self.memory.cstrings(distinct[distinct != 0], what)]
        if distinct.size and distinct[0] == 0:
            texts.insert(0, "")
        return [texts[k] for k in which.reshape(-1).tolist()]

    def string(self, address: int, what: str) -> str:
        return self.strings([address], what)[0]

    # -- lists -------------------------------------------------------------------------------------

    def _lists_of_lists(self, address: int, what: str) -> list[tuple[int, int]]:
        """(list address, objc index) of each entry of a relative_list_list_t."""
        entsize, count = ENTSIZE_LIST.unpack(self.read(address, ENTSIZE_LIST.size, what))
        if entsize != LIST_OF_LISTS_ENTRY or count > MAX_LIST_COUNT:
            raise self.error(address, f"{what}: {count} entries of {entsize} bytes")
        first = address + ENTSIZE_LIST.size
        raw = np.frombuffer(self.read(first, entsize * count, what), "<i8").tolist()
        # imageIndex in bits 0-15, a signed offset from the entry in bits 16-63
        return [(first + entsize * i + (v >> 16), v & 0xFFFF) for i, v in enumerate(raw)]

    def method_lists(self, pointer: int, batch: _MethodBatch) -> list[int]:
        """Queue the method list(s) a class_ro_t field names (several for a list of lists)."""
        if not pointer:
            return []
        if not pointer & LIST_OF_LISTS_TAG:
            return [batch.add(pointer)]
        entries = self._lists_of_lists(pointer & ~LIST_OF_LISTS_TAG, "relative list of method lists")
        return [batch.add(at, index) for at, index in entries]

    def protocol_names(self, pointers: list[int]) -> list[list[str]]:
        """For each protocol_list_t pointer (or tagged relative list of them, or 0): the names of
        its protocols. Read in stages for all lists at once: counts, entries, names."""
        heads: list[tuple[int, int]] = []  # (owner, protocol_list_t address)
        for owner, pointer in enumerate(pointers):
            if pointer & LIST_OF_LISTS_TAG:
                lists = self._lists_of_lists(pointer & ~LIST_OF_LISTS_TAG, "relative list of protocol lists")
                heads += [(owner, at) for at, _ in lists]
            elif pointer:
                heads.append((owner, pointer))
        out: list[list[str]] = [[] for _ in pointers]
        if not heads:
            return out
        # protocol_list_t: a pointer-sized count ("by accident", objc4), then the protocols
        at = as_addresses([a for _, a in heads])
        counts = self.words(at, "protocol lists")
        if (counts > _U64(MAX_LIST_COUNT)).any():
            bad = int(np.flatnonzero(counts > _U64(MAX_LIST_COUNT))[0])
            where = int(at[bad])
            raise self.error(where, f"protocol list at {where:#x}: {int(counts[bad])} protocols")
        n = counts.astype(np.int64)
        first = np.cumsum(n) - n
        slots = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(first, n)
        refs = self.words(np.repeat(at + _U64(8), n) + _U64(8) * slots.astype(_U64), "protocol list entries")
        names = self.strings(self.words(refs + _U64(8), "protocol names"), "protocol names")
        owners = np.repeat([owner for owner, _ in heads], n).tolist()
        for owner, name in zip(owners, names, strict=True):
            out[owner].append(name)
        return out

    def class_names(self, addresses: list[int]) -> list[str | None]:
        """Names of the classes at ``addresses`` (None for 0, or where nothing readable is), cached."""
        todo = sorted({a for a in addresses if a and a not in self._class_names})
        self._class_names.update(dict.fromkeys(todo))
        # class_t.bits -> class_ro_t -> its name field -> the name; drop what is not mapped
        found = [a for a in todo if self.memory.contains(a, 8 * CLASS_T_WORDS)]
        ros = self.words([a + 8 * CLASS_T_BITS_WORD for a in found], "class_t bits") & _U64(FAST_DATA_MASK)
        fields = [(a, f) for a, f in zip(found, (ros + _U64(_RO_NAME)).tolist(), strict=True)]
        fields = [(a, f) for a, f in fields if self.memory.contains(f, 8)]
        names = self.words([f for _, f in fields], "class_ro_t names").tolist()
        named = [(a, n) for (a, _), n in zip(fields, names, strict=True) if self.memory.contains(n)]
        for (a, _), text in zip(named, self.strings([n for _, n in named], "class names"), strict=True):
            self._class_names[a] = text
        return [self._class_names.get(a) if a else None for a in addresses]

    # -- IMP caches --------------------------------------------------------------------------------

    def imp_context(self) -> tuple[int, int] | None:
        """(objc_opt_preopt_caches_version, selector strings start) from libobjc, or None."""
        if not self._imp_context_read:
            self._imp_context_read = True
            self._imp_context = self._find_imp_context()
        return self._imp_context

    def _find_imp_context(self) -> tuple[int, int] | None:
        index = next((img.index for img in self.cache.images if img.path == LIBOBJC_PATH), None)
        if index is None:
            return None
        try:
            image = self.cache.image_macho(index)
            sect = next((s for s in image.sections if s.sectname == OBJC_SCOFFS_SECTION), None)
            if sect is None:
                return None
            version = 1
            offsets = None
            for e in image.exports:
                if e.name == OBJC_PREOPT_CACHES_VERSION_SYMBOL:
                    raw = self.read(image.base_address + e.address, 4, OBJC_PREOPT_CACHES_VERSION_SYMBOL)
                    version = int.from_bytes(raw, "little")
                elif e.name == OBJC_OPT_OFFSETS_SYMBOL:
                    offsets = image.base_address + e.address
        except MachOFormatError as exc:
            raise CacheFormatError(exc.path, exc.offset, f"libobjc: {exc.message}") from None
        if offsets is None:
            # the version word comes first in the section when there is one (dsc_util's rule)
            first = 1 if version > 1 else 0
            if sect.size < 8 * (first + 1):
                return None
            offsets = sect.addr + 8 * first
        elif not sect.addr <= offsets <= sect.addr + sect.size - 8:
            return None
        # dyld-1162 writes the selector strings' start where libobjc exports _objc_opt_offsets
        return version, int(self.words([offsets], "objc_opt_offsets")[0])

    def imp_cache(self, class_address: int, address: int) -> ImpCache | None:
        ctx = self.imp_context()
        if ctx is None:
            return None
        version, selector_base = ctx
        v2 = version >= IMP_CACHES_V2_FROM_VERSION
        head = IMP_CACHE_HEADER_V2 if v2 else IMP_CACHE_HEADER_V1
        fields = head.unpack(self.read(address, head.size, "IMP cache"))
        fallback, bits = fields[0], fields[1]
        mask = (bits >> 5) & 0x7FF
        buckets = bytes(self.read(address + head.size, 8 * (mask + 1), "IMP cache buckets"))
        entries = decode_imp_buckets(buckets, v2, class_address, selector_base)
        names = self.strings([s for s, _ in entries], "IMP cache selectors")
        found = tuple(ImpCacheEntry(n, s, i) for n, (s, i) in zip(names, entries, strict=True))
        return ImpCache(
            address, 2 if v2 else 1, class_address + fallback, bits & 0x1F, mask, (bits >> 16) & 0x3FFF,
            bool(bits >> 30 & 1), found,
        )  # fmt: skip

    # -- one image ---------------------------------------------------------------------------------

    def image(self, index: int) -> ImageMetadata:
        img = self.cache.images[index]
        try:
            macho = self.cache.image_macho(index)
        except MachOFormatError as exc:
            raise CacheFormatError(exc.path, exc.offset, exc.message) from None
        # ObjC's pointer sections live in the data segments (__DATA*, __AUTH*)
        sections = {s.sectname: s for s in macho.sections if s.segname != "__TEXT" and s.size}
        info = sections.get("__objc_imageinfo")
        image_info = None
        if info is not None:
            image_info = IMAGE_INFO.unpack(self.read(info.addr, IMAGE_INFO.size, "__objc_imageinfo"))
        out = ImageMetadata(index, img.path, image_info)

        def pointers(name: str) -> list[int]:
            s = sections.get(name)
            if s is None:
                return []
            self.read(s.addr, s.size, f"{img.path} {name}")
            return [int(w) for w in self.words(_grid(s.addr, s.size // 8), name).tolist()]

        batch = _MethodBatch(self)
        classes = self._classes(index, pointers("__objc_classlist"), batch)
        protocols = [self._protocol(index, a, batch) for a in pointers("__objc_protolist")]
        class_props = bool(image_info and image_info[1] & IMAGE_INFO_HAS_CATEGORY_CLASS_PROPERTIES)
        categories = [self._category(index, a, batch, class_props) for a in pointers("__objc_catlist")]
        lists = batch.resolve()

        def pick(position: int | None) -> MethodList | None:
            return None if position is None else lists[position]

        for cls, positions in classes:
            cls.method_lists = [lists[p] for p in positions]
            out.classes.append(cls)
        for proto, quad in protocols:
            proto.instance_methods, proto.class_methods = pick(quad[0]), pick(quad[1])
            proto.optional_instance_methods, proto.optional_class_methods = pick(quad[2]), pick(quad[3])
            out.protocols.append(proto)
        for cat, (instance, klass) in categories:
            cat.instance_methods, cat.class_methods = pick(instance), pick(klass)
            out.categories.append(cat)
        selrefs = pointers("__objc_selrefs")
        names = self.strings(selrefs, "selector references")
        out.selector_references = list(zip(names, selrefs, strict=True))
        return out

    def _classes(
        self, index: int, addresses: list[int], batch: _MethodBatch
    ) -> list[tuple[ObjCClass, list[int]]]:
        """Each class of the list, then its metaclass, with the positions of their method lists.

        Read stage by stage for all of them at once: class_t, the metaclasses' class_t, the
        class_ro_t heads and pointers, the names."""
        n = len(addresses)
        if not n:
            return []
        classes = self.words(_grid(addresses, CLASS_T_WORDS), "class_t").reshape(n, CLASS_T_WORDS)
        metas = self.words(_grid(classes[:, 0], CLASS_T_WORDS), "metaclass").reshape(n, CLASS_T_WORDS)
        where = np.empty(2 * n, dtype=_U64)
        where[0::2], where[1::2] = as_addresses(addresses), classes[:, 0]
        words = np.empty((2 * n, CLASS_T_WORDS), dtype=_U64)
        words[0::2], words[1::2] = classes, metas
        bits = words[:, CLASS_T_BITS_WORD]
        ros = bits & _U64(FAST_DATA_MASK)
        # class_ro_t starts with four u32 (flags, instanceStart, instanceSize, reserved): two words
        heads = self.words(_grid(ros, 2), "class_ro_t").reshape(2 * n, 2)
        ptrs = self.words(_grid(ros + _U64(CLASS_RO_HEAD.size), CLASS_RO_POINTERS), "class_ro_t")
        ptrs = ptrs.reshape(2 * n, CLASS_RO_POINTERS)
        names = self.strings(ptrs[:, CLASS_RO_NAME_WORD], "class names")
        supers = self.class_names(words[:, 1].tolist())
        protocols = self.protocol_names(ptrs[:, CLASS_RO_PROTOCOLS_WORD].tolist())
        out = []
        for i, address in enumerate(where.tolist()):
            flags, start = int(heads[i, 0]) & 0xFFFFFFFF, int(heads[i, 0]) >> 32
            w = [int(x) for x in words[i]]
            cls = ObjCClass(
                address, names[i], bool(flags & RO_META), index, w[0], w[1], supers[i] if w[1] else None,
                int(ros[i]), flags, start, int(heads[i, 1]) & 0xFFFFFFFF, w[CLASS_T_BITS_WORD] & _SWIFT_BITS,
                [], protocols[i],
            )  # fmt: skip
            preopt = w[CLASS_T_PREOPT_CACHE_WORD]
            if preopt:
                cls.imp_cache = self.imp_cache(address, preopt)
            out.append((cls, self.method_lists(int(ptrs[i, CLASS_RO_METHODS_WORD]), batch)))
        return out

    def _protocol(
        self, index: int, address: int, batch: _MethodBatch
    ) -> tuple[ObjCProtocol, list[int | None]]:
        what = f"protocol_t at {address:#x}"
        w = self.record(address, PROTOCOL_T_WORDS, what)
        _size, flags = PROTOCOL_T_SIZE_FLAGS.unpack(self.read(address + 8 * PROTOCOL_T_WORDS, 8, what))
        lists = [batch.add(p) if p else None for p in w[3:7]]
        name, protocols = self.string(w[1], "protocol name"), self.protocol_names([w[2]])[0]
        return ObjCProtocol(address, name, index, flags, protocols, None, None, None, None), lists

    def _category(
        self, index: int, address: int, batch: _MethodBatch, class_props: bool
    ) -> tuple[ObjCCategory, tuple[int | None, int | None]]:
        # the classProperties field is there only when the image info says so
        w = self.record(address, CATEGORY_T_WORDS - (0 if class_props else 1), f"category_t at {address:#x}")
        lists = (batch.add(w[2]) if w[2] else None, batch.add(w[3]) if w[3] else None)
        cat = ObjCCategory(
            address, self.string(w[0], "category name"), index, w[1], self.class_names([w[1]])[0], None, None,
            self.protocol_names([w[4]])[0],
        )  # fmt: skip
        return cat, lists


def decode_imp_buckets(raw: bytes, v2: bool, class_address: int, selector_base: int) -> list[tuple[int, int]]:
    """(selector address, IMP) of the occupied buckets of an IMP cache, in bucket order.

    v1 buckets are {u32 selOffset, u32 impOffset} with IMP = class - impOffset; a v2 bucket is a
    u64 with a signed 38-bit impOffset in 4-byte units (bits 0-37, IMP = class - 4 * impOffset)
    and a 26-bit selOffset (bits 38-63). Selectors are offsets from the selector strings' start;
    an empty bucket has the all-ones selOffset and impOffset 0.
    """
    out = []
    if v2:
        for (value,) in struct.iter_unpack("<Q", raw):
            units = value & ((1 << 38) - 1)
            units -= (units >> 37) << 38  # sign-extend the 38-bit field
            sel = value >> 38
            if not (sel == IMP_CACHE_ENTRY_V2_EMPTY_SEL and units == 0):
                out.append((selector_base + sel, class_address - 4 * units))
    else:
        for sel, imp in struct.iter_unpack("<II", raw):
            if not (sel == IMP_CACHE_ENTRY_V1_EMPTY_SEL and imp == 0):
                out.append((selector_base + sel, class_address - imp))
    return out


def read_metadata(
    cache: DyldCache,
    opt: ObjCOptimization | None,
    images: list[int] | None = None,
    memory: CacheMemory | None = None,
) -> list[ImageMetadata]:
    """The ObjC metadata of every image (or of ``images``), in that order."""
    reader = _MetadataReader(cache, memory or CacheMemory(cache), opt)
    return [reader.image(i) for i in (images if images is not None else range(len(cache.images)))]
