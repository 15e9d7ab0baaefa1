"""The semantic checks of the ObjC optimizers (tests/objc_checks.py) and the ObjC fixture root
(tests/fixtures/src/objc, tests/objc_fixtures.py).

- On Apple's ObjC caches (optimized by Apple's builder) every check passes, and each check reports
  a copy of the cache mutated where it looks.
- Messages sent in unicorn through the libobjc stand-in's objc_msgSend (C, searching the cache's
  method lists) give the values the methods' arithmetic gives, on every arch, at a random slide.
- On our caches of the fixture root every check passes too (the ObjC optimizers of
  builder/optimizers/objc_*.py), with the pointer method lists our linker writes and with the
  relative method lists ld64.lld-22 writes (which the builder converts to selectors named from
  the selector strings base, as dyld-1162's convertObjCMethodListsToOffsets does).
"""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import emulator
import objc_checks as oc
import objc_fixtures as fx
import pytest
from cache_fixtures import RawCache, random_slide
from conftest import python_module, shared_path
from objc_oracle import ObjCOracle, StandaloneObjC

APPLE_OBJC = ("dyld_shared_cache_arm64-macOS-objc", "dyld_shared_cache_arm64e-macOS-objc")


def _apple(name: str) -> Path:
    return shared_path("data", "real", "apple-caches", name)


# ---------------------------------------------------------------------------------------------
# Apple's caches: every check passes


@pytest.mark.parametrize("name", APPLE_OBJC)
def test_checks_pass_on_apple_caches(name: str) -> None:
    cache = oc.open_cache(str(_apple(name)))
    inputs = oc.inputs_from_cache(cache)
    # not vacuous: selectors, classes, a protocol, and sorted relative method lists to check
    assert sum(len(im.selectors()) for im in inputs.images.values()) > 50
    assert any(not k.meta for im in inputs.images.values() for k in im.classes)
    assert any(im.protocols for im in inputs.images.values())
    assert all(im.image_info and im.image_info[1] & oc.OPTIMIZED_BY_DYLD for im in inputs.images.values())
    for check_name, check in oc.CHECKS.items():
        assert check(cache, inputs) == [], check_name


# ---------------------------------------------------------------------------------------------
# ... and reports a mutated copy


def _file_offset(raw: RawCache, address: int) -> int:
    f, mp = raw.locate(address)
    assert f is raw.main
    return mp.file_offset + address - mp.address


