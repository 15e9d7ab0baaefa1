"""The ObjC metadata of one input dylib, as the ObjC optimizers need it (phase 2, the seed's
findObjCDylibs .. findObjCCategories): selector strings, selector references, classes and
their metaclasses, categories, protocols and their method lists, all at input addresses.

Layouts are objc4's (``objc-runtime-new.h``, 64-bit; the constants are shared with the cache
reader in ``cache/objc_format.py``). Pointers are read through the dylib's fixups: a rebase
gives its target as linked, a bind leaves the pointer outside the image (None here).

Malformed metadata does not raise: :func:`read_objc_input` returns the image with ``problem``
set (a method list whose entry size is not objc4's, a cyclic superclass chain, a class pointer
outside the image, a string that runs off its section, ...), and the optimizers leave that
image as the linker wrote it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from ...cache.objc_format import (
    BIG_METHOD_SIZE,
    CATEGORY_T_WORDS,
    CLASS_RO_HEAD,
    CLASS_RO_METHODS_WORD,
    CLASS_RO_NAME_WORD,
    CLASS_RO_PROPERTIES_WORD,
    CLASS_RO_PROTOCOLS_WORD,
    CLASS_T_BITS_WORD,
    CLASS_T_PREOPT_CACHE_WORD,
    CLASS_T_WORDS,
    ENTSIZE_LIST,
    FAST_DATA_MASK,
    IMAGE_INFO,
    IMAGE_INFO_HAS_CATEGORY_CLASS_PROPERTIES,
    MAX_LIST_COUNT,
    METHOD_LIST_FLAG_MASK,
    PROTOCOL_T_SIZE_FLAGS,
    PROTOCOL_T_WORDS,
    RELATIVE_SELECTORS_ARE_DIRECT_FLAG,
    SMALL_METHOD_LIST_FLAG,
    SMALL_METHOD_SIZE,
)
from ...errors import FormatError
from ...macho.file import MachOFile
from ...macho.fixups import FixupKind
from ..cache_dylib import CacheDylib
from ..symbol_resolution import ExportIndex

#: the largest superclass chain followed inside one image before it is called cyclic
_MAX_CHAIN = 1 << 16
#: protocol_t.extendedMethodTypes follows size and flags when ``size`` covers it
_PROTOCOL_EXT_TYPES_AT = 8 * PROTOCOL_T_WORDS + PROTOCOL_T_SIZE_FLAGS.size
_U32 = struct.Struct("<I")


class ObjCInputError(Exception):
    """Malformed ObjC metadata in an input (caught by read_objc_input: never leaves it)."""

    def __init__(self, address: int | None, message: str) -> None:
        super().__init__(message if address is None else f"{message} (at {address:#x})")


@dataclass(slots=True)
class MethodListInput:
    """One method list: where it is, its entsize-and-flags word and each entry's selector."""

    address: int
    flags: int
    names: list[bytes]
    #: each entry's IMP: its input address (a rebase or a relative offset), None when bound to
    #: another image, 0 when null
    imps: list[int | None] = field(default_factory=list)

    @property
    def relative(self) -> bool:
        return bool(self.flags & SMALL_METHOD_LIST_FLAG)

    @property
    def entsize(self) -> int:
        return self.flags & ~METHOD_LIST_FLAG_MASK & 0xFFFFFFFF

    @property
    def first(self) -> int:
        """Address of the first entry."""
        return self.address + ENTSIZE_LIST.size


@dataclass(slots=True)
class ClassInput:
    name: bytes
    address: int
    is_meta: bool
    methods: MethodListInput | None
    #: its class_ro_t, and the class_ro_t's baseProtocols and baseProperties (0: none)
    ro: int = 0
    protocols: int = 0
    properties: int = 0
    #: the isa (a class's metaclass; 0 when bound elsewhere)
    isa: int = 0
    #: the superclass: its address in this image, None when bound to another image, 0 when null
    superclass: int | None = 0
    #: class_t's method cache properties word (objc4's _originalPreoptCache, dyld's "vtable")
    #: is set in the input
    has_cache_properties: bool = False


@dataclass(slots=True)
class CategoryInput:
    name: bytes
    address: int
    instance_methods: MethodListInput | None
    class_methods: MethodListInput | None
    #: the class it extends: its address in this image, None when bound to another image
    #: (category_t.cls at ``address + 8``), 0 when null
    cls: int | None = 0
    #: protocol list, instance and class property lists with at least one entry (0: none);
    #: class properties only when the image info says categories have them
    protocols: int = 0
    instance_properties: int = 0
    class_properties: int = 0


