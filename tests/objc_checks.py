"""Semantic checks of a cache's ObjC optimizations against its input dylibs.

Each checker takes ``(cache, inputs)`` and returns a list of problems (empty: the check passed):

- ``cache``: a CacheObjC, the cache read through tests/objc_oracle.py at a random slide (the
  emulator maps it and applies its slide info; the oracle decodes objc4's and dyld's structures
  itself, sharing no code with dyldcache);
- ``inputs``: an InputObjC, the metadata of the input dylibs, either read from the input files
  (mapped by the emulator with LIEF at random bases: :func:`inputs_from_files`) or, for Apple's
  caches whose inputs we do not have, from the cache's own images (:func:`inputs_from_cache`:
  read from an unmodified copy, so a mutated cache is compared with what it was built from).

The rules are libobjc's (objc4 objc-runtime-new.h/.mm, objc-abi.h) and dyld-1162's
(objc-shared-cache.h, OptimizerObjC.h):

- check_selectors_resolve: every selector an input names (selector references, method lists of
  classes, categories and protocols) is found through the perfect hash, and the table holds
  exactly one string of that name;
- check_selector_references: every __objc_selrefs entry of every image points at the table's
  string of the input's selector, in the input's order;
- check_class_and_protocol_tables: every class name finds exactly its definitions (the set of
  defining images) through the class table, every protocol name finds a protocol_t of that name;
- check_method_lists: every method list of every class, metaclass and category holds the input
  list's (selector name, IMP) pairs, IMPs moved to their cache addresses;
- check_sorted_method_lists: every list libobjc binary-searches ((flags & 3) == 3, expected
  entry size) is sorted by selector address (findMethodInSortedMethodList);
- check_preattached_categories: in an image marked DyldCategoriesOptimized (libobjc then skips its
  catlist at launch), every category with methods has each non-empty method list in the
  relative_list_list_t of its class (instance methods) or metaclass (class methods), with the
  input's (selector name, IMP) pairs and the category image's header_info index; the class's own
  list is the last entry (what OBJC_DISABLE_PREATTACHED_CATEGORIES keeps);
- check_canonical_protocols: every name of the protocol table leads to one protocol_t (the
  canonical one): of that name, its isa the Protocol class (the class table's), flagged
  PROTOCOL_IS_CANONICAL, its size the full protocol_t; every __objc_protorefs word and every
  protocol list entry (classes, metaclasses, categories, protocols) of every image marked
  OptimizedByDyld points at the canonical protocol of its name (libobjc's
  getPreoptimizedProtocol / remapProtocol trust them);
- check_header_info: one header_info per ObjC image, ascending by mach header, with the image's
  own objc_image_info; libobjc's objc_opt_t names the same tables as dyld's header; an image
  marked OptimizedByDyld has canonical selector references and its classes in the class table.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cache_fixtures import RawCache, input_segments, slide_of
from objc_oracle import Klass, ObjCMemory, ObjCOracle, Opt, StandaloneObjC, Table

#: objc_image_info flags (objc-abi.h)
OPTIMIZED_BY_DYLD = 1 << 3
DYLD_CATEGORIES_OPTIMIZED = 1 << 0
#: method_list_t flags (objc-runtime-new.h)
FIXED_UP = 3
#: protocol_t.flags (objc-runtime-new.h)
PROTOCOL_IS_CANONICAL = 1 << 29
#: sizeof(protocol_t), 64-bit: 8 pointers, size, flags, extendedMethodTypes, demangledName,
#: classProperties
PROTOCOL_T_SIZE = 96
#: class_ro_t pointer of class_t.bits (FAST_DATA_MASK)
_FAST_DATA_MASK = 0x00007FFFFFFFFFF8
SMALL_LIST = 0x80000000

Method = tuple[str, str, int]


@dataclass
class ImageObjC:
    """One image's ObjC metadata. Addresses (IMPs) are in the reader's space; ``to_cache`` of the
    owning InputObjC turns them into cache addresses."""

    install_name: str
    selector_references: list[str]
    #: classes and metaclasses
    classes: list[Klass]
    #: (name, class name, instance methods, class methods)
    categories: list[tuple[str, str | None, list[Method], list[Method]]]
    #: (name, address, [instance, class, optional instance, optional class methods])
    protocols: list[tuple[str, int, list[list[Method]]]]
    image_info: tuple[int, int] | None

    def selectors(self) -> set[str]:
        names = set(self.selector_references)
        for k in self.classes:
            names |= {m[0] for m in k.methods}
        for _n, _c, inst, cls in self.categories:
            names |= {m[0] for m in inst + cls}
        for _n, _a, lists in self.protocols:
            names |= {m[0] for ml in lists for m in ml}
        return names


@dataclass
class InputObjC:
    images: dict[str, ImageObjC]
    #: (install name, address in the reader's space) -> unslid cache address
    to_cache: Callable[[str, int], int]


@dataclass
class CacheObjC:
    oracle: ObjCOracle
    opt: Opt | None
    #: install name -> unslid mach header address
    image_addresses: dict[str, int]
    images: dict[str, ImageObjC] = field(default_factory=dict)

    @property
    def base_selector(self) -> int | None:
        return self.opt.base_selector if self.opt else None


def read_image(mem: ObjCMemory, install_name: str, base_selector: int | None) -> ImageObjC:
    return ImageObjC(
        install_name,
        [mem.text(a) for _, a in mem.selector_references(install_name)],
        mem.classes(install_name, base_selector),
        mem.categories(install_name, base_selector),
        mem.protocols(install_name, base_selector),
        mem.image_info(install_name),
    )


def open_cache(main_path: str, slide: int | None = None) -> CacheObjC:
    """The cache at ``main_path`` mapped at ``slide`` (random when None), and its ObjC images."""
    if slide is None:
        slide = random.randrange(1, 0x2000) * 0x4000
    oracle = ObjCOracle(main_path, slide)
    opt = oracle.opt()
    cache = CacheObjC(oracle, opt, dict(oracle.cache.images))
    for name in oracle.cache.images:
        if oracle.image_info(name) is not None:
            cache.images[name] = read_image(oracle, name, cache.base_selector)
    return cache


def inputs_from_cache(cache: CacheObjC) -> InputObjC:
    """The images of a cache as the inputs (Apple's caches: their inputs are not available)."""
    return InputObjC(dict(cache.images), lambda _name, address: address)


def inputs_from_files(
    main_path: str, inputs: dict[str, str], arch: str, seed: int, *, partial: bool = False
) -> InputObjC:
    """The input dylibs (install name -> path) of the cache at ``main_path``, mapped by the
    emulator. ``partial``: the ObjC images of a real root without the rest of their closure
    (binds to other images null: load_standalone)."""
    mem = StandaloneObjC(list(inputs.values()), arch, seed, partial=partial)
    raw = RawCache(main_path)
    segments = {name: (input_segments(path, arch), raw.segments(name)) for name, path in inputs.items()}
    images = {name: read_image(mem, name, None) for name in inputs if mem.image_info(name) is not None}

    def to_cache(_name: str, address: int) -> int:
        if not address:
            return 0
        owner, vmaddr = mem.image_of(address)
        return vmaddr + slide_of(*segments[owner], vmaddr)

    return InputObjC(images, to_cache)


# ---------------------------------------------------------------------------------------------
# the checks


def _table_addresses(cache: CacheObjC, t: Table) -> dict[str, int]:
    return {
        s.decode("utf-8", "surrogateescape"): t.address + t.offsets[slot] for slot, s in t.strings.items()
    }


def check_selectors_resolve(cache: CacheObjC, inputs: InputObjC) -> list[str]:
    t = cache.opt.selectors if cache.opt else None
    if t is None or not t.capacity:
        return ["the cache has no selector table"]
    counts = Counter(t.strings.values())
    problems = []
    for name in sorted(set().union(*(im.selectors() for im in inputs.images.values()))):
        key = name.encode("utf-8", "surrogateescape")
        if cache.oracle.slot(t, key) is None:
            problems.append(f"selector {name!r} is not found through the perfect hash")
        elif counts[key] != 1:
            problems.append(f"selector {name!r} is {counts[key]} strings of the table")
    return problems


def check_selector_references(cache: CacheObjC, inputs: InputObjC) -> list[str]:
    t = cache.opt.selectors if cache.opt else None
    if t is None or not t.capacity:
        return ["the cache has no selector table"]
    canonical = _table_addresses(cache, t)
    problems = []
    for name, im in inputs.images.items():
        if name not in cache.image_addresses:
            problems.append(f"{name}: not in the cache")
            continue
        refs = cache.oracle.selector_references(name)
        got = [cache.oracle.text(a) for _, a in refs]
        if got != im.selector_references:
            problems.append(
                f"{name}: selector references {got} differ from the input's {im.selector_references}"
            )
        for (location, a), sel in zip(refs, got, strict=True):
            if canonical.get(sel) != a:
                problems.append(f"{name}: selref at {location:#x} points at {a:#x}, not the table's {sel!r}")
    return problems


def _index_to_image(cache: CacheObjC) -> dict[int | None, str]:
    by_address = {a: n for n, a in cache.image_addresses.items()}
    assert cache.opt is not None
    return {i: by_address.get(h[0], f"?{h[0]:#x}") for i, h in enumerate(cache.opt.header_infos)}


def check_class_and_protocol_tables(cache: CacheObjC, inputs: InputObjC) -> list[str]:
    opt = cache.opt
    if opt is None or opt.classes is None or not opt.classes.capacity:
        return ["the cache has no class table"]
    problems = []
    expected: dict[str, set[str]] = {}
    for name, im in inputs.images.items():
        for k in im.classes:
            if not k.meta:
                expected.setdefault(k.name, set()).add(name)
    image_of = _index_to_image(cache)
    found: dict[str, set[str]] = {}
    for cls_name, address, index in opt.class_objects:
        image = image_of.get(index, f"?index {index}")
        found.setdefault(cls_name, set()).add(image)
        if cache.oracle._super_name(address) != cls_name:
            problems.append(
                f"class table: {cls_name!r} names the class at {address:#x}, which is not {cls_name!r}"
            )
    for cls_name in sorted(expected):
        if found.get(cls_name, set()) != expected[cls_name]:
            problems.append(
                f"class {cls_name!r}: the table finds {sorted(found.get(cls_name, ()))}, "
                f"the inputs define it in {sorted(expected[cls_name])}"
            )
    protocols = {n for im in inputs.images.values() for n, _a, _l in im.protocols}
    table = {}
    for proto_name, address, _index in opt.protocol_objects if opt.protocols else []:
        table.setdefault(proto_name, []).append(address)
    for proto_name in sorted(protocols):
        if proto_name not in table:
            problems.append(f"protocol {proto_name!r} is not found through the protocol table")
        for address in table.get(proto_name, []):
            if cache.oracle.text(cache.oracle.ptr(address + 8)) != proto_name:
                problems.append(
                    f"protocol table: {proto_name!r} names a protocol_t at {address:#x} of another name"
                )
    return problems


def _moved(inputs: InputObjC, image: str, methods: list[Method]) -> list[Method]:
    return sorted((n, t, inputs.to_cache(image, imp)) for n, t, imp in methods)


def check_method_lists(cache: CacheObjC, inputs: InputObjC) -> list[str]:
    problems = []
    for name, im in inputs.images.items():
        cached = cache.images.get(name)
        if cached is None:
            problems.append(f"{name}: no ObjC image in the cache")
            continue
        ours = {(k.name, k.meta): sorted(k.methods) for k in cached.classes}
        for k in im.classes:
            what = f"{name}: {'+' if k.meta else '-'}[{k.name}]"
            want = _moved(inputs, name, k.methods)
            if (k.name, k.meta) not in ours:
                problems.append(f"{what}: class missing from the cache image")
            elif ours[(k.name, k.meta)] != want:
                problems.append(f"{what}: methods {ours[(k.name, k.meta)]} differ from the input's {want}")
        # in catlist order: categories of one name on classes of other images (unnamed when
        # those images are not read) are told apart by their place
        if len(cached.categories) != len(im.categories):
            problems.append(
                f"{name}: {len(cached.categories)} categories, the input has {len(im.categories)}"
            )
        for (cat, cls, inst, clsm), ours in zip(im.categories, cached.categories, strict=False):
            want = (cat, cls, _moved(inputs, name, inst), _moved(inputs, name, clsm))
            got = (ours[0], ours[1], sorted(ours[2]), sorted(ours[3]))
            if got != want:
                problems.append(f"{name}: category {cls}({cat}) {got} != the input's {want}")
    return problems


def check_preattached_categories(cache: CacheObjC, inputs: InputObjC) -> list[str]:
    o, opt = cache.oracle, cache.opt
    if opt is None:
        return ["the cache has no ObjC optimization header"]
    index_of = {h[0]: i for i, h in enumerate(opt.header_infos)}
    problems = []
    for name, im in inputs.images.items():
        info = o.image_info(name)
        if info is None or not info[1] & DYLD_CATEGORIES_OPTIMIZED:
            continue
        mine = index_of.get(cache.image_addresses[name])
        for slot, (cat, cls_name, inst, clsm) in zip(
            o.pointer_section(name, "__objc_catlist"), im.categories, strict=True
        ):
            cls = o.ptr(slot + 8)
            if not cls:
                continue
            for klass, methods, sign in ((cls, inst, "-"), (o.ptr(cls), clsm, "+")):
                if not methods:
                    continue
                what = f"{name}: {sign}[{cls_name}({cat})]"
                field = o.ptr((o.ptr(klass + 32) & 0x00007FFFFFFFFFF8) + 32)
                if not field & 1:
                    problems.append(f"{what}: the class's method list is not a list of lists")
                    continue
                lists = o.list_of_lists(field & ~1)
                want = _moved(inputs, name, methods)
                found = [
                    i
                    for i, (index, la) in enumerate(lists[:-1])
                    if index == mine and sorted(o.method_list(la, cache.base_selector)) == want
                ]
                if not found:
                    problems.append(f"{what}: no pre-attached list of image {mine} holds {want}")
    return problems


def check_sorted_method_lists(cache: CacheObjC, inputs: InputObjC) -> list[str]:
    problems = []
    for name in inputs.images:
        if name not in cache.image_addresses:
            continue
        for owner, address in cache.oracle.method_list_addresses(name):
            flags, sels = cache.oracle.method_list_selectors(address, cache.base_selector)
            expected_size = 12 if flags & SMALL_LIST else 24
            if (flags & 3) != FIXED_UP or (flags & 0xFFFC) != expected_size:
                continue  # libobjc searches it linearly
            if sels != sorted(sels):
                problems.append(
                    f"{name}: {owner}'s method list at {address:#x} is not sorted by selector address"
                )
    return problems


def check_header_info(cache: CacheObjC, inputs: InputObjC) -> list[str]:
    opt = cache.opt
    if opt is None:
        return ["the cache has no ObjC optimization header"]
    problems = []
    headers = [h[0] for h in opt.header_infos]
    if headers != sorted(headers):
        problems.append("header_info entries are not in ascending mach header order")
    by_header = Counter(headers)
    for name in inputs.images:
        address = cache.image_addresses.get(name)
        if address is None or by_header[address] != 1:
            problems.append(f"{name}: {by_header[address] if address else 0} header_info entries, not 1")
    canonical = _table_addresses(cache, opt.selectors) if opt.selectors else {}
    class_images = {(n, i) for n, _a, i in opt.class_objects}
    index_of = {h: i for i, h in enumerate(headers)}
    by_address = {a: n for n, a in cache.image_addresses.items()}
    for mh, version, flags, _loaded in opt.header_infos:
        name = by_address.get(mh)
        if name is None:
            problems.append(f"header_info entry for {mh:#x}, which is no image")
            continue
        if cache.oracle.image_info(name) != (version, flags):
            problems.append(
                f"{name}: header_info's objc_image_info {(version, flags)} is not the image's own"
            )
        if not flags & OPTIMIZED_BY_DYLD:
            continue
        bad = [
            a for _l, a in cache.oracle.selector_references(name) if canonical.get(cache.oracle.text(a)) != a
        ]
        if bad:
            problems.append(
                f"{name}: marked OptimizedByDyld with {len(bad)} selector references not canonical"
            )
        im = cache.images.get(name)
        missing = [
            k.name
            for k in (im.classes if im else [])
            if not k.meta and (k.name, index_of[mh]) not in class_images
        ]
        if missing:
            problems.append(f"{name}: marked OptimizedByDyld, classes {missing} are not in the class table")
    problems += _check_objc_opt(cache, opt)
    return problems


def _check_objc_opt(cache: CacheObjC, opt: Opt) -> list[str]:
    """libobjc's objc_opt_t (v16) must name the tables of dyld's ObjCOptimizationHeader."""
    if opt.legacy:
        return []  # the v15 tables are found through objc_opt_t itself
    o = cache.oracle
    sect = o.sections("/usr/lib/libobjc.A.dylib").get(("__TEXT", "__objc_opt_ro"))
    if sect is None:
        return ["libobjc has no __TEXT,__objc_opt_ro"]
    at = sect[0]
    version, sel, cls, pro = o.u32(at), o.i32(at + 8), o.i32(at + 32), o.i32(at + 36)
    problems = []
    if version != 16:
        problems.append(f"libobjc's objc_opt_t is version {version}, not 16")
    for what, offset, t in (
        ("selector", sel, opt.selectors),
        ("class", cls, opt.classes),
        ("protocol", pro, opt.protocols),
    ):
        if t is not None and t.capacity and at + offset != t.address:
            problems.append(
                f"libobjc's objc_opt_t {what} table {at + offset:#x} is not dyld's {t.address:#x}"
            )
    rel = o.i64(at + 40)
    if opt.base_selector is not None and rel and at + rel != opt.base_selector:
        problems.append(
            f"libobjc's relative method selector base {at + rel:#x} is not {opt.base_selector:#x}"
        )
    return problems


def _protocol_ref_slots(mem: ObjCMemory, image: str) -> list[tuple[str, int]]:
    """(owner, slot address) of every pointer naming a protocol in ``image``."""
    slots = []
    for (seg, sect), (addr, size) in mem.sections(image).items():
        if sect == "__objc_protorefs" and seg != "__TEXT":
            slots += [("__objc_protorefs", addr + 8 * i) for i in range(size // 8)]

    def protocol_list(owner: str, a: int) -> None:
        if a:
            slots.extend((owner, a + 8 + 8 * i) for i in range(mem.u64(a)))

    for a in mem.pointer_section(image, "__objc_classlist"):
        for cls in (a, mem.ptr(a)):
            ro = mem.ptr(cls + 32) & _FAST_DATA_MASK
            protocol_list(f"class {mem.text(mem.ptr(ro + 24))}", mem.ptr(ro + 40))
    for a in mem.pointer_section(image, "__objc_catlist"):
        protocol_list(f"category {mem.text(mem.ptr(a))}", mem.ptr(a + 32))
    for a in mem.pointer_section(image, "__objc_protolist"):
        protocol_list(f"protocol {mem.text(mem.ptr(a + 8))}", mem.ptr(a + 16))
    return slots


def check_canonical_protocols(cache: CacheObjC, inputs: InputObjC) -> list[str]:
    opt = cache.opt
    if opt is None or opt.protocols is None or not opt.protocols.capacity:
        return ["the cache has no protocol table"]
    o = cache.oracle
    protocol_class = {a for n, a, _i in opt.class_objects if n == "Protocol"}
    if len(protocol_class) != 1:
        return [f"the class table has {len(protocol_class)} classes named 'Protocol'"]
    problems = []
    canonical: dict[str, set[int]] = {}
    for name, address, _index in opt.protocol_objects:
        canonical.setdefault(name, set()).add(address)
    for name, addresses in sorted(canonical.items()):
        if len(addresses) != 1:
            problems.append(f"protocol {name!r}: the table names {len(addresses)} protocol_t, not one")
        for a in addresses:
            what = f"canonical protocol {name!r} at {a:#x}"
            if o.text(o.ptr(a + 8)) != name:
                problems.append(f"{what}: its name is {o.text(o.ptr(a + 8))!r}")
            if o.ptr(a) not in protocol_class:
                problems.append(f"{what}: its isa {o.ptr(a):#x} is not the Protocol class")
            size, flags = o.u32(a + 64), o.u32(a + 68)
            if not flags & PROTOCOL_IS_CANONICAL:
                problems.append(f"{what}: flags {flags:#x} lack PROTOCOL_IS_CANONICAL")
            if size < PROTOCOL_T_SIZE:
                problems.append(f"{what}: size {size} is not a full protocol_t")
    for image, im in sorted(cache.images.items()):
        if im.image_info is None or not im.image_info[1] & OPTIMIZED_BY_DYLD:
            continue
        for owner, slot in _protocol_ref_slots(o, image):
            target = o.ptr(slot)
            name = o.text(o.ptr(target + 8))
            if {target} != canonical.get(name):
                problems.append(
                    f"{image}: {owner} names protocol {name!r} at {target:#x}, not its canonical one"
                )
    return problems


def protocol_table_words(main_path: str) -> set[int]:
    """The word addresses of every protocol_t the protocol table names (with canonical
    protocols: the copies the builder adds, whose pointers no input fixup gives)."""
    opt = ObjCOracle(main_path, 0).opt()
    if opt is None or opt.protocols is None:
        return set()
    return {a + 8 * i for _n, a, _i in opt.protocol_objects for i in range(PROTOCOL_T_SIZE // 8)}


# ---------------------------------------------------------------------------------------------
# IMP caches

#: never inherited into a flattened IMP cache (objc4 calls them for each class of the hierarchy)
_NOT_INHERITED = {".cxx_construct", ".cxx_destruct"}


@dataclass
class _Lookup:
    """Method lookup on the inputs, in cache addresses: lookUpImpOrForward's walk (the class,
    then each superclass; in each class its categories, the last attached first, then its own
    list), with categories attached in image order and catlist order as libobjc attaches them."""

    #: cache address -> (install name, class)
    classes: dict[int, tuple[str, Klass]]
    #: cache address -> superclass cache address (0: none)
    supers: dict[int, int]
    #: cache address -> methods of its categories, the one attached last first
    categories: dict[int, list[list[Method]]]

    def own(self, cls: int) -> dict[str, int]:
        """selector -> IMP (cache address) that one class defines, categories included."""
        _name, k = self.classes[cls]
        out: dict[str, int] = {}
        for methods in self.categories.get(cls, []):
            for sel, _types, imp in methods:
                out.setdefault(sel, imp)
        for sel, _types, imp in k.methods:
            out.setdefault(sel, imp)
        return out

    def chain(self, cls: int) -> list[int]:
        out = []
        while cls and cls in self.classes and cls not in out:
            out.append(cls)
            cls = self.supers.get(cls, 0)
        return out

    def find(self, cls: int, sel: str) -> int | None:
        for c in self.chain(cls):
            imp = self.own(c).get(sel)
            if imp is not None:
                return imp
        return None


def _lookup(cache: CacheObjC, inputs: InputObjC) -> _Lookup:
    classes: dict[int, tuple[str, Klass]] = {}
    supers: dict[int, int] = {}
    by_name: dict[tuple[str, bool], list[int]] = {}
    order = sorted(inputs.images, key=lambda n: cache.image_addresses.get(n, 0))
    for name in order:
        for k in inputs.images[name].classes:
            at = inputs.to_cache(name, k.address)
            moved = Klass(**{**k.__dict__, "methods": _moved(inputs, name, k.methods)})
            classes[at] = (name, moved)
            supers[at] = inputs.to_cache(name, k.superclass) if k.superclass else 0
            by_name.setdefault((k.name, k.meta), []).append(at)
    categories: dict[int, list[list[Method]]] = {}
    for name in order:
        for _cat, cls_name, inst, clsm in inputs.images[name].categories:
            for meta, methods in ((False, inst), (True, clsm)):
                targets = by_name.get((cls_name or "", meta), [])
                if len(targets) == 1 and methods:
                    categories.setdefault(targets[0], []).insert(0, _moved(inputs, name, methods))
    return _Lookup(classes, supers, categories)


def check_imp_caches(cache: CacheObjC, inputs: InputObjC) -> list[str]:
    """Every preoptimized cache a class points at (objc4's preopt_cache_t), as objc_msgSend
    reads it: each entry sits in bucket ``((sel - base) >> shift) & mask``, where base is the
    selector strings' start that libobjc's objc_opt_offsets[0] names (the magic selector, the
    base of the method lists' direct selectors too); no selector is in two buckets; occupied
    counts the entries and bit_one is set; each (selector, IMP) is what method lookup through
    the class, its categories and its superclass chain finds on the inputs; the fallback class
    is a superclass, and every selector defined by the classes from the class up to the
    fallback (excluded) is in the cache (a miss continues at the fallback class, so a method
    missing there would be looked up from the wrong class). On arm64 caches only: elsewhere the
    word is the old ABI's vtable (bound to _objc_empty_vtable) and libobjc ignores it."""
    o = cache.oracle
    if not o.arch.startswith("arm64"):
        return []  # objc4 reads preoptimized caches on arm64 only (CONFIG_USE_PREOPT_CACHES)
    caches = {
        k.address: (name, k, pc)
        for name, im in cache.images.items()
        for k in im.classes
        if (pc := o.preopt_cache(k.address)) is not None
    }
    if not caches:
        return []
    offsets = o.opt_offsets()
    if offsets is None:
        return ["classes have IMP caches but libobjc exports no _objc_opt_offsets"]
    base = offsets[0]
    problems = []
    if cache.base_selector is not None and base != cache.base_selector:
        problems.append(f"objc_opt_offsets[0] {base:#x} is not the selector base {cache.base_selector:#x}")
    if offsets[1] <= base:
        problems.append(f"objc_opt_offsets[1] {offsets[1]:#x} does not end the selector strings")
    lookup = _lookup(cache, inputs)
    for at, (name, k, pc) in caches.items():
        what = f"{name}: {'+' if k.meta else '-'}[{k.name}] IMP cache at {pc.address:#x}"
        if at not in lookup.classes:
            problems.append(f"{what}: the class is not among the inputs")
            continue
        if not pc.bit_one or pc.occupied != len(pc.buckets):
            problems.append(f"{what}: bit_one {pc.bit_one}, occupied {pc.occupied} of {len(pc.buckets)}")
        names: dict[str, int] = {}
        for slot, (sel_offs, imp) in sorted(pc.buckets.items()):
            sel = o.text(base + sel_offs)
            if sel in names:
                problems.append(f"{what}: {sel} is in buckets {names[sel]} and {slot}")
            names[sel] = slot
            if ((sel_offs >> pc.shift) & pc.mask) != slot:
                problems.append(
                    f"{what}: {sel} is in bucket {slot}, its hash says {(sel_offs >> pc.shift) & pc.mask}"
                )
            want = lookup.find(at, sel)
            if want != imp:
                shown = "no method" if want is None else f"{want:#x}"
                problems.append(f"{what}: {sel} -> {imp:#x}, method lookup finds {shown}")
        chain = lookup.chain(at)
        if pc.fallback not in chain[1:] and not (pc.fallback and lookup.supers.get(chain[-1]) == pc.fallback):
            problems.append(f"{what}: the fallback class {pc.fallback:#x} is not a superclass")
            continue
        covered = chain[: chain.index(pc.fallback)] if pc.fallback in chain else chain
        for i, c in enumerate(covered):
            for sel in lookup.own(c):
                if sel not in names and not (i and sel in _NOT_INHERITED):
                    problems.append(f"{what}: {sel} (defined by {lookup.classes[c][1].name}) is not cached")
    return problems


CHECKS: dict[str, Callable[[CacheObjC, InputObjC], list[str]]] = {
    "selectors_resolve": check_selectors_resolve,
    "selector_references": check_selector_references,
    "class_and_protocol_tables": check_class_and_protocol_tables,
    "method_lists": check_method_lists,
    "sorted_method_lists": check_sorted_method_lists,
    "header_info": check_header_info,
    "canonical_protocols": check_canonical_protocols,
    "imp_caches": check_imp_caches,
}