def _mutate(src: Path, dst: Path, what: str) -> None:
    """Write into ``dst`` a copy of ``src`` changed where the check ``what`` looks."""
    shutil.copy(src, dst)
    dst.chmod(0o644)
    data = bytearray(src.read_bytes())
    raw = RawCache(src)
    cache = oc.open_cache(str(src), 0)
    o, opt = cache.oracle, cache.opt
    assert opt is not None and opt.selectors is not None and opt.classes is not None
    hello = "/usr/lib/libhello-1.0.dylib"

    def put(address: int, fmt: str, *values: int) -> None:
        struct.pack_into(fmt, data, _file_offset(raw, address), *values)

    if what == "selectors_resolve":  # one byte of a selector string the images use
        name = cache.images[hello].selector_references[0].encode()
        slot = o.slot(opt.selectors, name)
        assert slot is not None
        put(opt.selectors.address + opt.selectors.offsets[slot], "<B", name[0] ^ 0x20)
    elif what == "selector_references":  # two selrefs swap targets (the chain bits stay)
        (l1, a1), (l2, a2) = o.selector_references(hello)[:2]
        assert a1 != a2
        r1, r2 = (struct.unpack_from("<Q", data, _file_offset(raw, loc))[0] for loc in (l1, l2))
        put(l1, "<Q", r1 - a1 + a2)
        put(l2, "<Q", r2 - a2 + a1)
    elif what == "class_and_protocol_tables":  # a class name's string offset is cleared
        t = opt.classes
        hello_class = next(k.name for k in cache.images[hello].classes if not k.meta).encode()
        slot = next(s for s, key in t.strings.items() if key == hello_class)
        put(t.address + 1056 + t.mask + 1 + t.capacity + 4 * slot, "<i", 0)
    elif what in ("method_lists", "sorted_method_lists"):
        owner, ml = next(
            (n, a) for n, a in o.method_list_addresses("/usr/lib/libobjc.A.dylib") if o.u32(a + 4) >= 2
        )
        flags = o.u32(ml)
        assert flags & 0xC0000003 == 0xC0000003, (owner, hex(flags))  # small, direct, sorted
        e0, e1 = ml + 8, ml + 20
        if what == "method_lists":  # an IMP moves by one instruction
            put(e0 + 8, "<i", o.i32(e0 + 8) + 4)
        else:  # two entries swap (offsets from their fields adjusted: the same methods, unsorted)
            n0, t0, i0 = (o.i32(e0 + k) for k in (0, 4, 8))
            n1, t1, i1 = (o.i32(e1 + k) for k in (0, 4, 8))
            # direct selectors are offsets from the base objc_opt_t names, or without one (v15)
            # from their own field
            d = 0 if opt.base_selector is not None else 12
            put(e0, "<3i", n1 + d, t1 + 12, i1 + 12)
            put(e1, "<3i", n0 - d, t0 - 12, i0 - 12)
    elif what == "canonical_protocols":  # a protocol list entry names libobjc's own NSObject
        lib = "/usr/lib/libobjc.A.dylib"
        (own,) = o.pointer_section(lib, "__objc_protolist")
        _owner, ref = oc._protocol_ref_slots(o, lib)[0]
        canonical = o.ptr(ref)
        assert own != canonical and o.text(o.ptr(own + 8)) == "NSObject"
        raw_word = struct.unpack_from("<Q", data, _file_offset(raw, ref))[0]
        put(ref, "<Q", raw_word - canonical + own)
    elif what == "header_info":  # one image loses its header_info entry
        opt_ro = o.sections("/usr/lib/libobjc.A.dylib")[("__TEXT", "__objc_opt_ro")][0]
        ro = opt_ro + o.i32(opt_ro + 12)
        put(ro, "<I", o.u32(ro) - 1)
    else:
        raise AssertionError(what)
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize("name", APPLE_OBJC)
# Apple's caches have no IMP caches (macOS arm64: dyld-1162 builds them for regions of 4 GiB at
# most); test_objc_imp_caches.py mutates ours
@pytest.mark.parametrize("what", [c for c in oc.CHECKS if c != "imp_caches"])
def test_each_check_reports_a_mutated_apple_cache(name: str, what: str, tmp_path: Path) -> None:
    src = _apple(name)
    inputs = oc.inputs_from_cache(oc.open_cache(str(src)))  # what the cache was built from
    dst = tmp_path / name
    _mutate(src, dst, what)
    mutated = oc.open_cache(str(dst))
    problems = oc.CHECKS[what](mutated, inputs)
    assert problems, f"{what} did not notice the mutation"
    if what == "sorted_method_lists":  # the same methods, only their order is wrong
        assert oc.check_method_lists(mutated, inputs) == []


# ---------------------------------------------------------------------------------------------
# emulation: messages across dylibs through the stand-in's objc_msgSend


#: (image, C entry point, arguments, value) from the methods' arithmetic (see the sources)
def _calls(v: int, k: int) -> list[tuple[str, str, tuple[int, ...], int]]:
    return [
        (fx.SHAPES, "_fxshapes_probe", (v,), 6 * v + 1),
        (fx.POLY, "_fxpoly_probe", (v,), 10 * v + 36),
        (fx.TOP, "_fxtop_value", (v,), 20 * v + 20),
        (fx.TOP, "_fxtop_scaled", (v, k), (20 * v + 20) * k),
        (fx.TOP, "_fxtop_tripled", (v,), 60 * v + 60),
        (fx.TOP, "_fxtop_kinds", (), 1174),
        (fx.TOP, "_fxtop_root", (), 3 + 30 + 101 + 2000),
        (fx.TOP, "_fxtop_responds", (), 1 + 2),
    ]