@dataclass(slots=True)
class ProtocolInput:
    name: bytes
    address: int
    #: instance, class, optional instance, optional class (None where absent)
    method_lists: list[MethodListInput | None]
    #: address of the extendedMethodTypes array (one type string pointer per method), or 0
    extended_types: int = 0
    #: its ``size`` field: how many bytes of protocol_t it has
    size: int = 0


@dataclass(slots=True)
class ObjCImageInput:
    """What one dylib's ObjC metadata holds (addresses are the input's, as linked)."""

    install_name: str
    image_info: int = 0
    image_info_flags: int = 0
    #: the strings of __objc_methname, in section order
    method_names: list[bytes] = field(default_factory=list)
    selref_locations: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    selref_names: list[bytes] = field(default_factory=list)
    classes: list[ClassInput] = field(default_factory=list)
    categories: list[CategoryInput] = field(default_factory=list)
    protocols: list[ProtocolInput] = field(default_factory=list)
    #: every pointer slot naming a protocol: __objc_protorefs words and the entries of the
    #: protocol lists of classes, metaclasses, categories and protocols (sorted, each once)
    protocol_ref_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    #: why the image's ObjC metadata cannot be optimized (None: it can)
    problem: str | None = None
    #: its fixups are dyld-info opcodes (dyld-1162 pre-attaches no category of such an image)
    opcode_fixups: bool = False

    def method_lists(self) -> list[MethodListInput]:
        """Every method list of classes, metaclasses, categories and protocols (each once)."""
        seen: dict[int, MethodListInput] = {}
        lists: list[MethodListInput | None] = [c.methods for c in self.classes]
        for cat in self.categories:
            lists += [cat.instance_methods, cat.class_methods]
        for p in self.protocols:
            lists += p.method_lists
        for ml in lists:
            if ml is not None:
                seen.setdefault(ml.address, ml)
        return list(seen.values())

    def selectors(self) -> list[bytes]:
        """Every selector the image names: its method names, then what selrefs and methods use."""
        out = list(self.method_names)
        out += self.selref_names
        for ml in self.method_lists():
            out += ml.names
        return out


def has_objc(image: MachOFile) -> bool:
    """Whether the image has ObjC metadata (an __objc_imageinfo section in a __DATA* segment)."""
    return any(s.sectname == "__objc_imageinfo" and s.segname.startswith("__DATA") for s in image.sections)


