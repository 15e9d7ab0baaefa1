"""ObjC IMP caches (builder/optimizers/objc_imp_caches.py) on the ObjC fixture root built for iOS.

Oracles:
- tests/objc_oracle.py decodes each class's preoptimized cache from objc4's preopt_cache_t layout
  (at a random slide in the emulator) and tests/objc_checks.py's check_imp_caches compares it
  with method lookup on the input files (mapped by LIEF): every entry's selector and IMP, its
  bucket as objc_msgSend hashes it, the fallback class, and that nothing between the class and
  its fallback is missing. The check reports caches mutated where it looks;
- which classes have a cache follows from the fixture's sources and 1162's rules (below);
- in emulation, the stand-in libobjc's objc_msgSend takes objc4's preoptimized-cache path
  (tests/fixtures/src/objc/runtime.m): messages across dylibs hit the caches and return the
  values the methods' arithmetic gives (arm64 and arm64e, random slide);
- the cache reader (``dyldcache objc --json``) decodes the same caches as the oracle.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import emulator
import objc_checks as oc
import objc_fixtures as fx
import pytest
from cache_fixtures import RawCache, random_slide
from conftest import python_module, run_cli, tool
from objc_oracle import PREOPT_EMPTY_SEL
from test_objc_semantics import _counter, _file_offset, _map_images, check_calls

from dyldcache.builder.optimizers.objc_selector_placement import place_selectors
from dyldcache.builder.pipeline import BuildOptions, BuildResult, build_cache
from dyldcache.errors import InputError
from dyldcache.link.linker import LinkInput, LinkOptions, link

ARCHS = ("arm64", "arm64e")
#: from the sources: FXPoly and FXTop (classes and metaclasses) have methods and no category
#: from another image; FXBase and +FXBase are extended by FXPolyExtras (libfxpoly), NSObject is
#: a root class and +NSObject is extended by FXTopDebug (libfxtop); Protocol has no methods
CACHED = {("FXPoly", False), ("FXPoly", True), ("FXTop", False), ("FXTop", True)}


def _classes_with_caches(cache: oc.CacheObjC) -> dict[tuple[str, bool], int]:
    """(name, metaclass) -> class address, for every class whose cache word is set."""
    return {
        (k.name, k.meta): k.address
        for im in cache.images.values()
        for k in im.classes
        if cache.oracle.preopt_cache(k.address) is not None
    }


def _inputs(built: fx.ObjCBuilt) -> oc.InputObjC:
    return oc.inputs_from_files(built.main, built.inputs, built.arch, random.randrange(1 << 30))


@pytest.mark.parametrize("arch", ARCHS)
def test_fixture_imp_caches_pass_every_check(arch: str) -> None:
    python_module("unicorn")
    python_module("lief")
    built = fx.objc_cache(arch, "ios")
    cache = oc.open_cache(built.main)
    assert set(_classes_with_caches(cache)) == CACHED
    inputs = _inputs(built)
    for name, check in oc.CHECKS.items():
        assert check(cache, inputs) == [], name
    # libobjc's objc_opt_offsets: the selector strings, from the magic selector to their end
    offsets = cache.oracle.opt_offsets()
    assert offsets is not None and offsets[0] == cache.base_selector and offsets[2:] == [0, 0]
    assert cache.oracle.cstr(offsets[0]) == "\U0001f92f".encode()
    assert cache.oracle.cstr(offsets[1] - 1) == b""  # the last string's terminator ends them


def _mutate(src: str, dst: Path, what: str) -> None:
    """Copy ``src`` to ``dst`` with one IMP cache changed where check_imp_caches looks."""
    shutil.copy(src, dst)
    dst.chmod(0o644)
    data = bytearray(Path(src).read_bytes())
    raw = RawCache(Path(src))
    cache = oc.open_cache(src, 0)
    o = cache.oracle
    classes = _classes_with_caches(cache)

    def put(address: int, fmt: str, *values: int) -> None:
        struct.pack_into(fmt, data, _file_offset(raw, address), *values)

    poly = o.preopt_cache(classes[("FXPoly", False)])
    assert poly is not None and len(poly.buckets) >= 2
    s0, s1 = sorted(poly.buckets)[:2]
    word0 = poly.address + 16 + 8 * s0
    if what == "imp":  # an IMP one instruction further
        put(word0, "<Q", o.u64(word0) + 1)
    elif what == "bucket":  # two entries swap buckets
        put(word0, "<Q", o.u64(poly.address + 16 + 8 * s1))
        put(poly.address + 16 + 8 * s1, "<Q", o.u64(word0))
    elif what == "fallback":  # FXPoly falls back to NSObject: FXBase's methods are skipped
        nsobject = next(k.address for k in cache.images[fx.LIBOBJC].classes if k.name == "NSObject")
        put(poly.address, "<q", nsobject - classes[("FXPoly", False)])
    elif what == "dropped":  # one of FXTop's methods leaves its cache
        top = o.preopt_cache(classes[("FXTop", False)])
        assert top is not None
        slot = min(top.buckets)
        put(top.address + 16 + 8 * slot, "<Q", PREOPT_EMPTY_SEL << 38)
        put(top.address + 10, "<H", (o.u32(top.address + 8) >> 16) - 1)
    else:
        raise AssertionError(what)
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("what", "reported"),
    [
        ("imp", "method lookup finds"),
        ("bucket", "its hash says"),
        ("fallback", "is not cached"),
        ("dropped", "is not cached"),
    ],
)
def test_check_reports_a_mutated_imp_cache(what: str, reported: str, tmp_path: Path) -> None:
    python_module("unicorn")
    python_module("lief")
    built = fx.objc_cache("arm64", "ios")
    inputs = _inputs(built)
    dst = tmp_path / "dyld_shared_cache_arm64"
    _mutate(built.main, dst, what)
    problems = oc.check_imp_caches(oc.open_cache(str(dst)), inputs)
    assert any(reported in p for p in problems), problems


@pytest.mark.parametrize(
    ("lists", "arch"), [("pointer", "arm64"), ("pointer", "arm64e"), ("relative", "arm64")]
)
def test_messages_hit_the_imp_caches_in_emulation(lists: str, arch: str) -> None:
    """The fixture's C entry points send messages across dylibs (FXTop's and FXPoly's methods,
    inherited ones through the fallback class): with IMP caches some are answered from them, and
    every result is the natively computed one (pointer method lists from our linker, relative
    ones from ld64.lld-22)."""
    python_module("unicorn")
    built = fx.objc_cache(arch, "ios") if lists == "pointer" else fx.relative_objc_cache(arch, "ios")
    loaded = emulator.load_cache(built.main, arch, random_slide(built.main))
    assert _map_images(loaded) == 2
    check_calls(loaded)
    assert _counter(loaded, "_fxrt_preopt_hits") > 10
    assert _counter(loaded, "_fxrt_preopt_misses") > 0  # and misses went on to the fallback


def _build(root: str, out: Path, arch: str = "arm64", **kw: object) -> BuildResult:
    return build_cache(BuildOptions(arch=arch, platform="ios", output_dir=str(out), root=root, jobs=1, **kw))  # type: ignore[arg-type]


def test_objc_optimizations_file_flattens_hierarchies(tmp_path: Path) -> None:
    """Apple's file (version 2): only FXTop and +FXTop, with FXPoly's hierarchies flattened: their
    caches hold FXPoly's methods too and fall back to FXBase; the checks pass and messages still
    give the natively computed results."""
    python_module("unicorn")
    python_module("lief")
    root, inputs = fx.objc_root("arm64", "ios")
    spec = tmp_path / "objc-optimizations.json"
    spec.write_text(
        json.dumps(
            {
                "version": 2,
                "neededClasses": [{"name": "FXTop", "metaclass": 0}, {"name": "FXTop", "metaclass": 1}],
                "flatteningRoots": [{"name": "FXPoly", "metaclass": 0}, {"name": "FXPoly", "metaclass": 1}],
            }
        )
    )
    result = _build(root, tmp_path / "cache", objc_optimizations=str(spec))
    built = fx.ObjCBuilt("arm64", "ios", root, inputs, result)
    cache = oc.open_cache(built.main)
    classes = _classes_with_caches(cache)
    assert set(classes) == {("FXTop", False), ("FXTop", True)}
    top = cache.oracle.preopt_cache(classes[("FXTop", False)])
    assert top is not None
    base = cache.oracle.opt_offsets()
    assert base is not None
    names = {cache.oracle.text(base[0] + s) for s, _imp in top.buckets.values()}
    assert names == {"value", "nameCode", "count", "setSides:"}  # FXTop's, then FXPoly's
    fxbase = next(k.address for k in cache.images[fx.SHAPES].classes if k.name == "FXBase" and not k.meta)
    assert top.fallback == fxbase
    for name, check in oc.CHECKS.items():
        assert check(cache, _inputs(built)) == [], name
    loaded = emulator.load_cache(built.main, "arm64", random_slide(built.main))
    _map_images(loaded)
    check_calls(loaded)


def test_no_imp_caches_off_ios_or_when_turned_off(tmp_path: Path) -> None:
    """1162 builds none on macOS (its arm64 shared region is over 4 GiB), nor for an empty
    objcOptimizations file; ``--no-objc-imp-caches`` turns the iOS default off. The messages
    then take no cache (same results)."""
    python_module("unicorn")
    python_module("lief")
    root, _inputs = fx.objc_root("arm64", "ios")
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    for i, kw in enumerate([dict(no_objc_imp_caches=True), dict(objc_optimizations=str(empty))]):
        result = _build(root, tmp_path / f"cache{i}", **kw)
        cache = oc.open_cache(result.files[0])
        assert _classes_with_caches(cache) == {}
    loaded = emulator.load_cache(result.files[0], "arm64", random_slide(result.files[0]))
    _map_images(loaded)
    check_calls(loaded)
    assert _counter(loaded, "_fxrt_preopt_hits") == 0
    macos = fx.objc_cache("arm64")
    assert _classes_with_caches(oc.open_cache(macos.main)) == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"neededClasses": "FXTop"}', "neededClasses is not an array"),
        ('{"version": 2, "neededClasses": [{"name": "FXTop"}]}', "'name' and 'metaclass'"),
        ('{"neededClasses": ["FXTop"], "selectorsToInline": ["value"]}', "selectorsToInline"),
        ('{"neededClasses": ["FXTop"], "flatteningRoots": 3}', "flatteningRoots is not an array"),
    ],
)
def test_a_malformed_objc_optimizations_file_is_an_input_error(
    text: str, problem: str, tmp_path: Path
) -> None:
    root, _inputs = fx.objc_root("arm64", "ios")
    spec = tmp_path / "bad.json"
    spec.write_text(text)
    with pytest.raises(InputError) as err:
        _build(root, tmp_path / "cache", objc_optimizations=str(spec))
    assert str(spec) in str(err.value) and problem in str(err.value)
    cli = run_cli(
        "build",
        "--arch",
        "arm64",
        "--platform",
        "ios",
        "--root",
        root,
        "--objc-optimizations",
        str(spec),
        "-o",
        str(tmp_path / "cli"),
    )
    assert cli.returncode == 2 and problem in cli.stderr and "Traceback" not in cli.stderr


@pytest.mark.parametrize("arch", ARCHS)
def test_the_reader_decodes_the_caches_as_the_oracle(arch: str) -> None:
    """``dyldcache objc --classes --json``: each class's IMP cache (selectors, IMPs, hash,
    fallback) as the oracle decodes it from objc4's layout."""
    python_module("unicorn")
    built = fx.objc_cache(arch, "ios")
    out = run_cli("objc", "--classes", "--json", built.main)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    cache = oc.open_cache(built.main)
    base = cache.oracle.opt_offsets()
    assert base is not None
    seen = 0
    for c in report["classes"]:
        pc = cache.oracle.preopt_cache(c["address"])
        ic = c["imp_cache"]
        assert (ic is None) == (pc is None), c["name"]
        if pc is None:
            continue
        seen += 1
        assert (ic["address"], ic["fallback_class"], ic["shift"], ic["mask"], ic["occupied"]) == (
            pc.address,
            pc.fallback,
            pc.shift,
            pc.mask,
            pc.occupied,
        )
        want = sorted((cache.oracle.text(base[0] + s), imp) for s, imp in pc.buckets.values())
        assert sorted((e["selector"], e["imp"]) for e in ic["entries"]) == want
    assert seen == len(CACHED)


