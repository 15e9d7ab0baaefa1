"""The ObjC reader of caches (dyldcache.cache.objc*, ``dyldcache objc``) against readers that are not
ours: the decoders of tests/objc_oracle.py (written from objc4's and dyld's headers, with their own
lookup8, reading memory the emulator slid), and llvm-objdump-22 ``--objc-meta-data`` on the
images ``dyldcache extract`` writes. On Apple's caches (legacy objc_opt_t v15 tables, and the same
tables rewritten in the v16 layout) every table must decode completely and every string must be
found through the perfect hash at its own slot; on our caches (the builder writes an empty
dyld-1162 ObjCOptimizationHeader) the reader must say "empty" and no image may claim to be
optimized. Malformed tables are one CacheFormatError naming the table and the file offset."""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import objdump
import pytest
from cache_fixtures import CacheFactory
from conftest import run_cli, shared_path
from hypothesis import given, settings
from hypothesis import strategies as st
from objc_oracle import ObjCOracle, lookup8
from test_apple_caches import APPLE_CACHES

from dyldcache.cache.extract import extract
from dyldcache.cache.memory import CacheMemory
from dyldcache.cache.objc import LAYOUT_CURRENT, LAYOUT_LEGACY, ObjCOptimization, read_objc_optimization
from dyldcache.cache.objc_metadata import (
    ImageMetadata,
    MethodList,
    decode_imp_buckets,
    read_metadata,
)
from dyldcache.cache.objc_report import objc_report
from dyldcache.cache.perfect_hash import lookup8_many
from dyldcache.cache.reader import DyldCache
from dyldcache.errors import CacheFormatError

OBJC_CACHES = [p for p in APPLE_CACHES if p[-1].endswith("-objc")]
NO_OBJC_CACHES = [p for p in APPLE_CACHES if not p[-1].endswith("-objc")]
#: our caches with the example libobjc stand-in and libfxobjc: both pointer formats, both v2
#: and v5 slide info, x86_64, and a cache split into subcaches
OUR_CACHES = ["arm64", "arm64e-macos", "x86_64", "arm64e-ios-multi"]


def _slide() -> int:
    return random.randrange(1, 0x2000) * 0x4000


def _open(path: str | Path) -> tuple[DyldCache, ObjCOptimization | None, list[ImageMetadata]]:
    cache = DyldCache.open(path)
    opt = read_objc_optimization(cache)
    return cache, opt, read_metadata(cache, opt)


# ---------------------------------------------------------------------------------------------
# lookup8: numpy blocks against the transcription of lookup8.c


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=100), min_size=1, max_size=20), st.integers(0, 2**64 - 1))
def test_lookup8_agrees_with_the_transcription(keys: list[bytes], salt: int) -> None:
    assert lookup8_many(keys, salt).tolist() == [lookup8(k, salt) for k in keys]


def test_lookup8_block_boundaries() -> None:
    # every tail length of lookup8's switch, and whole blocks, with a salt above 2**63
    keys = [bytes(range(n)) for n in range(0, 75)]
    salt = 0x9E3779B97F4A7C13 * 3 % 2**64
    assert lookup8_many(keys, salt).tolist() == [lookup8(k, salt) for k in keys]
    assert len(set(lookup8_many(keys, salt).tolist())) == len(keys)


# ---------------------------------------------------------------------------------------------
# Apple's caches: the tables


def _table_view(t: object) -> tuple[object, ...]:
    return tuple(getattr(t, f) for f in ("capacity", "occupied", "shift", "mask", "salt"))