def _counter(loaded: emulator.LoadedCache, name: str) -> int:
    address = loaded.lookup(fx.LIBOBJC, name)
    assert address is not None, name
    return int(struct.unpack("<i", loaded.machine.read(address, 4))[0])


def _map_images(loaded: emulator.LoadedCache) -> int:
    """What dyld's map_images notification would give libobjc: each ObjC image's mach header."""
    map_image = loaded.lookup(fx.LIBOBJC, "_fxrt_map_image")
    assert map_image is not None
    return sum(loaded.machine.call_int(map_image, loaded.images[n] + loaded.slide) for n in fx.OBJC_IMAGES)


def check_calls(loaded: emulator.LoadedCache) -> None:
    """The fixture's C entry points return the natively computed results (random arguments),
    and no binary search of the stand-in missed a method."""
    rng = random.Random()
    v, k = rng.randrange(-1000, 1000), rng.randrange(-20, 20)
    got = {}
    for image, fn, args, _want in _calls(v, k):
        address = loaded.lookup(image, fn)
        assert address is not None, fn
        got[fn] = loaded.machine.call_int(address, *args)
    assert got == {fn: want for _i, fn, _a, want in _calls(v, k)}
    assert _counter(loaded, "_fxrt_sorted_misses") == 0


def _fixture_cache(lists: str, arch: str) -> fx.ObjCBuilt:
    return fx.objc_cache(arch) if lists == "pointer" else fx.relative_objc_cache(arch)


@pytest.mark.parametrize(
    ("lists", "arch"), [("pointer", a) for a in fx.ARCHS] + [("relative", a) for a in fx.RELATIVE_ARCHS]
)
def test_messages_across_dylibs_in_emulation(lists: str, arch: str) -> None:
    built = _fixture_cache(lists, arch)
    assert set(fx.OBJC_IMAGES) <= set(built.result.dylibs), built.result.evictions
    loaded = emulator.load_cache(built.main, arch, random_slide(built.main))
    assert _map_images(loaded) == 2  # FXBase (FXPolyExtras), NSObject (FXTopDebug)
    check_calls(loaded)
    assert _counter(loaded, "_fxrt_linear_searches") + _counter(loaded, "_fxrt_binary_searches") > 20


def _write_class(m: emulator.Machine, at: int, methods: int) -> tuple[int, int]:
    """A class at ``at`` whose class_ro_t's base method list is at ``methods``: (class, ro)."""
    ro = at + 0x40
    m.write(at, struct.pack("<5Q", 0, 0, 0, 0, ro))
    m.write(ro, struct.pack("<4I4Q", 0, 8, 8, 0, 0, 0, methods, 0))
    return at, ro


@pytest.mark.parametrize("form", ["selrefs", "direct"])
@pytest.mark.parametrize("fixed_up", [False, True])
def test_stub_searches_relative_method_lists(form: str, fixed_up: bool) -> None:
    """The stand-in's lookup on relative method lists written by hand (no clang emits them; the
    optimizers will): names through selector references or direct from the selector base in
    objc_opt_t; linear when not fixed up, binary search by address when fixed up (libobjc's
    search_method_list_inline)."""
    built = fx.objc_cache("arm64")
    oracle = ObjCOracle(built.main, random_slide(built.main))
    loaded, m = oracle.cache, oracle.m
    lookup = loaded.lookup(fx.LIBOBJC, "_fxrt_lookup")
    assert lookup is not None
    scratch = 0x6000_0000_0000
    m.map(scratch, 0x10000)
    names = [f"sel{i:02d}:".encode() for i in range(9)]  # ascending addresses below
    strings = scratch + 0x8000
    sel_addresses = []
    for i, n in enumerate(names):
        m.write(strings + 0x20 * i, n + b"\0")
        sel_addresses.append(strings + 0x20 * i)
    selrefs = scratch + 0x7000
    for i, a in enumerate(sel_addresses):
        m.write_u64(selrefs + 8 * i, a)
    ml = scratch + 0x1000
    flags = 0x8000000C | (0x40000000 if form == "direct" else 0) | (3 if fixed_up else 0)
    m.write(ml, struct.pack("<II", flags, len(names)))
    imps = [scratch + 0xA000 + 0x100 * i for i in range(len(names))]
    if form == "direct":  # the selector base objc_opt_t names, as the builder will set it
        opt_ro = oracle.sections(fx.LIBOBJC)[("__TEXT", "__objc_opt_ro")][0] + loaded.slide
        m.write(opt_ro + 40, struct.pack("<q", strings - opt_ro))
    for i in range(len(names)):
        e = ml + 8 + 12 * i
        name_off = sel_addresses[i] - strings if form == "direct" else selrefs + 8 * i - e
        m.write(e, struct.pack("<3i", name_off, 0, imps[i] - (e + 8)))
    cls, _ro = _write_class(m, scratch, ml)
    for i, a in enumerate(sel_addresses):
        assert m.call(lookup, cls, a) == imps[i]
    missing = scratch + 0x9000
    m.write(missing, b"nothere:\0")
    assert m.call(lookup, cls, missing) == 0
    # another copy of a name: found by name linearly; a binary search by address misses it
    # (counted as a sorted miss, then found by the linear fallback)
    copy = scratch + 0x9100
    m.write(copy, names[4] + b"\0")
    before = _counter(loaded, "_fxrt_sorted_misses")
    assert m.call(lookup, cls, copy) == imps[4]
    assert _counter(loaded, "_fxrt_sorted_misses") - before == (1 if fixed_up else 0)


