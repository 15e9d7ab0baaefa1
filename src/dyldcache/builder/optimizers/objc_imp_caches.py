"""ObjC IMP Caches: preoptimized method caches that objc_msgSend reads without a lookup (the
seed's estimateIMPCaches in phase 2, emitObjCIMPCaches and setObjCImpCachesPointers in phase 5).

Format (dyld-1162 ``OptimizerObjC.h``, objc4 ``preopt_cache_t``): per class, a 16-byte
ImpCacheHeader_v2 (int64 fallback_class_offset from the class; cache_shift:5, cache_mask:11,
occupied:14, has_inlines:1, padding:1; unused:31, bit_one:1), then mask + 1 buckets of
ImpCacheEntry_v2 (impOffset:38, signed, (class - IMP) >> 2; selOffset:26, the selector's offset
from the start of the selector strings, where the magic selector is; empty: selOffset 0x3FFFFFF).
objc_msgSend looks a selector up at bucket ``((sel - magic) >> shift) & mask``; on a miss it
continues with the fallback class (its cache, then the method lists *from the fallback class*),
so a class's cache must hold every method of the classes between it and the fallback.
class_t's word 3 (objc4's ``_originalPreoptCache``, dyld's "method cache properties") points at
the header (arm64e, libobjc's ``_objc_opt_preopt_caches_version`` >= 4: signed DA,
address-diversified, 0x9cff). libobjc's ``_objc_opt_offsets`` (in ``__DATA_CONST,__objc_scoffs``)
gets the selector strings' start and end (the inlined-selector words stay 0, as in 1162).

When (1162's estimateIMPCaches): arm64 or arm64e, a shared region of 4 GiB or less (iOS: macOS
arm64's is 6 GiB, so never macOS), libobjc in the cache with ``__DATA_CONST,__objc_scoffs`` and
``_objc_opt_offsets``, and a non-empty objcOptimizations file (``--objc-optimizations``,
builder/objc_optimizations.py). Without a file this builder treats every class and metaclass of
the optimized images as needed on iOS (``--no-objc-imp-caches`` turns that off); 1162 builds none.

Which methods (1162's IMPCachesBuilder): a class's own base methods, then the categories of
its own image in catlist order (a later category overrides an earlier one and the class, as
libobjc attaches them); in a flattened hierarchy (a flattening root at or above the class) the
methods of every superclass up to and including the root too (the nearest definition wins;
``.cxx_construct`` / ``.cxx_destruct`` are never inherited), and the fallback is the root's
superclass; otherwise the fallback is the superclass.

No IMP cache, as 1162 (classes it drops): a class without methods (outside a flattened
hierarchy), one whose name is defined twice in the cache (and its subclasses), one whose own
list names a selector twice, one whose superclass is a missing (weak) import, one that already
has the cache word set. Stricter than 1162: a root class (1162 writes a fallback offset to
address 0 there, which libobjc would follow on a miss), a class with a category from another
image in its range (1162 expects the file to exclude those; its cache would miss the
category's methods), one with an IMP bound to another image. 1162 also skips images without
chained fixups (to read their binds more simply); this builder resolves opcode binds as well.

Selector placement (objc_selector_placement.py): as in 1162, the selector strings of the cached
classes are placed first so that each class's selectors fall into distinct buckets: here in
128-byte bags (shift 7), greedily, largest class first, with the smallest power-of-two bucket
count up to 8 times the method count; the other selector strings fill the gaps. 1162 places them
with a constraint solver that backtracks and drops classes (IMPCaches.cpp); this placement never
moves a string, and a class it cannot place gets a shift and mask searched over the final
offsets, or no IMP cache when none separates its selectors (never a partial one: a missing
method would be looked up from the fallback class, which is wrong).
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...cache.objc_format import (
    CLASS_T_PREOPT_CACHE_WORD,
    IMP_CACHE_ENTRY_V2_EMPTY_SEL,
    IMP_CACHE_HEADER_V2,
    LIBOBJC_PATH,
    OBJC_OPT_OFFSETS_SEGMENT,
    OBJC_OPT_OFFSETS_SYMBOL,
    OBJC_PREOPT_CACHES_VERSION_SYMBOL,
    OBJC_SCOFFS_SECTION,
)
from ..bind import CACHE_POINTER_FIELDS, set_pointers
from ..buffers import CacheBuffers
from ..cache_dylib import CacheDylib
from ..layout import Chunk, ChunkKind, RegionKind
from ..model import CacheModel
from ..objc_optimizations import ALL_CLASSES, ObjCOptimizations
from ..symbol_resolution import ExportIndex
from ..types import InputVMAddr
from .base import DylibResult, Optimizer
from .objc_canonical_selectors import MAGIC_SELECTOR, ObjCCanonicalSelectors
from .objc_input import ClassInput, ObjCImageInput, ObjCInputs, bound_targets
from .objc_selector_placement import BAG_SHIFT, GROWTH, place_selectors

#: libobjc's IMP-cache layout when it does not say (1162's default)
DEFAULT_PREOPT_CACHES_VERSION = 4
#: from this version on arm64e signs the cache pointer (DA, address-diversified, "originalPreoptCache")
SIGNED_FROM_VERSION = 4
PREOPT_CACHE_KEY_DA = 2
PREOPT_CACHE_DIVERSITY = 0x9CFF
#: the largest bucket mask the header holds (cache_mask:11)
MAX_MASK = 0x7FF
#: selOffset is 26 bits and all-ones is the empty bucket
MAX_SELECTOR_OFFSET = IMP_CACHE_ENTRY_V2_EMPTY_SEL
#: impOffset is 38 bits, signed, in 4-byte units
IMP_OFFSET_BITS = 38
#: never inherited into a flattened cache (object_cxxConstruct walks the hierarchy itself)
NOT_INHERITED = frozenset({b".cxx_construct", b".cxx_destruct"})
#: the arm64 shared regions that can have IMP caches (estimateIMPCaches: at most 4 GiB)
MAX_CACHE_SIZE = 1 << 32

#: (cache dylib index, input address) of a class or metaclass
ClassKey = tuple[int, int]
#: where an IMP is: (cache dylib index, input address)
Imp = tuple[int, int]


@dataclass(slots=True)
class _Class:
    key: ClassKey
    cls: ClassInput
    #: its superclass (None: a root class, or a superclass that does not resolve)
    superclass: ClassKey | None
    unresolved_superclass: bool
    #: another class or metaclass of the cache has its name
    duplicate: bool = False
    #: name -> IMP: base methods, then same-image categories (later ones win)
    methods: dict[bytes, Imp] = field(default_factory=dict)
    #: why no IMP cache may cover this class (None: it may)
    problem: str | None = None


@dataclass(slots=True)
class ImpCacheLayout:
    """One class's IMP cache: where it goes in the chunk and what it holds."""

    key: ClassKey
    offset: int
    shift: int
    mask: int
    fallback: ClassKey | None
    #: bucket index -> (selector offset, IMP), for the occupied buckets
    buckets: dict[int, tuple[int, Imp]]

    @property
    def size(self) -> int:
        return IMP_CACHE_HEADER_V2.size + 8 * (self.mask + 1)