def test_dyldextractor_reverses_relative_method_lists_with_objc_opt_offsets(tmp_path: Path) -> None:
    """DyldExtractor's ObjC fixer finds the base of relative method lists' direct selectors only
    through libobjc's __objc_scoffs (objc_opt_offsets[0], what dyld-1162 fills when it builds
    IMP caches): on the iOS cache of the ld64.lld-22 root it warns about nothing, and the
    extracted images' method lists are the inputs' (names and IMPs at their cache addresses).
    On the macOS cache of the same root (no IMP caches, so the words stay 0) it warns about
    nothing either, but its method lists name the wrong selectors (test_objc_semantics.py gates
    the macOS pointer-list cache only)."""
    python_module("DyldExtractor")
    python_module("unicorn")
    python_module("lief")
    built = fx.relative_objc_cache("arm64", "ios")
    cache = oc.open_cache(built.main)
    assert _classes_with_caches(cache)  # so objc_opt_offsets is filled
    offsets = cache.oracle.opt_offsets()
    assert offsets is not None and offsets[0] == cache.base_selector
    assert _extracted_differ(built, tmp_path / "ios") == []
    relative = sum(
        cache.oracle.u32(a) & oc.SMALL_LIST != 0
        for name in fx.OBJC_IMAGES
        for _o, a in cache.oracle.method_list_addresses(name)
    )
    assert relative > 5  # the lists DyldExtractor reversed were relative ones
    macos = fx.relative_objc_cache("arm64")
    assert oc.open_cache(macos.main).oracle.opt_offsets() == [0, 0, 0, 0]
    assert _extracted_differ(macos, tmp_path / "macos") != []  # silently wrong selectors there