def _assert_tables_agree(opt: ObjCOptimization, oracle: ObjCOracle) -> None:
    theirs = oracle.opt()
    assert theirs is not None
    assert (opt.version, opt.flags) == (theirs.version, theirs.flags)
    assert opt.layout == (LAYOUT_LEGACY if theirs.legacy else LAYOUT_CURRENT)
    assert opt.relative_method_selector_base == theirs.base_selector
    assert [(i.mach_header, i.image_info_version, i.image_info_flags, i.loaded) for i in opt.images] == (
        theirs.header_infos
    )
    for ours, t in ((opt.selectors, theirs.selectors), (opt.classes and opt.classes.strings, theirs.classes)):
        assert ours is not None and t is not None
        assert _table_view(ours) == _table_view(t)
        assert ours.scramble.tolist() == t.scramble
        assert dict(zip(ours.slots.tolist(), ours.strings, strict=True)) == t.strings
    assert opt.protocols is not None and theirs.protocols is not None
    assert dict(zip(opt.protocols.strings.slots.tolist(), opt.protocols.strings.strings, strict=True)) == (
        theirs.protocols.strings
    )
    assert sorted((o.name, o.address, o.objc_index) for o in opt.classes.objects) == sorted(
        theirs.class_objects
    )
    assert sorted((o.name, o.address, o.objc_index) for o in opt.protocols.objects) == sorted(
        theirs.protocol_objects
    )


@pytest.mark.parametrize("parts", OBJC_CACHES, ids=lambda p: p[-1])
def test_apple_tables_agree_with_the_oracle(parts: tuple[str, ...]) -> None:
    path = shared_path(*parts)
    oracle = ObjCOracle(str(path), _slide())
    with DyldCache.open(path) as cache:
        opt = read_objc_optimization(cache)
        assert opt is not None and opt.selectors is not None
        assert opt.selectors.occupied > 0 and not opt.is_empty
        _assert_tables_agree(opt, oracle)
        # every header_info entry is a cache image, in ascending address order, and its
        # objc_image_info is the image's own __objc_imageinfo, marked optimized by dyld
        paths = {img.address: img.path for img in cache.images}
        assert [i.path for i in opt.images] == [paths[i.mach_header] for i in opt.images]
        assert [i.mach_header for i in opt.images] == sorted(i.mach_header for i in opt.images)
        for img in opt.images:
            assert img.path is not None
            assert (img.image_info_version, img.image_info_flags) == oracle.image_info(img.path)
            assert img.optimized_by_dyld
        assert not opt.notes


@pytest.mark.parametrize("parts", NO_OBJC_CACHES, ids=lambda p: p[-1])
def test_apple_caches_without_objc(parts: tuple[str, ...]) -> None:
    path = shared_path(*parts)
    assert ObjCOracle(str(path), _slide()).opt() is None
    cache, opt, meta = _open(path)
    with cache:
        assert opt is None
        assert all(not (m.classes or m.protocols or m.categories) and m.image_info is None for m in meta)
    r = run_cli("objc", str(path))
    assert r.returncode == 0 and r.stdout.startswith("no ObjC optimization: "), r.stderr
    assert json.loads(run_cli("objc", "--json", str(path)).stdout)["optimization"] is None


def _misses(strings: list[bytes]) -> list[bytes]:
    """Keys the table must not hold: near misses of its strings (same check byte included)."""
    have = set(strings)
    rng = random.Random(13)
    out = []
    for s in strings:
        out += [s + b":", s[:-1], s[:-1] + bytes([s[-1] ^ 0x20]), bytes([s[0] ^ 8]) + s[1:]]
        out.append(bytes(rng.randrange(0x21, 0x7F) for _ in range(len(s))))
    return [k for k in out if k and k not in have]


@pytest.mark.parametrize("parts", OBJC_CACHES, ids=lambda p: p[-1])
def test_every_string_resolves_to_its_own_slot(parts: tuple[str, ...]) -> None:
    path = shared_path(*parts)
    oracle = ObjCOracle(str(path), _slide())
    theirs = oracle.opt()
    assert theirs is not None
    with DyldCache.open(path) as cache:
        opt = read_objc_optimization(cache)
        assert opt is not None and opt.classes is not None and opt.protocols is not None
        for ours, t in (
            (opt.selectors, theirs.selectors),
            (opt.classes.strings, theirs.classes),
            (opt.protocols.strings, theirs.protocols),
        ):
            assert ours is not None and t is not None
            assert ours.lookup(ours.strings).tolist() == ours.slots.tolist()
            assert [oracle.slot(t, s) for s in ours.strings] == ours.slots.tolist()
            misses = _misses(ours.strings)
            assert set(ours.lookup(misses).tolist()) == {-1}
            assert {oracle.slot(t, k) for k in misses} == {None}