class _Reader:
    def __init__(self, image: MachOFile) -> None:
        self.image = image
        recs = image.fixups.records
        self.fix_addr = recs["address"]
        self.fix_target = recs["target"]
        kinds = recs["kind"]
        self.fix_bind = (kinds == FixupKind.BIND) | (kinds == FixupKind.AUTH_BIND)
        self._strings: dict[int, dict[int, bytes]] = {}
        self.protocol_slots: set[int] = set()

    def inside(self, addr: int) -> bool:
        return self.image.segment_for_address(addr) is not None

    def read(self, addr: int, size: int, what: str) -> bytes:
        try:
            return bytes(self.image.read_at_address(addr, size))
        except FormatError:
            raise ObjCInputError(addr, f"{what} is not in the file") from None

    def pointer(self, at: int, what: str) -> int | None:
        """The target of the pointer at ``at``: a rebase's, 0 for no fixup and a zero word,
        None for a bind (a target in another image)."""
        i = int(np.searchsorted(self.fix_addr, at))
        if i < len(self.fix_addr) and int(self.fix_addr[i]) == at:
            return None if self.fix_bind[i] else int(self.fix_target[i])
        raw = int.from_bytes(self.read(at, 8, what), "little")
        if raw:
            raise ObjCInputError(at, f"{what} holds {raw:#x} without a fixup")
        return 0

    def local(self, at: int, what: str) -> int:
        """A pointer that must lead inside the image (0 allowed)."""
        target = self.pointer(at, what)
        if target is None:
            raise ObjCInputError(at, f"{what} is bound to another image")
        if target and not self.inside(target):
            raise ObjCInputError(at, f"{what} points outside the image ({target:#x})")
        return target

    def string(self, addr: int, what: str) -> bytes:
        sect = self.image.section_for_address(addr)
        if sect is None:
            raise ObjCInputError(addr, f"{what} is outside every section")
        table = self._strings.get(sect.addr)
        if table is None:
            try:
                raw = bytes(self.image.section_content(sect))
            except FormatError:
                raise ObjCInputError(addr, f"{what}: section {sect.sectname} is not in the file") from None
            table = _split_strings(raw, sect.addr)
            self._strings[sect.addr] = table
        s = table.get(addr)
        if s is None:
            raw = self.read(addr, sect.addr + sect.size - addr, what)
            end = raw.find(b"\0")
            if end < 0:
                raise ObjCInputError(addr, f"{what} runs off its section {sect.sectname}")
            s = raw[:end]
        return s

    def section_words(self, sectname: str) -> list[int]:
        """The addresses of the pointer slots of every __DATA* section of that name."""
        out: list[int] = []
        for s in self.image.sections:
            if s.sectname == sectname and s.segname.startswith("__DATA"):
                out += range(s.addr, s.addr + s.size - s.size % 8, 8)
        return out

    # -- records -----------------------------------------------------------------------------------

    def protocol_list(self, at: int, what: str) -> None:
        """Record the entries of the protocol_list_t the pointer at ``at`` leads to (u64 count,
        then one pointer per protocol)."""
        addr = self.local(at, f"{what} protocol list")
        if not addr:
            return
        (count,) = struct.unpack("<Q", self.read(addr, 8, f"{what} protocol list"))
        if count > MAX_LIST_COUNT:
            raise ObjCInputError(addr, f"{what} protocol list claims {count} protocols")
        self.read(addr, 8 + 8 * count, f"{what} protocol list")
        self.protocol_slots.update(range(addr + 8, addr + 8 + 8 * count, 8))

    def method_list(self, addr: int, what: str) -> MethodListInput | None:
        if not addr:
            return None
        flags, count = ENTSIZE_LIST.unpack(self.read(addr, ENTSIZE_LIST.size, what))
        ml = MethodListInput(addr, flags, [])
        if count > MAX_LIST_COUNT:
            raise ObjCInputError(addr, f"{what} claims {count} methods")
        if flags & RELATIVE_SELECTORS_ARE_DIRECT_FLAG:
            raise ObjCInputError(addr, f"{what} already has cache-relative selectors (flags {flags:#x})")
        want = SMALL_METHOD_SIZE if ml.relative else BIG_METHOD_SIZE
        if ml.entsize != want:
            kind = "relative" if ml.relative else "pointer"
            raise ObjCInputError(addr, f"{what}: entry size {ml.entsize} is not {want} ({kind} method list)")
        self.read(addr, ENTSIZE_LIST.size + want * count, what)
        for i in range(count):
            entry = ml.first + want * i
            if ml.relative:
                off, _types, imp = struct.unpack("<iii", self.read(entry, 12, what))
                sel = self.local(entry + off, f"{what} selector reference")
                ml.imps.append(entry + 8 + imp if imp else 0)
            else:
                sel = self.local(entry, f"{what} selector")
                ml.imps.append(self.pointer(entry + 16, f"{what} IMP"))
            ml.names.append(self.string(sel, f"{what} selector name"))
        return ml

    def class_(self, addr: int, is_meta: bool) -> ClassInput:
        what = "metaclass" if is_meta else "class"
        bits = self.local(addr + 8 * CLASS_T_BITS_WORD, f"{what} data pointer") & FAST_DATA_MASK
        if not bits:
            raise ObjCInputError(addr, f"{what} has no class_ro_t")
        ro_words = CLASS_RO_HEAD.size
        name = self.local(bits + ro_words + 8 * CLASS_RO_NAME_WORD, f"{what} name")
        methods = self.local(bits + ro_words + 8 * CLASS_RO_METHODS_WORD, f"{what} method list")
        protocols = self.local(bits + ro_words + 8 * CLASS_RO_PROTOCOLS_WORD, f"{what} protocol list")
        properties = self.local(bits + ro_words + 8 * CLASS_RO_PROPERTIES_WORD, f"{what} property list")
        label = self.string(name, f"{what} name")
        self.protocol_list(bits + ro_words + 8 * CLASS_RO_PROTOCOLS_WORD, f"{what} {label!r}")
        isa = self.pointer(addr, "isa") or 0
        superclass = self.pointer(addr + 8, f"{what} superclass")
        cache_properties = self.pointer(addr + 8 * CLASS_T_PREOPT_CACHE_WORD, f"{what} cache properties")
        return ClassInput(
            label,
            addr,
            is_meta,
            self.method_list(methods, f"{what} {label!r} methods"),
            bits,
            self.counted(protocols, 8, "protocol list"),
            self.counted(properties, 4, "property list"),
            isa,
            superclass,
            cache_properties != 0,
        )

    def counted(self, addr: int, count_size: int, what: str) -> int:
        """``addr`` if the list there has entries (a protocol_list_t's count is its first word,
        an entsize list's the second 32-bit word), else 0."""
        if not addr:
            return 0
        at = addr + (0 if count_size == 8 else 4)
        return addr if int.from_bytes(self.read(at, count_size, what), "little") else 0

    def superclass_chain(self, addr: int) -> None:
        seen = {addr}
        at = addr
        for _ in range(_MAX_CHAIN):
            sup = self.pointer(at + 8, "superclass")
            if not sup:
                return
            if not self.inside(sup):
                raise ObjCInputError(at + 8, f"superclass points outside the image ({sup:#x})")
            if sup in seen:
                raise ObjCInputError(at, "cyclic superclass chain")
            seen.add(sup)
            at = sup
        raise ObjCInputError(addr, "cyclic superclass chain")

    def protocol(self, addr: int) -> ProtocolInput:
        name = self.string(self.local(addr + 8, "protocol name"), "protocol name")
        lists = [
            self.method_list(self.local(addr + 8 * w, "protocol method list"), f"protocol {name!r} methods")
            for w in range(3, 7)
        ]
        size, _flags = PROTOCOL_T_SIZE_FLAGS.unpack(
            self.read(addr + 8 * PROTOCOL_T_WORDS, 8, "protocol size")
        )
        ext = 0
        if size >= _PROTOCOL_EXT_TYPES_AT + 8:
            ext = self.local(addr + _PROTOCOL_EXT_TYPES_AT, "protocol extended method types")
        self.read(addr, max(size, _PROTOCOL_EXT_TYPES_AT), f"protocol {name!r}")
        self.protocol_list(addr + 16, f"protocol {name!r}")
        return ProtocolInput(name, addr, lists, ext, size)

    def category(self, addr: int, class_properties: bool) -> CategoryInput:
        self.read(addr, 8 * CATEGORY_T_WORDS - 16, "category")
        name = self.string(self.local(addr, "category name"), "category name")
        inst = self.method_list(self.local(addr + 16, "category methods"), f"category {name!r} methods")
        cls = self.method_list(self.local(addr + 24, "category class methods"), f"category {name!r} methods")
        target = self.pointer(addr + 8, "category class")
        if target and not self.inside(target):
            raise ObjCInputError(addr + 8, f"category class points outside the image ({target:#x})")
        self.protocol_list(addr + 32, f"category {name!r}")
        out = CategoryInput(name, addr, inst, cls, target)
        out.protocols = self.counted(self.local(addr + 32, "category protocols"), 8, "protocol list")
        out.instance_properties = self.counted(
            self.local(addr + 40, "category properties"), 4, "property list"
        )
        if class_properties:
            self.read(addr, 8 * CATEGORY_T_WORDS, "category")
            out.class_properties = self.counted(
                self.local(addr + 48, "category class properties"), 4, "property list"
            )
        return out

    def classes(self) -> list[ClassInput]:
        out: list[ClassInput] = []
        for slot in self.section_words("__objc_classlist"):
            target = self.pointer(slot, "class list entry")
            if not target or not self.inside(target):
                shown = "a bind" if target is None else f"{target:#x}"
                raise ObjCInputError(slot, f"class pointer outside the image ({shown})")
            self.read(target, 8 * CLASS_T_WORDS, "class")
            self.superclass_chain(target)
            out.append(self.class_(target, False))
            meta = self.pointer(target, "isa")
            if meta and self.inside(meta):
                out.append(self.class_(meta, True))
        return out

    def image_info(self, out: ObjCImageInput) -> None:
        sect = next(
            s
            for s in self.image.sections
            if s.sectname == "__objc_imageinfo" and s.segname.startswith("__DATA")
        )
        if sect.size < IMAGE_INFO.size:
            raise ObjCInputError(sect.addr, f"__objc_imageinfo is {sect.size} bytes")
        out.image_info = sect.addr
        out.image_info_flags = IMAGE_INFO.unpack(self.read(sect.addr, IMAGE_INFO.size, "objc_image_info"))[1]