def _extracted_differ(built: fx.ObjCBuilt, outdir: Path) -> list[str]:
    """The ObjC images whose classes' method lists, extracted by DyldExtractor (which must
    warn about nothing), differ from the inputs'."""
    from dyldextractor_gate import run_gate
    from objc_oracle import StandaloneObjC

    gate = run_gate(built.main, arm64_fixers=True, outdir=outdir)
    assert gate.failures == {}
    inputs = _inputs(built)
    differ = []
    for name in fx.OBJC_IMAGES:
        extracted = StandaloneObjC.at_vmaddr([str(gate.extracted[name])], "arm64")
        got = {(k.name, k.meta): sorted(k.methods) for k in extracted.classes(name, None)}
        want = {(k.name, k.meta): oc._moved(inputs, name, k.methods) for k in inputs.images[name].classes}
        if got != want:
            differ.append(name)
    return differ


def test_selector_placement_separates_every_placed_class() -> None:
    """place_selectors on random classes sharing selectors: every string lies inside one bag,
    after the magic selector's bytes, without overlapping another; for every placed class its
    selectors' bags differ in the mask's bits (objc_msgSend's bucket with shift 7); most classes
    are placed."""
    rng = random.Random()
    vocab = [f"sel{i}{'x' * rng.randrange(40)}:".encode() for i in range(3000)]
    classes = [rng.sample(vocab, min(len(vocab), int(rng.expovariate(1 / 12)) + 1)) for _ in range(600)]
    fixed, masks = place_selectors(classes, 5)
    spans = sorted((at, at + len(name) + 1) for name, at in fixed.items())
    assert spans[0][0] >= 5
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert all(at >> 7 == (end - 1) >> 7 for at, end in spans)
    for names, mask in zip(classes, masks, strict=True):
        if mask is not None:
            assert mask + 1 <= max(8 * len(names), 1) and (mask + 1) & mask == 0
            assert len({(fixed[n] >> 7) & mask for n in names}) == len(names)
    assert sum(m is not None for m in masks) > 0.7 * len(classes)