@pytest.mark.parametrize("parts", OBJC_CACHES, ids=lambda p: p[-1])
def test_class_and_protocol_names_find_their_objects(parts: tuple[str, ...]) -> None:
    path = shared_path(*parts)
    oracle = ObjCOracle(str(path), _slide())
    with DyldCache.open(path) as cache:
        opt = read_objc_optimization(cache)
        assert opt is not None and opt.classes is not None and opt.protocols is not None
        defined = {}
        for img in opt.images:
            assert img.path is not None
            for k in oracle.classes(img.path, None):
                if not k.meta:
                    defined[k.address] = (k.name, img.objc_index)
        for o in opt.classes.objects:
            # the table's class is one of its image's classes, under the same name
            assert defined[o.address] == (o.name, o.objc_index)
            assert o in opt.classes.find(o.name)
        # and every class of every optimized image is in the table (the tables are complete)
        assert sorted(defined) == sorted(o.address for o in opt.classes.objects)
        for o in opt.protocols.objects:
            assert o in opt.protocols.find(o.name)
            # the table names the canonical protocol_t: its name field is the table's key
            assert oracle.text(oracle.ptr(o.address + 8)) == o.name
        assert opt.classes.find("NoSuchClass") == []


# ---------------------------------------------------------------------------------------------
# metadata, against the oracle


def _methods(ml: MethodList | None) -> list[tuple[str, str, int]]:
    return [] if ml is None else [(m.name, m.types, m.imp) for m in ml.methods]


def _assert_metadata_agrees(cache: DyldCache, opt: ObjCOptimization | None, oracle: ObjCOracle) -> int:
    base = opt.relative_method_selector_base if opt else None
    checked = 0
    for im in read_metadata(cache, opt):
        theirs = oracle.classes(im.path, base)
        ours = [
            (
                c.address, c.is_meta, c.name, c.superclass, c.superclass_name, c.ro_flags,
                c.instance_start, c.instance_size, [(m.name, m.types, m.imp) for m in c.methods], c.protocols,
            )
            for c in im.classes
        ]  # fmt: skip
        assert ours == [
            (
                k.address, k.meta, k.name, k.superclass, k.superclass_name, k.ro_flags, k.instance_start,
                k.instance_size, k.methods, k.protocols,
            )
            for k in theirs
        ]  # fmt: skip
        assert [
            (
                p.name, p.address,
                [_methods(x) for x in (p.instance_methods, p.class_methods,
                                       p.optional_instance_methods, p.optional_class_methods)],
            )
            for p in im.protocols
        ] == oracle.protocols(im.path, base)  # fmt: skip
        assert [
            (c.name, c.class_name, _methods(c.instance_methods), _methods(c.class_methods))
            for c in im.categories
        ] == oracle.categories(im.path, base)
        assert im.image_info == oracle.image_info(im.path)
        checked += len(im.classes) + len(im.protocols) + len(im.categories)
    return checked


@pytest.mark.parametrize("parts", APPLE_CACHES, ids=lambda p: p[-1])
def test_apple_metadata_agrees_with_the_oracle(parts: tuple[str, ...]) -> None:
    path = shared_path(*parts)
    with DyldCache.open(path) as cache:
        opt = read_objc_optimization(cache)
        checked = _assert_metadata_agrees(cache, opt, ObjCOracle(str(path), _slide()))
        assert (checked > 0) == (opt is not None)


@pytest.mark.parametrize("parts", OBJC_CACHES, ids=lambda p: p[-1])
def test_method_selectors_are_the_uniqued_ones(parts: tuple[str, ...]) -> None:
    """In an optimized cache every method name is the selector table's own string."""
    cache, opt, meta = _open(shared_path(*parts))
    with cache:
        assert opt is not None and opt.selectors is not None
        table = {
            s: int(a) for s, a in zip(opt.selectors.strings, opt.selectors.string_addresses, strict=True)
        }
        lists = [ml for im in meta for c in im.classes for ml in c.method_lists]
        lists += [
            ml
            for im in meta
            for p in im.protocols
            for ml in (
                p.instance_methods,
                p.class_methods,
                p.optional_instance_methods,
                p.optional_class_methods,
            )
            if ml is not None
        ]
        methods = [m for ml in lists for m in ml.methods]
        assert methods
        assert all(table[m.name.encode()] == m.selector for m in methods)
        refs = [(s, a) for im in meta for s, a in im.selector_references]
        assert refs and all(table[s.encode()] == a for s, a in refs)