def _split_strings(raw: bytes, base: int) -> dict[int, bytes]:
    """address -> string of every NUL-terminated string of a C-string section."""
    out: dict[int, bytes] = {}
    start = 0
    for part in raw.split(b"\0")[:-1]:
        out[base + start] = part
        start += len(part) + 1
    return out


def _read_dropping_decodes(dylib: CacheDylib) -> ObjCImageInput:
    """read_objc_input in phase 2: the dylib's decoded fixups come back from the scratch files
    for the read and go again (the builder keeps no decodes between phases)."""
    with dylib.input.decoded():
        return read_objc_input(dylib.image, dylib.install_name)


def bound_targets(
    dylib: CacheDylib, exports: ExportIndex, locations: list[int]
) -> list[tuple[int, int] | None]:
    """Where the binds at input addresses ``locations`` of ``dylib`` lead: (cache dylib index,
    input address, addend included) each, or None when nothing exports the symbol, it is an
    absolute one, or no bind is there."""
    if not locations:
        return []
    out: list[tuple[int, int] | None] = []
    with dylib.input.decoded():  # after phase 2 the decodes are in the scratch files
        fx = dylib.image.fixups
        recs = fx.records
        bind = (recs["kind"] == FixupKind.BIND) | (recs["kind"] == FixupKind.AUTH_BIND)
        for at in locations:
            i = int(np.searchsorted(recs["address"], at))
            if i >= len(recs) or int(recs["address"][i]) != at or not bind[i]:
                out.append(None)
                continue
            found = exports.resolve_export(dylib.index, fx.imports[int(recs["bind"][i])])
            if found is None or found[1].is_absolute:
                out.append(None)
                continue
            target = exports.dylibs[found[0]]
            out.append((found[0], target.image.base_address + found[1].address + int(recs["addend"][i])))
    return out