# ---------------------------------------------------------------------------------------------
# our caches of the fixture root


def _open_ours(built: fx.ObjCBuilt) -> tuple[oc.CacheObjC, oc.InputObjC]:
    cache = oc.open_cache(built.main, random_slide(built.main))
    return cache, oc.inputs_from_files(built.main, built.inputs, built.arch, random.randrange(1 << 30))


@pytest.fixture(scope="module")
def ours() -> tuple[oc.CacheObjC, oc.InputObjC]:
    return _open_ours(fx.objc_cache("arm64"))


@pytest.fixture(scope="module", params=fx.RELATIVE_ARCHS)
def ours_relative(request: pytest.FixtureRequest) -> tuple[fx.ObjCBuilt, oc.CacheObjC, oc.InputObjC]:
    built = fx.relative_objc_cache(request.param)
    return (built, *_open_ours(built))


@pytest.mark.parametrize(
    "check",
    [
        "selectors_resolve",
        "selector_references",
        "class_and_protocol_tables",
        "method_lists",
        "sorted_method_lists",
        "header_info",
        "canonical_protocols",
    ],
)
def test_checks_on_our_fixture_cache(ours: tuple[oc.CacheObjC, oc.InputObjC], check: str) -> None:
    cache, inputs = ours
    assert sorted(inputs.images) == sorted(fx.OBJC_IMAGES)
    assert oc.CHECKS[check](cache, inputs) == []


@pytest.mark.parametrize("check", list(oc.CHECKS))
def test_checks_on_our_relative_fixture_cache(
    ours_relative: tuple[fx.ObjCBuilt, oc.CacheObjC, oc.InputObjC], check: str
) -> None:
    _built, cache, inputs = ours_relative
    assert sorted(inputs.images) == sorted(fx.OBJC_IMAGES)
    assert oc.CHECKS[check](cache, inputs) == []


#: method_list_t entsizeAndFlags (objc4 objc-runtime-new.h): smallMethodListFlag,
#: relativeMethodSelectorsAreDirectFlag; dyld-1162's uniqued and sorted bits
_SMALL, _DIRECT, _FIXED_UP = 0x80000000, 0x40000000, 0x3


