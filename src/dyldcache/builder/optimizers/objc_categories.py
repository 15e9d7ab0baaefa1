"""ObjC pre-attached categories: dyld-1162 attaches the categories of the cache's images to
their classes at build time (the seed's findObjCCategories, calculateObjCCategoriesSize,
adjustObjCCategories and emitPreAttachedObjCCategories), so libobjc does not scan their
``__objc_catlist`` at launch.

For every class that a category extends, the class_ro_t's baseMethods, baseProtocols and
baseProperties (and the metaclass's baseMethods and baseProperties) are pointed at a
``relative_list_list_t`` in one read-only chunk, tagged with bit 0 (objc4's PointerUnion). A
list-of-lists is an ``entsize_list_tt`` header (entsize 8, count), then one 8-byte entry per list:
``imageIndex:16`` (the objc index: header_info order) and ``listOffset:48`` (signed, from the
entry). The categories' lists come first, in category order; the class's own list is always
last (libobjc's OBJC_DISABLE_PREATTACHED_CATEGORIES uses only that one). A class with no method
list of its own gets the chunk's shared empty method list (8 bytes, uniqued and sorted, at the
chunk's start); a missing protocol or property list becomes the entry ``{0, 0}``, which points at
itself and reads as an empty list.

Which categories (1162's rules): every category of an ObjC image whose fixups are chained (an
image with dyld-info opcodes is excluded, and its categories stay libobjc's work) whose class
pointer leads to a class in the cache, by rebase or by a bind that resolves; a missing
weak-imported class drops the category, as libobjc does. Lists are attached when they have at
least one entry; class properties only when the image info says categories carry them. Every
ObjC image that is not excluded gets DyldCategoriesOptimized in its objc_image_info (libobjc then
skips its catlist at launch).

Where this builder is stricter: an image the ObjC optimizers leave alone (malformed metadata,
objc_input.py) gets no pre-attached category and no flag, and an image one of whose categories
extends a class of such an image keeps its categories for libobjc (no flag): a flagged image's
categories must all be attached, since libobjc skips the whole catlist.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...cache.objc_format import ENTSIZE_LIST, LIST_OF_LISTS_ENTRY, LIST_OF_LISTS_TAG
from ..bind import CACHE_POINTER_FIELDS, set_pointers
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..layout import Chunk, ChunkKind, RegionKind
from ..model import CacheModel
from ..types import InputVMAddr
from .base import DylibResult, Optimizer
from .binds_to_rebases import ConvertBindsToRebases
from .objc_header import LIBOBJC
from .objc_input import CategoryInput, ClassInput, ObjCInputs, bound_targets
from .objc_selector_refs import METHOD_LIST_SORTED, METHOD_LIST_UNIQUED

#: class_ro_t field offsets: baseMethods, baseProtocols, baseProperties (after the 16-byte head)
_RO_METHODS = 16 + 8 * 2
_RO_PROTOCOLS = 16 + 8 * 3
_RO_PROPERTIES = 16 + 8 * 6
#: how arm64e signs class_ro_t.baseMethods (objc4 method_list_t::Ptrauth: DA, address-blended)
_METHOD_LIST_KEY_DA = 2
_METHOD_LIST_DIVERSITY = 0xC310
_OFFSET_MASK = (1 << 48) - 1


@dataclass(slots=True)
class _Attached:
    """One category that is pre-attached: its image and the class it extends."""

    objc_index: int
    dylib: CacheDylib
    category: CategoryInput
    class_objc_index: int
    class_dylib: CacheDylib
    cls: ClassInput
    meta: ClassInput | None


@dataclass(slots=True)
class _Field:
    """A class_ro_t field that now holds a tagged list-of-lists address."""

    location: int  # input address of the field (in the class's dylib)
    target: int  # cache address, tag included
    methods: bool  # baseMethods (signed on arm64e)


def list_of_lists_entry(image_index: int, offset: int) -> int:
    """relative_list_list_entry_t as a 64-bit word."""
    return (image_index & 0xFFFF) | ((offset & _OFFSET_MASK) << 16)


class ObjCPreAttachedCategories(Optimizer):
    name: ClassVar[str] = "ObjC Pre-attached Categories"

    def __init__(self, objc: ObjCInputs, binds: ConvertBindsToRebases) -> None:
        self.objc = objc
        self.binds = binds
        self.chunk: Chunk | None = None
        self.size = 0
        #: cache dylib index -> the class_ro_t fields its dylib pass rewrites
        self.fields: dict[int, list[_Field]] = {}
        self.attached: list[_Attached] = []
        self.auth = False

    def estimate(self, model: CacheModel) -> None:
        """An upper bound, as calculateObjCCategoriesSize: per attachable list of a category, one
        entry for it, one list header and one entry for the class's own list; plus the empty
        method list."""
        self.size = 0
        if not self.objc.active:
            return
        self.size = ENTSIZE_LIST.size
        for m in self.objc.images:
            if m.problem is not None or m.opcode_fixups:
                continue
            for cat in m.categories:
                if cat.cls == 0:
                    continue
                lists = (
                    cat.instance_methods is not None and bool(cat.instance_methods.names),
                    cat.class_methods is not None and bool(cat.class_methods.names),
                    bool(cat.protocols),
                    bool(cat.instance_properties),
                    bool(cat.class_properties),
                )
                self.size += 3 * LIST_OF_LISTS_ENTRY * sum(lists)

    def place(self, model: CacheModel) -> None:
        self.chunk = None
        sub = model.text_subcache(LIBOBJC)
        if sub is None or not self.objc.active:
            return
        text = sub.region(RegionKind.TEXT)
        self.chunk = text.add(Chunk("objc pre-attached categories", ChunkKind.OBJC_READ_ONLY, self.size, 8))

    # -- phase 4: which categories, and the chunk ------------------------------------------------

    def pre_dylib_emit(self, model: CacheModel, buffers: CacheBuffers) -> None:
        self.fields = {}
        self.attached = []
        self.objc.categories_optimized = set()
        self.auth = model.config.arch.uses_pointer_auth
        if self.chunk is None:
            return
        blocked = self._find(model)
        self.objc.categories_optimized = {
            i
            for i, m in enumerate(self.objc.images)
            if m.problem is None and not m.opcode_fixups and i not in blocked
        }
        keep = self.objc.categories_optimized
        self.attached = [a for a in self.attached if a.objc_index in keep]
        buffers.put(self.chunk, self._emit_chunk())

    def _find(self, model: CacheModel) -> set[int]:
        """Fill ``attached`` (findObjCCategories); returns the objc indices whose categories
        cannot all be attached here."""
        blocked: set[int] = set()
        classes: dict[tuple[int, int], tuple[int, ClassInput]] = {}
        for i, (d, m) in enumerate(zip(self.objc.dylibs, self.objc.images, strict=True)):
            for k in m.classes:
                classes[(d.index, int(d.cache_address(InputVMAddr(k.address))))] = (i, k)
        for i, (d, m) in enumerate(zip(self.objc.dylibs, self.objc.images, strict=True)):
            if m.problem is not None or m.opcode_fixups:
                continue
            for cat in m.categories:
                where = self._class_of(model, d, cat)
                if where is None:
                    continue  # a null or missing weak class: libobjc ignores the category too
                found = classes.get(where)
                if found is None or self.objc.images[found[0]].problem is not None or found[1].is_meta:
                    blocked.add(i)
                    continue
                ci, cls = found
                cd = self.objc.dylibs[ci]
                meta = next((k for k in self.objc.images[ci].classes if k.address == cls.isa), None)
                self.attached.append(_Attached(i, d, cat, ci, cd, cls, meta))
        return blocked

    def _class_of(self, model: CacheModel, d: CacheDylib, cat: CategoryInput) -> tuple[int, int] | None:
        """(cache dylib index, cache address) of the class a category extends, or None."""
        if cat.cls == 0:
            return None
        if cat.cls is not None:
            return d.index, int(d.cache_address(InputVMAddr(cat.cls)))
        exports = self.binds.exports
        assert exports is not None
        (found,) = bound_targets(d, exports, [cat.address + 8])
        if found is None:
            return None
        index, address = found
        return index, int(model.dylibs[index].cache_address(InputVMAddr(address)))

    def _emit_chunk(self) -> bytes:
        """emitPreAttachedObjCCategories: the lists-of-lists of every extended class, by class
        image (objc order), classes in the order categories name them."""
        assert self.chunk is not None
        out = bytearray(ENTSIZE_LIST.pack(METHOD_LIST_UNIQUED | METHOD_LIST_SORTED, 0))
        by_class: dict[tuple[int, int], list[_Attached]] = defaultdict(list)
        for a in self.attached:
            by_class[(a.class_objc_index, a.cls.address)].append(a)
        for key in sorted(by_class, key=lambda k: k[0]):
            cats = by_class[key]
            cls, meta = cats[0].cls, cats[0].meta
            own_methods = cls.methods.address if cls.methods is not None and cls.methods.names else 0
            self._lists(out, cats, "instance_methods", own_methods, _RO_METHODS, cls, True)
            self._lists(out, cats, "protocols", cls.protocols, _RO_PROTOCOLS, cls, False)
            self._lists(out, cats, "instance_properties", cls.properties, _RO_PROPERTIES, cls, False)
            if meta is not None:
                own_class = meta.methods.address if meta.methods is not None and meta.methods.names else 0
                self._lists(out, cats, "class_methods", own_class, _RO_METHODS, meta, True)
                self._lists(out, cats, "class_properties", meta.properties, _RO_PROPERTIES, meta, False)
        assert len(out) <= self.size, "pre-attached categories outgrew their estimate"
        return bytes(out)

    def _lists(
        self,
        out: bytearray,
        cats: list[_Attached],
        pick: str,
        own: int,
        field: int,
        owner: ClassInput,
        methods: bool,
    ) -> None:
        """Append one list-of-lists (the categories' ``pick`` lists, then the class's ``own``)
        when a category has such a list, and record the class_ro_t field to point at it."""
        assert self.chunk is not None
        base = int(self.chunk.vm_addr)
        got = [(a.objc_index, a.dylib, _category_list(a.category, pick)) for a in cats]
        got = [g for g in got if g[2]]
        if not got:
            return
        ci, cd = cats[0].class_objc_index, cats[0].class_dylib
        start = len(out)
        out.extend(ENTSIZE_LIST.pack(LIST_OF_LISTS_ENTRY, len(got) + 1))
        for index, dylib, addr in got:
            offset = int(dylib.cache_address(InputVMAddr(addr))) - (base + len(out))
            out.extend(struct.pack("<Q", list_of_lists_entry(index, offset)))
        here = base + len(out)
        if own:
            entry = list_of_lists_entry(ci, int(cd.cache_address(InputVMAddr(own))) - here)
        elif methods:
            entry = list_of_lists_entry(ci, base - here)  # the shared empty method list
        else:
            entry = 0  # points at itself: an empty list (image 0's, always loaded)
        out.extend(struct.pack("<Q", entry))
        self.fields.setdefault(cd.index, []).append(
            _Field(owner.ro + field, (base + start) | LIST_OF_LISTS_TAG, methods)
        )

    # -- phase 5: the class_ro_t fields of one dylib ----------------------------------------------

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        fields = self.fields.get(dylib.index)
        if not fields or result.bound is None:
            return
        with result.timed("objc categories"):
            auth = self.auth
            locs = dylib.cache_addresses(np.array([f.location for f in fields], dtype=np.uint64))
            new = np.zeros(len(fields), dtype=CACHE_POINTER_FIELDS)
            new["location"] = locs
            new["target"] = [f.target for f in fields]
            if auth:
                methods = np.array([f.methods for f in fields])
                new["auth"] = methods
                new["key"] = np.where(methods, _METHOD_LIST_KEY_DA, 0)
                new["addr_div"] = methods
                new["diversity"] = np.where(methods, _METHOD_LIST_DIVERSITY, 0)
            # an existing pointer keeps its signing unless it is a method list (1162's PMD)
            set_pointers(result.bound, new)


def _category_list(cat: CategoryInput, which: str) -> int:
    """Input address of one of a category's lists when it has entries, else 0."""
    value = getattr(cat, which)
    if value is None or isinstance(value, int):
        return value or 0
    return value.address if value.names else 0