#: a dylib compiled here: FXCat : FXBase with two same-image categories (the later one wins, as
#: libobjc attaches them), a class method overridden by a category, and a second class named
#: FXTop (libfxtop has the first). Values from the methods' arithmetic: value 70 (FXCatA), more
#: 3 (FXCatB), extra 300, +kind 50 (FXCatA), base v (FXBase, inherited through the fallback)
LIBFXCAT_M = r"""
#include "fxobjc.h"
@interface FXCat : FXBase
- (int)more;
@end
@implementation FXCat
- (int)value { return 7; }
- (int)more { return 1; }
+ (int)kind { return 5; }
@end
@interface FXCat (FXCatA)
- (int)extra;
@end
@implementation FXCat (FXCatA)
- (int)value { return 70; }
- (int)more { return 2; }
- (int)extra { return 300; }
+ (int)kind { return 50; }
@end
@interface FXCat (FXCatB)
@end
@implementation FXCat (FXCatB)
- (int)more { return 3; }
@end
@interface FXTop : NSObject
- (int)other;
@end
@implementation FXTop
- (int)other { return 9; }
@end
int fxcat_probe(int v) {
    FXCat *c = [FXCat baseWith:v];
    return [FXCat kind] * 10000 + [c value] * 1000 + [c more] * 100 + [c extra] + [c base];
}
"""
FXCAT = "/usr/lib/libfxcat.dylib"