def choose_hash(offsets: np.ndarray) -> tuple[int, int] | None:
    """(shift, mask) under which ``(offset >> shift) & mask`` differs for every offset: the
    smallest bucket count first, then the smallest shift; None when there is none."""
    n = len(offsets)
    buckets = 1 << max(n - 1, 0).bit_length()
    shifts = np.arange(32, dtype=np.uint64)[:, None]
    while buckets - 1 <= MAX_MASK and buckets <= GROWTH * max(n, 1):
        slots = (offsets.astype(np.uint64)[None, :] >> shifts) & np.uint64(buckets - 1)
        ordered = np.sort(slots, axis=1)
        distinct = np.all(ordered[:, 1:] != ordered[:, :-1], axis=1)
        if distinct.any():
            return int(np.flatnonzero(distinct)[0]), buckets - 1
        buckets <<= 1
    return None


class ObjCIMPCaches(Optimizer):
    name: ClassVar[str] = "ObjC IMP Caches"

    def __init__(
        self,
        objc: ObjCInputs,
        selectors: ObjCCanonicalSelectors,
        wanted: ObjCOptimizations | None,
    ) -> None:
        self.objc = objc
        self.selectors = selectors
        #: the objcOptimizations file (None: none given; an empty one: no IMP caches)
        self.wanted = wanted
        self.caches: list[ImpCacheLayout] = []
        #: class key -> why it got no IMP cache although it was needed
        self.skipped: dict[ClassKey, str] = {}
        self.size = 0
        self.version = DEFAULT_PREOPT_CACHES_VERSION
        self.chunk: Chunk | None = None
        #: input address of libobjc's _objc_opt_offsets
        self.scoffs = 0
        self.notes: list[str] = []
        self.auth = False
        #: cache dylib index -> its classes with a cache: (class input address, cache offset)
        self._by_dylib: dict[int, list[tuple[int, int]]] = {}
        self._dylibs: list[CacheDylib] = []

    # -- phase 2 --------------------------------------------------------------------------------

    def _settings(self, model: CacheModel) -> ObjCOptimizations | None:
        cfg = model.config
        if not self.objc.active or cfg.arch.name not in ("arm64", "arm64e"):
            return None
        if cfg.cache_size > MAX_CACHE_SIZE:
            return None
        if self.wanted is not None:
            return None if self.wanted.empty else self.wanted
        return ALL_CLASSES if cfg.platform_name == "ios" else None

    def _libobjc(self, model: CacheModel) -> bool:
        """libobjc has what IMP caches need: the section, the offsets symbol (noted, with the
        caches version, on self); a note says why not."""
        lib = next((d for d in model.dylibs if d.install_name == LIBOBJC_PATH), None)
        if lib is None or self.objc.image_of(lib) is None:
            return False
        if lib.image.section(OBJC_OPT_OFFSETS_SEGMENT, OBJC_SCOFFS_SECTION) is None:
            return False  # 1162: no warning (a FIXME there)
        exports = {e.name: e for e in lib.image.exports}
        offsets = exports.get(OBJC_OPT_OFFSETS_SYMBOL)
        if offsets is None or offsets.is_absolute or offsets.is_reexport:
            self.notes.append(f"no IMP caches: libobjc does not export {OBJC_OPT_OFFSETS_SYMBOL}")
            return False
        self.scoffs = lib.image.base_address + offsets.address
        version = exports.get(OBJC_PREOPT_CACHES_VERSION_SYMBOL)
        if version is not None and not version.is_absolute and not version.is_reexport:
            raw = lib.image.read_at_address(lib.image.base_address + version.address, 4)
            self.version = int.from_bytes(bytes(raw), "little", signed=True)
        return True

    def estimate(self, model: CacheModel) -> None:
        self.caches, self.skipped, self.size, self.notes = [], {}, 0, []
        self._by_dylib = {}
        self._dylibs = model.dylibs
        self.auth = model.config.arch.uses_pointer_auth
        wanted = self._settings(model)
        if wanted is None or not self._libobjc(model):
            return
        classes = self._classes(model)
        plans: list[tuple[_Class, dict[bytes, Imp], ClassKey]] = []
        for key, k in classes.items():
            if not wanted.needs(k.cls.name, k.cls.is_meta):
                continue
            plan = self._plan(classes, k)
            if isinstance(plan, str):
                self.skipped[key] = plan
            else:
                plans.append((k, *plan))
        fixed, masks = place_selectors([list(m) for _, m, _ in plans], len(MAGIC_SELECTOR) + 1)
        self.selectors.place_at(fixed)
        for (k, methods, fallback), mask in zip(plans, masks, strict=True):
            layout = self._layout(k, methods, fallback, mask)
            if isinstance(layout, str):
                self.skipped[k.key] = layout
                continue
            layout.offset = self.size
            self.size += layout.size
            self.caches.append(layout)
            self._by_dylib.setdefault(k.key[0], []).append((k.key[1], layout.offset))

    def _classes(self, model: CacheModel) -> dict[ClassKey, _Class]:
        """Every class and metaclass of the optimized images, with superclass and methods."""
        exports = ExportIndex(model.dylibs)
        out: dict[ClassKey, _Class] = {}
        names: dict[tuple[bytes, bool], int] = defaultdict(int)
        for _i, d, meta in self.objc.optimized():
            bound = [c.address + 8 for c in meta.classes if c.superclass is None]
            resolved = iter(bound_targets(d, exports, bound))
            for c in meta.classes:
                sup: ClassKey | None = None
                if c.superclass is None:
                    sup = next(resolved)
                elif c.superclass:
                    sup = (d.index, c.superclass)
                k = _Class((d.index, c.address), c, sup, c.superclass is None and sup is None)
                names[(c.name, c.is_meta)] += 1
                if c.has_cache_properties:
                    k.problem = "its method cache word is already set"
                self._own_methods(d, k)
                out[k.key] = k
        for _i, d, meta in self.objc.optimized():
            self._categories(d, meta, exports, out)
        for k in out.values():
            k.duplicate = names[(k.cls.name, k.cls.is_meta)] > 1
        return out

    def _own_methods(self, d: CacheDylib, k: _Class) -> None:
        ml = k.cls.methods
        if ml is None:
            return
        for name, imp in zip(ml.names, ml.imps, strict=True):
            if name in k.methods:
                k.problem = f"its method list names {name.decode(errors='replace')!r} twice"
            if imp is None:
                k.problem = f"the IMP of {name.decode(errors='replace')!r} is in another image"
            k.methods[name] = (d.index, imp or 0)

    def _categories(
        self, d: CacheDylib, meta: ObjCImageInput, exports: ExportIndex, out: dict[ClassKey, _Class]
    ) -> None:
        """Same-image categories extend their classes' methods; a category from another image
        makes its class and metaclass unfit for an IMP cache."""
        own = {c.address: c for c in meta.classes}
        bound = [cat.address + 8 for cat in meta.categories if cat.cls is None]
        resolved = iter(bound_targets(d, exports, bound))
        for cat in meta.categories:
            if cat.cls is None:
                target = out.get(next(resolved) or (-1, 0))
                if target is not None:
                    for key in (target.key, (target.key[0], target.cls.isa)):
                        if key in out:
                            out[key].problem = f"a category of {meta.install_name} extends it"
                continue
            cls = own.get(cat.cls) if cat.cls else None
            if cls is None:
                continue
            for ml, owner in ((cat.instance_methods, cls.address), (cat.class_methods, cls.isa)):
                k = out.get((d.index, owner))
                if ml is None or k is None:
                    continue
                for name, imp in zip(ml.names, ml.imps, strict=True):
                    if imp is None:
                        k.problem = f"the IMP of {name.decode(errors='replace')!r} is in another image"
                    k.methods[name] = (d.index, imp or 0)

    def _plan(self, classes: dict[ClassKey, _Class], k: _Class) -> tuple[dict[bytes, Imp], ClassKey] | str:
        """The methods an IMP cache of ``k`` holds and its fallback class, or why it has none."""
        chain = self._chain(classes, k)
        if isinstance(chain, str):
            return chain
        covered, fallback = chain
        methods: dict[bytes, Imp] = {}
        for i, c in enumerate(covered):
            if c.problem is not None:
                label = c.cls.name.decode(errors="replace")
                return c.problem if c is k else f"its superclass {label}: {c.problem}"
            for name, imp in c.methods.items():
                if i and name in NOT_INHERITED:
                    continue
                methods.setdefault(name, imp)
        if not methods and len(covered) == 1:
            return "it has no methods"
        return methods, fallback

    def _layout(
        self, k: _Class, methods: dict[bytes, Imp], fallback: ClassKey, mask: int | None
    ) -> ImpCacheLayout | str:
        """The IMP cache of class ``k``: the placed selectors' bags, or a shift and mask found
        over their final offsets; or why it gets none."""
        offsets = [self.selectors.offsets[n] for n in methods]
        if max(offsets, default=0) >= MAX_SELECTOR_OFFSET:
            return "a selector lies beyond selOffset's 26 bits"
        if mask is not None:
            shift = BAG_SHIFT
        else:
            found = choose_hash(np.array(offsets, dtype=np.uint64))
            if found is None:
                limit = min(MAX_MASK + 1, GROWTH * len(methods))
                return f"no shift separates its {len(methods)} selectors in {limit} buckets or fewer"
            shift, mask = found
        buckets = {
            (off >> shift) & mask: (off, imp) for off, imp in zip(offsets, methods.values(), strict=True)
        }
        assert len(buckets) == len(methods), "IMP cache selectors collide"
        return ImpCacheLayout(k.key, 0, shift, mask, fallback, buckets)

    def _chain(self, classes: dict[ClassKey, _Class], k: _Class) -> tuple[list[_Class], ClassKey] | str:
        """The classes a cache of ``k`` covers (k, then its superclasses up to the flattening
        root when one is at or above it) and the fallback class; or why there is none."""
        path: list[_Class] = []
        c: _Class | None = k
        root_at = -1
        while c is not None and len(path) <= len(classes):
            path.append(c)
            if c.unresolved_superclass:
                break
            if root_at < 0 and self._flattens(c):
                root_at = len(path) - 1
            if c.duplicate:
                return "it or a superclass is defined more than once in the cache"
            c = classes.get(c.superclass) if c.superclass is not None else None
        if any(p.unresolved_superclass for p in path):
            return "a superclass is a missing import"
        covered = path[: root_at + 1] if root_at >= 0 else path[:1]
        fallback = covered[-1].superclass
        if fallback is None:
            return "it is a root class (no fallback class)"
        return covered, fallback

    def _flattens(self, c: _Class) -> bool:
        wanted = self.wanted
        return wanted is not None and wanted.flattens(c.cls.name, c.cls.is_meta)

    # -- phase 3 --------------------------------------------------------------------------------

    def place(self, model: CacheModel) -> None:
        self.chunk = None
        sub = model.text_subcache(LIBOBJC_PATH)
        if sub is None or not self.caches:
            return
        text = sub.region(RegionKind.TEXT)
        self.chunk = text.add(Chunk("objc imp caches", ChunkKind.OBJC_READ_ONLY, self.size, 8))

    # -- phase 4: the caches (every address is known) ----------------------------------------------

    def _cache_address(self, key: ClassKey | Imp) -> int:
        d = self._dylibs[key[0]]
        return int(d.cache_address(InputVMAddr(key[1])))

    def pre_dylib_emit(self, model: CacheModel, buffers: CacheBuffers) -> None:
        if self.chunk is None:
            return
        out = bytearray()
        empty = struct.pack("<Q", IMP_CACHE_ENTRY_V2_EMPTY_SEL << IMP_OFFSET_BITS)
        imp_mask = (1 << IMP_OFFSET_BITS) - 1
        for c in self.caches:
            assert len(out) == c.offset
            cls = self._cache_address(c.key)
            fallback = self._cache_address(c.fallback) if c.fallback is not None else 0
            bits = c.shift | c.mask << 5 | len(c.buckets) << 16
            out += IMP_CACHE_HEADER_V2.pack(fallback - cls, bits, 1 << 31)
            words = [empty] * (c.mask + 1)
            for slot, (sel, imp) in c.buckets.items():
                delta = cls - self._cache_address(imp)
                assert delta % 4 == 0 and abs(delta >> 2) < 1 << (IMP_OFFSET_BITS - 1)
                words[slot] = struct.pack("<Q", sel << IMP_OFFSET_BITS | (delta >> 2) & imp_mask)
            out += b"".join(words)
        buffers.put(self.chunk, bytes(out))

    # -- phase 5: the class words and libobjc's offsets ----------------------------------------------

    def dylib_pass(self, dylib: CacheDylib, buffers: CacheBuffers, result: DylibResult) -> None:
        if self.chunk is None or result.bound is None:
            return
        mine = self._by_dylib.get(dylib.index, [])
        libobjc = dylib.install_name == LIBOBJC_PATH
        if not mine and not libobjc:
            return
        with result.timed("objc imp caches"):
            fields = [(a + 8 * CLASS_T_PREOPT_CACHE_WORD, int(self.chunk.vm_addr) + off) for a, off in mine]
            signed = len(fields)
            if libobjc:
                assert self.selectors.chunk is not None
                start = int(self.selectors.chunk.vm_addr)
                fields += [(self.scoffs, start), (self.scoffs + 8, start + self.selectors.chunk.size)]
                result.warnings += self.notes
            new = np.zeros(len(fields), dtype=CACHE_POINTER_FIELDS)
            new["location"] = dylib.cache_addresses(np.array([f[0] for f in fields], dtype=np.uint64))
            new["target"] = [f[1] for f in fields]
            if self.auth and self.version >= SIGNED_FROM_VERSION:
                new["auth"][:signed] = 1
                new["key"][:signed] = PREOPT_CACHE_KEY_DA
                new["addr_div"][:signed] = 1
                new["diversity"][:signed] = PREOPT_CACHE_DIVERSITY
            set_pointers(result.bound, new[np.argsort(new["location"], kind="stable")])