# ---------------------------------------------------------------------------------------------
# the current table layout with content: Apple's tables rewritten as objc_opt_t v16


def _as_v16(src: Path, dst: Path) -> Path:
    """A copy of an Apple v15 cache whose objc_opt_t and tables are rewritten, in place, in the
    version 16 layouts (objc-shared-cache.h v16, OptimizerObjC.h): objc_opt_t gains the large
    class/protocol offsets, each string table a version word before its capacity, and each class
    or protocol entry becomes an ObjectData word (cache offset, header_info index)."""
    shutil.copy(src, dst)
    data = bytearray(dst.read_bytes())
    oracle = ObjCOracle(str(src), 0)
    opt = oracle.opt()
    assert opt is not None and opt.legacy

    def file_offset(address: int) -> int:
        for mo in range(struct.unpack_from("<I", data, 0x14)[0]):
            a, size, fo = struct.unpack_from("<3Q", data, struct.unpack_from("<I", data, 0x10)[0] + 32 * mo)
            if a <= address < a + size:
                return fo + address - a
        raise AssertionError(hex(address))

    o = oracle.sections("/usr/lib/libobjc.A.dylib")[("__TEXT", "__objc_opt_ro")][0]
    sel, hro, cls, _p1, hrw, pro = struct.unpack_from("<6i", data, file_offset(o) + 8)
    struct.pack_into("<2I8iq", data, file_offset(o), 16, opt.flags | 4, sel, hro, 0, 0, hrw, 0, cls, pro, 0)
    ro_first = o + hro + 8
    ro_entsize = struct.unpack_from("<I", data, file_offset(o + hro) + 4)[0]
    for table in (o + sel, o + cls, o + pro):
        f = file_offset(table)
        capacity, occupied, shift, mask = struct.unpack_from("<4I", data, f)
        struct.pack_into("<6I", data, f, 0, capacity, occupied, shift, mask, 0)
        if table == o + sel:
            continue
        at = f + 1056 + mask + 1 + 5 * capacity
        dup_count = struct.unpack_from("<I", data, at + 8 * capacity)[0]
        entries = [at + 8 * i for i in range(capacity)] + [
            at + 8 * capacity + 4 + 8 * k for k in range(dup_count)
        ]
        for e in entries:
            cls_off, hi_off = struct.unpack_from("<ii", data, e)
            if e < at + 8 * capacity and cls_off & 1:  # a run of duplicates: index and count
                struct.pack_into("<Q", data, e, 1 | (hi_off << 1) | ((cls_off >> 1) << 48))
            elif cls_off or hi_off:
                index = (table + hi_off - ro_first) // ro_entsize
                struct.pack_into("<Q", data, e, ((table + cls_off - oracle.base) << 1) | (index << 48))
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("parts", OBJC_CACHES, ids=lambda p: p[-1])
def test_v16_tables_agree_with_the_oracle(parts: tuple[str, ...], tmp_path: Path) -> None:
    src = shared_path(*parts)
    path = _as_v16(src, tmp_path / src.name)
    oracle = ObjCOracle(str(path), _slide())
    with DyldCache.open(src) as c15, DyldCache.open(path) as c16:
        old, new = read_objc_optimization(c15), read_objc_optimization(c16)
        assert old is not None and new is not None
        assert (new.layout, new.version) == (LAYOUT_CURRENT, 16)
        _assert_tables_agree(new, oracle)
        # the same strings and objects as the legacy tables they were made from
        assert new.selectors is not None and old.selectors is not None
        assert new.selectors.strings == old.selectors.strings
        assert new.classes is not None and old.classes is not None
        assert new.classes.objects == old.classes.objects
        assert (
            new.classes.strings.lookup(new.classes.strings.strings).tolist()
            == new.classes.strings.slots.tolist()
        )