def test_same_image_categories_and_duplicate_names(tmp_path: Path) -> None:
    """Same-image categories are in their class's cache with libobjc's precedence (category over
    class, the later category over the earlier); a class name defined in two images gets no
    cache in either (1162's duplicate rule); the checks pass, and in emulation the messages give
    the values the sources compute, hitting the caches."""
    python_module("unicorn")
    python_module("lief")
    clang = tool("clang-22")
    source = tmp_path / "fxcat.m"
    source.write_text(LIBFXCAT_M)
    obj = tmp_path / "fxcat.o"
    flags = ["-O2", "-c", "-fno-objc-arc", "-fno-builtin", "-fno-stack-protector", "-fno-common"]
    subprocess.run(
        [
            clang,
            "-target",
            "arm64-apple-macos13",
            *flags,
            "-I",
            str(fx.OBJC_SRC),
            str(source),
            "-o",
            str(obj),
        ],
        check=True,
    )
    root = tmp_path / "root"
    inputs = fx.link_objc_root("arm64", str(root), "ios")
    out = root / FXCAT.lstrip("/")
    deps = [inputs[n] for n in (fx.SHAPES, fx.LIBOBJC, fx.LIBSYSTEM)]
    link(
        LinkOptions(
            arch="arm64",
            output=str(out),
            install_name=FXCAT,
            platform="ios",
            inputs=[LinkInput(str(obj))] + [LinkInput(d) for d in deps],
        )
    )
    inputs[FXCAT] = str(out)
    result = _build(str(root), tmp_path / "cache")
    assert FXCAT in result.dylibs, result.evictions
    built = fx.ObjCBuilt("arm64", "ios", str(root), inputs, result)
    cache = oc.open_cache(built.main)
    assert set(_classes_with_caches(cache)) == {
        ("FXPoly", False),
        ("FXPoly", True),
        ("FXCat", False),
        ("FXCat", True),
    }
    for name, check in oc.CHECKS.items():
        assert check(cache, _inputs(built)) == [], name
    fxcat = next(k.address for k in cache.images[FXCAT].classes if k.name == "FXCat" and not k.meta)
    pc = cache.oracle.preopt_cache(fxcat)
    assert pc is not None
    base = cache.oracle.opt_offsets()
    assert base is not None
    names = {cache.oracle.text(base[0] + s) for s, _imp in pc.buckets.values()}
    assert names == {"value", "more", "extra"}
    loaded = emulator.load_cache(built.main, "arm64", random_slide(built.main))
    map_image = loaded.lookup(fx.LIBOBJC, "_fxrt_map_image")
    assert map_image is not None
    for n in (*fx.OBJC_IMAGES, FXCAT):
        loaded.machine.call_int(map_image, loaded.images[n] + loaded.slide)
    probe = loaded.lookup(FXCAT, "_fxcat_probe")
    assert probe is not None
    v = random.randrange(1, 1000)
    hits = _counter(loaded, "_fxrt_preopt_hits")
    assert loaded.machine.call_int(probe, v) == 50 * 10000 + 70 * 1000 + 3 * 100 + 300 + v
    assert _counter(loaded, "_fxrt_preopt_hits") - hits >= 4  # kind, value, more, extra


def test_imp_caches_are_deterministic(tmp_path: Path) -> None:
    """Two builds of the fixture root (other folders, one and two workers) write the same bytes,
    IMP caches and placed selector strings included."""
    root, _inputs = fx.objc_root("arm64e", "ios")
    a = _build(root, tmp_path / "a", arch="arm64e", source_date_epoch=0)
    b = build_cache(
        BuildOptions(
            arch="arm64e",
            platform="ios",
            output_dir=str(tmp_path / "b"),
            root=root,
            jobs=2,
            source_date_epoch=0,
        )
    )
    assert oc.open_cache(a.files[0]).oracle.opt_offsets() != [0, 0, 0, 0]
    assert [Path(f).read_bytes() for f in a.files] == [Path(f).read_bytes() for f in b.files]