def read_objc_input(image: MachOFile, install_name: str) -> ObjCImageInput:
    """The ObjC metadata of a dylib that :func:`has_objc`; ``problem`` says why it cannot be
    optimized (and the lists stay empty) when it is malformed."""
    out = ObjCImageInput(install_name, opcode_fixups=image.fixups.source == "opcodes")
    r = _Reader(image)
    try:
        r.image_info(out)
        for s in image.sections:
            if s.sectname == "__objc_methname" and s.segname == "__TEXT":
                raw = r.read(s.addr, s.size, "__objc_methname")
                out.method_names += list(_split_strings(raw, s.addr).values())
        slots = r.section_words("__objc_selrefs")
        out.selref_locations = np.array(slots, dtype=np.uint64)
        out.selref_names = [r.string(r.local(a, "selector reference"), "selector name") for a in slots]
        out.classes = r.classes()
        class_properties = bool(out.image_info_flags & IMAGE_INFO_HAS_CATEGORY_CLASS_PROPERTIES)
        out.categories = [
            r.category(r.local(a, "category list entry"), class_properties)
            for a in r.section_words("__objc_catlist")
        ]
        out.protocols = [
            r.protocol(r.local(a, "protocol list entry")) for a in r.section_words("__objc_protolist")
        ]
        r.protocol_slots.update(r.section_words("__objc_protorefs"))
        out.protocol_ref_slots = np.array(sorted(r.protocol_slots), dtype=np.uint64)
    except ObjCInputError as exc:
        info, flags = out.image_info, out.image_info_flags
        return ObjCImageInput(install_name, info, flags, problem=str(exc), opcode_fixups=out.opcode_fixups)
    return out


@dataclass(eq=False, slots=True)
class ObjCInputs:
    """The ObjC dylibs of one build and their metadata, shared by the ObjC optimizers: found and
    read in phase 2 (objc_header.py) when libobjc is among the cache dylibs."""

    #: the dylibs with ObjC metadata, in cache order (the header_info order: their objc index)
    dylibs: list[CacheDylib] = field(default_factory=list)
    #: their metadata, same order
    images: list[ObjCImageInput] = field(default_factory=list)
    #: cache dylib index -> objc index
    objc_index: dict[int, int] = field(default_factory=dict)
    #: objc indices of the images whose categories dyld pre-attached (objc_categories.py):
    #: their objc_image_info gets DyldCategoriesOptimized
    categories_optimized: set[int] = field(default_factory=set)
    #: libobjc is in the cache: the ObjC optimizations are written
    active: bool = False

    def find(self, dylibs: list[CacheDylib], libobjc: str) -> None:
        self.dylibs = [d for d in dylibs if has_objc(d.image)]
        self.objc_index = {d.index: i for i, d in enumerate(self.dylibs)}
        self.active = any(d.install_name == libobjc for d in dylibs)
        if self.active:
            self.images = [_read_dropping_decodes(d) for d in self.dylibs]

    def optimized(self) -> list[tuple[int, CacheDylib, ObjCImageInput]]:
        """(objc index, dylib, metadata) of every image the optimizers rewrite."""
        return [
            (i, d, m)
            for i, (d, m) in enumerate(zip(self.dylibs, self.images, strict=True))
            if m.problem is None
        ]

    def image_of(self, dylib: CacheDylib) -> ObjCImageInput | None:
        """The metadata of a dylib the optimizers rewrite, or None."""
        i = self.objc_index.get(dylib.index)
        if not self.active or i is None or self.images[i].problem is not None:
            return None
        return self.images[i]