# ---------------------------------------------------------------------------------------------
# our caches: an empty dyld-1162 ObjCOptimizationHeader


@pytest.mark.parametrize("key", OUR_CACHES)
def test_our_caches_report_an_optimization(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    oracle = ObjCOracle(built.main, _slide())
    with DyldCache.open(built.main) as cache:
        opt = read_objc_optimization(cache)
        assert opt is not None and opt.header is not None and not opt.is_empty
        assert opt.layout == LAYOUT_CURRENT
        _assert_tables_agree(opt, oracle)
        # the header_info lists cover exactly the images with ObjC metadata, each optimized
        # (dyld-1162's emitObjCHeaderInfo marks every well-formed ObjC image)
        meta = read_metadata(cache, opt)
        with_objc = [m.path for m in meta if m.image_info is not None]
        assert [i.path for i in opt.images] == sorted(
            with_objc, key=lambda p: cache.images[cache.find_image(p)].address
        )
        assert all(i.optimized_by_dyld for i in opt.images)
        assert opt.relative_method_selector_base is not None
        assert CacheMemory(cache).cstring(opt.relative_method_selector_base, "base") == "\U0001f92f".encode()
        assert _assert_metadata_agrees(cache, opt, oracle) > 0
    r = run_cli("objc", built.main)
    assert r.returncode == 0, r.stderr
    assert "the tables are empty" not in r.stdout and "OptimizedByDyld" in r.stdout


# ---------------------------------------------------------------------------------------------
# llvm-objdump on the extracted images


def _compare_with_objdump(meta: ImageMetadata, listing: objdump.ObjcListing) -> None:
    ours = {c.address: c for c in meta.classes}
    assert len(listing.classes) * 2 == len(meta.classes)
    for address, cls, metacls in listing.classes:
        for addr, part in ((address, cls), (cls.isa, metacls)):
            c = ours[addr]
            assert (c.isa, c.superclass, c.ro_address, c.ro_flags) == (
                part.isa, part.superclass, part.data, part.flags
            )  # fmt: skip
            assert (c.instance_start, c.instance_size) == (part.instance_start, part.instance_size)
            lists = c.method_lists
            assert (lists[0].address if lists else 0) == part.base_methods
            methods = c.methods
            assert len(methods) == part.method_count == len(part.methods)
            if lists:
                assert (lists[0].kind == "relative") == part.relative
            assert len(c.protocols) == len(part.protocols)
            for m, theirs in zip(methods, part.methods, strict=True):
                if part.relative:  # llvm prints the targets' low 32 bits
                    assert m.selector & 0xFFFFFFFF == theirs.name_address
                    assert m.imp & 0xFFFFFFFF == theirs.imp_address
                elif theirs.name is None:
                    # the canonical selector strings are outside the extracted image: llvm-objdump
                    # shows the address only
                    assert m.selector == theirs.name_address
                else:
                    assert (m.selector, m.name) == (theirs.name_address, theirs.name)
    assert [c.address for c in meta.categories] == listing.categories
    assert [p.address for p in meta.protocols] == listing.protocols
    assert (meta.image_info[1] if meta.image_info else None) == listing.image_info_flags


def _objdump_check(main: str, outdir: Path) -> int:
    extracted = {e.image: e.file for e in extract(main, str(outdir))}
    checked = 0
    with DyldCache.open(main) as cache:
        opt = read_objc_optimization(cache)
        for meta in read_metadata(cache, opt):
            if meta.image_info is None:
                continue
            _compare_with_objdump(meta, objdump.objc_metadata(extracted[meta.path]))
            checked += len(meta.classes)
    return checked


@pytest.mark.parametrize("parts", OBJC_CACHES, ids=lambda p: p[-1])
def test_llvm_objdump_agrees_on_apple_images(parts: tuple[str, ...], tmp_path: Path) -> None:
    assert _objdump_check(str(shared_path(*parts)), tmp_path) > 0


@pytest.mark.parametrize("key", ["arm64", "x86_64"])
def test_llvm_objdump_agrees_on_our_images(cache_factory: CacheFactory, key: str, tmp_path: Path) -> None:
    assert _objdump_check(cache_factory.build(key).main, tmp_path) > 0


# ---------------------------------------------------------------------------------------------
# IMP caches (no cache here has them): buckets built from dyld's ImpCacheEntry_v1/_v2 layouts


def test_imp_cache_buckets() -> None:
    cls, sels = 0x1_8000_4000, 0x1_8010_0000
    # v1: {u32 selOffset, u32 impOffset}, IMP = class - impOffset; empty = (0xFFFFFFF, 0)
    v1 = struct.pack("<II", 0x10, 0x3000) + struct.pack("<II", 0xFFFFFFF, 0) + struct.pack("<II", 0, 0x40)
    assert decode_imp_buckets(v1, False, cls, sels) == [(sels + 0x10, cls - 0x3000), (sels, cls - 0x40)]

    # v2: one u64, impOffset:38 (signed, 4-byte units) then selOffset:26; empty = (0x3FFFFFF, 0)
    def v2(imp_units: int, sel: int) -> bytes:
        return struct.pack("<Q", (imp_units & ((1 << 38) - 1)) | (sel << 38))

    raw = v2(0x100, 0x24) + v2(0, 0x3FFFFFF) + v2(-0x20, 0x3FFFFFE)
    assert decode_imp_buckets(raw, True, cls, sels) == [
        (sels + 0x24, cls - 0x400),
        (sels + 0x3FFFFFE, cls + 0x80),
    ]


# ---------------------------------------------------------------------------------------------
# the command


def test_cli_summary_and_lists(tmp_path: Path) -> None:
    path = shared_path(*OBJC_CACHES[0])
    oracle = ObjCOracle(str(path), _slide())
    theirs = oracle.opt()
    assert theirs is not None and theirs.selectors is not None
    r = run_cli("objc", "--json", "--selectors", "--classes", "--protocols", str(path))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    o = d["optimization"]
    assert (o["version"], o["flags"], o["selector_count"]) == (
        theirs.version,
        theirs.flags,
        theirs.selectors.occupied,
    )
    assert {(s["name"], s["address"]) for s in d["selectors"]} == {
        (s.decode(), theirs.selectors.address + theirs.selectors.offsets[slot])
        for slot, s in theirs.selectors.strings.items()
    }
    assert [(c["name"], c["address"]) for c in d["class_table"]] == sorted(
        (n, a) for n, a, _ in theirs.class_objects
    )
    assert [i["mach_header"] for i in d["images"]] == [h[0] for h in theirs.header_infos]
    assert all(i["optimized_by_dyld"] for i in d["images"])
    assert {c["name"] for c in d["classes"]} >= {n for n, _, _ in theirs.class_objects}
    # the text form: -objc-info's lines
    text = run_cli("objc", str(path)).stdout
    assert f"num selectors:                      {theirs.selectors.occupied}\n" in text
    for i, img in enumerate(d["images"]):
        assert f"dylib[{i}]: {{ 0x0, {img['image_info_flags']:#010x} }} {img['path']}" in text
    # one image: its classes only, and the selectors it references
    one = json.loads(
        run_cli(
            "objc", "--json", "--classes", "--selectors", "--image", "libhello-1.0.dylib", str(path)
        ).stdout
    )
    assert {c["image"] for c in one["classes"]} == {"/usr/lib/libhello-1.0.dylib"}
    hello = "/usr/lib/libhello-1.0.dylib"
    refs = [oracle.text(a) for a in oracle.pointer_section(hello, "__objc_selrefs")]
    assert [s["name"] for s in one["selectors"]] == refs and refs


def test_cli_errors(tmp_path: Path) -> None:
    not_a_cache = tmp_path / "junk"
    not_a_cache.write_bytes(b"not a cache at all" * 100)
    r = run_cli("objc", str(not_a_cache))
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(not_a_cache) in r.stderr
    path = shared_path(*OBJC_CACHES[0])
    r = run_cli("objc", "--classes", "--image", "libnothere.dylib", str(path))
    assert r.returncode == 2 and "no image 'libnothere.dylib'" in r.stderr


# ---------------------------------------------------------------------------------------------
# malformed tables


def _corrupt(src: Path, dst: Path, address: int, raw: bytes) -> int:
    """Copy ``src`` with ``raw`` written at the VM ``address``; returns its file offset."""
    data = bytearray(src.read_bytes())
    with DyldCache.open(src) as cache:
        f, off = cache.address_to_file(address)
        assert f.path == str(src)
    data[off : off + len(raw)] = raw
    dst.write_bytes(bytes(data))
    return off


@pytest.mark.parametrize(
    "what",
    [
        "selector capacity",
        "selector occupied",
        "class duplicates",
        "header_info entsize",
        "method list entsize",
    ],
)
def test_malformed_tables_are_one_format_error(what: str, tmp_path: Path) -> None:
    src = shared_path(*OBJC_CACHES[0])
    oracle = ObjCOracle(str(src), 0)
    opt = oracle.opt()
    assert opt is not None and opt.selectors and opt.classes
    dst = tmp_path / src.name
    if what == "selector capacity":
        at, raw, table = opt.selectors.address, struct.pack("<I", 100), "selector table"
    elif what == "selector occupied":
        at, raw, table = (
            opt.selectors.address + 4,
            struct.pack("<I", opt.selectors.occupied + 1),
            "selector table",
        )
    elif what == "class duplicates":
        first_used = min(opt.classes.strings)
        entry = opt.classes.address + 1056 + opt.classes.mask + 1 + 5 * opt.classes.capacity + 8 * first_used
        at, raw, table = entry, struct.pack("<ii", (5 << 1) | 1, 0), "class table"
    elif what == "header_info entsize":
        o = oracle.sections("/usr/lib/libobjc.A.dylib")[("__TEXT", "__objc_opt_ro")][0]
        at, raw, table = o + oracle.i32(o + 12) + 4, struct.pack("<I", 3), "header_info_ro list"
    else:
        k = oracle.classes("/usr/lib/libhello-1.0.dylib", None)[0]
        ro = oracle.ptr(k.address + 32) & ~7
        methods = oracle.ptr(ro + 32)
        at, raw, table = methods, struct.pack("<I", 0x80000000 | 20), f"method list at {methods:#x}"
    off = _corrupt(src, dst, at, raw)
    with DyldCache.open(dst) as cache, pytest.raises(CacheFormatError) as err:
        opt2 = read_objc_optimization(cache)
        read_metadata(cache, opt2)
    assert table in err.value.message and err.value.path == str(dst)
    if what != "method list entsize":
        assert err.value.offset is not None and abs(err.value.offset - off) < 0x2000
    r = run_cli("objc", "--classes", str(dst))
    assert r.returncode == 2 and "Traceback" not in r.stderr and table in r.stderr


def test_random_corruption_of_the_objc_data_never_escapes(tmp_path: Path) -> None:
    """Bytes flipped anywhere in the ObjC tables and libobjc/libhello's metadata: the reader and
    the command give results or one CacheFormatError, never another exception."""
    src = shared_path(*OBJC_CACHES[1])
    data = src.read_bytes()
    with DyldCache.open(src) as cache:
        opt = read_objc_optimization(cache)
        assert opt is not None and opt.selectors and opt.classes
        regions = [
            cache.address_to_file(opt.selectors.address)[1],
            cache.address_to_file(opt.classes.strings.address)[1],
        ]
        for name in ("/usr/lib/libobjc.A.dylib", "/usr/lib/libhello-1.0.dylib"):
            image = cache.image_macho(cache.find_image(name))
            for s in image.sections:
                if "objc" in s.sectname and s.size:
                    regions.append(cache.address_to_file(s.addr)[1])
    rng = random.Random(1)
    dst = tmp_path / src.name
    for _ in range(60):
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            at = rng.choice(regions) + rng.randrange(0, 0x800)
            buf[at] = rng.randrange(256)
        dst.write_bytes(bytes(buf))
        try:
            objc_report(str(dst), selectors=True, classes=True, protocols=True)
        except CacheFormatError as exc:
            assert str(dst) in str(exc)