def test_relative_lists_name_selectors_from_the_selector_base(
    ours_relative: tuple[fx.ObjCBuilt, oc.CacheObjC, oc.InputObjC],
) -> None:
    """ld64.lld-22's class and category lists are relative and name selectors through selector
    references (protocols keep pointer lists, as ld64 writes them); in the cache every relative
    list is direct (u32 offsets from the base objc_opt_t names: the magic selector) and every
    list is fixed up, each name the canonical string the selector table gives."""
    built, cache, _inputs = ours_relative
    standalone = StandaloneObjC(list(built.inputs.values()), built.arch, 7)
    base = cache.base_selector
    assert base is not None and cache.oracle.text(base) == "\U0001f92f"
    assert cache.opt is not None
    table = oc._table_addresses(cache, cache.opt.selectors)
    relative = 0
    for name in fx.OBJC_IMAGES:
        for owner, address in standalone.method_list_addresses(name):
            if address:
                flags, _ = standalone.method_list_selectors(address, None)
                want = 0 if owner.startswith("<") else _SMALL
                assert flags & (_SMALL | _DIRECT) == want, (name, owner)
        for owner, address in cache.oracle.method_list_addresses(name):
            if not address:
                continue
            flags, sels = cache.oracle.method_list_selectors(address, base)
            want = _FIXED_UP if owner.startswith("<") else _SMALL | _DIRECT | _FIXED_UP
            assert flags & (_SMALL | _DIRECT | _FIXED_UP) == want, (name, owner)
            relative += bool(flags & _SMALL) * len(sels)
            assert all(table[cache.oracle.text(a)] == a for a in sels), (name, owner)
    assert relative > 20


def test_fixture_inputs_are_what_the_sources_say(ours: tuple[oc.CacheObjC, oc.InputObjC]) -> None:
    """The input reader sees the classes, categories and protocols the sources define."""
    _cache, inputs = ours
    classes = {n: sorted(k.name for k in im.classes if not k.meta) for n, im in inputs.images.items()}
    assert classes == {
        fx.LIBOBJC: ["NSObject", "Protocol"],
        fx.SHAPES: ["FXBase"],
        fx.POLY: ["FXPoly"],
        fx.TOP: ["FXTop"],
    }
    cats = {n: [(c[0], c[1]) for c in im.categories] for n, im in inputs.images.items()}
    assert cats[fx.POLY] == [("FXPolyExtras", "FXBase")] and cats[fx.TOP] == [("FXTopDebug", "NSObject")]
    protocols = {n: sorted(p[0] for p in im.protocols) for n, im in inputs.images.items()}
    assert protocols[fx.SHAPES] == ["FXNamed"] and protocols[fx.POLY] == ["FXCounted", "FXNamed"]
    users = [n for n, im in inputs.images.items() if "value" in im.selectors()]
    assert len(users) >= 3  # a selector shared by many dylibs
    supers = {k.name: k.superclass_name for im in inputs.images.values() for k in im.classes if not k.meta}
    assert (supers["FXTop"], supers["FXPoly"], supers["FXBase"]) == ("FXPoly", "FXBase", "NSObject")


def test_dyldextractor_objc_fixer_on_our_cache(tmp_path: Path) -> None:
    """DyldExtractor's ObjC fixer (with the stub fixer) warns about nothing on the fixture cache,
    and the extracted images' method lists are the inputs' (IMPs at their cache addresses).

    Not on the relative fixture cache: DyldExtractor finds the base of direct selectors only
    through libobjc's __objc_scoffs (objc_opt_offsets), which dyld-1162 fills only when it
    builds IMP caches (arm64 iOS); without them it reads the offsets as relative to their
    field, as on a 1162 cache without IMP caches. test_objc_imp_caches.py gates the iOS
    relative cache, which has them."""
    python_module("DyldExtractor")
    from dyldextractor_gate import run_gate

    built = fx.objc_cache("arm64")
    gate = run_gate(built.main, arm64_fixers=True, outdir=tmp_path)
    assert gate.failures == {}
    inputs = oc.inputs_from_files(built.main, built.inputs, "arm64", 5)
    for name in fx.OBJC_IMAGES:
        # one address space per image: DyldExtractor gives each image its own __EXTRA_OBJC
        # segment (the selector strings it copies out of the cache) after the image's highest
        # segment, so the extra segments of images extracted from one cache may overlap
        extracted = StandaloneObjC.at_vmaddr([str(gate.extracted[name])], "arm64")
        got = {(k.name, k.meta): sorted(k.methods) for k in extracted.classes(name, None)}
        want = {(k.name, k.meta): oc._moved(inputs, name, k.methods) for k in inputs.images[name].classes}
        assert got == want, name
