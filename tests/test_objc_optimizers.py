"""The ObjC optimizers of the builder (builder/optimizers/objc_*.py) on small ObjC dylibs
compiled here with clang-22 and linked with ``dyldcache link``.

Expected values come from objc4/dyld-1162 semantics and independent readers: the inputs are
read with LIEF and llvm-objdump, the cache with tests/objc_oracle.py (written from objc4's
headers, reading memory through the unicorn emulator at a random slide, slide info applied
by the emulator's own chain walker):

- every selector of every input resolves through the perfect-hash selector table to exactly one
  string, and every selector reference of every image points at that string;
- every class and protocol name finds all its definitions through the multimaps;
- every method list holds the input's methods (name, types, IMP moved with its image),
  sorted by selector address as libobjc's binary search requires, and is flagged
  uniqued and sorted; every image is marked OptimizedByDyld;
- libobjc's own objc_opt_t names the same tables as the cache header;
- malformed metadata leaves that image unoptimized with a warning, never fails the build.
"""

from __future__ import annotations

import random
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import objdump
import pytest
from conftest import python_module, run_cli, tool
from objc_oracle import ObjCOracle

from dyldcache.builder.pipeline import BuildOptions, build_cache
from dyldcache.macho.file import open_macho

LIBOBJC = "/usr/lib/libobjc.A.dylib"
LIBA = "/usr/lib/liba.dylib"
LIBB = "/usr/lib/libb.dylib"
MAGIC = "\U0001f92f".encode()

#: a stand-in libobjc with the objc_opt_t section dyld-1162 fills (version 16, 48 bytes)
LIBOBJC_C = r"""
struct objc_opt { unsigned version, flags; int offsets[8]; long long base; };
__attribute__((used, section("__TEXT,__objc_opt_ro")))
const struct objc_opt objc_opt_ro = { 16, 0, {0}, 0 };
void *objc_msgSend(void *self, void *sel) { return self; }
void *_objc_empty_cache[2];
"""

#: methods listed in an order that is not the selector strings' (zeta and beta are used first)
LIBA_M = r"""
__attribute__((objc_root_class))
@interface Base { void *isa; }
- (int)value; - (int)zeta; - (int)beta; + (int)make;
@end
@protocol Shared - (int)value; @end
int early(id o) { return [o zeta] + [o beta]; }
@implementation Base
- (int)value { return 1; } - (int)zeta { return 2; } - (int)beta { return 3; } + (int)make { return 4; }
@end
@interface Derived : Base <Shared> @end
@implementation Derived
- (int)value { return 5; }
@end
__attribute__((objc_root_class)) @interface Dup { void *isa; } - (int)dup; @end
@implementation Dup - (int)dup { return 6; } @end
"""

#: a subclass and a category of liba's class, the same protocol and a second class named Dup
LIBB_M = r"""
__attribute__((objc_root_class))
@interface Base { void *isa; } - (int)value; - (int)zeta; @end
@protocol Shared - (int)value; @end
@interface Leaf : Base <Shared> - (int)omega; - (int)alpha; - (int)value; @end
@implementation Leaf
- (int)omega { return 7; } - (int)alpha { return 8; } - (int)value { return 9; }
@end
@interface Base (Extra) - (int)extra; @end
@implementation Base (Extra) - (int)extra { return 10; } @end
__attribute__((objc_root_class)) @interface Dup { void *isa; } - (int)dup; @end
@implementation Dup - (int)dup { return 11; } @end
int call(id o) { return [o value] + [o zeta]; }
"""


@dataclass(frozen=True)
class Built:
    root: Path
    main: str
    warnings: list[str]
    #: the same objects linked with opcode fixups, which llvm-objdump reads (it does not
    #: follow chained fixups in --objc-meta-data)
    readable_root: Path | None = None

    def input(self, install_name: str) -> Path:
        return self.root / install_name.lstrip("/")

    def readable(self, install_name: str) -> Path:
        return (self.readable_root or self.root) / install_name.lstrip("/")


def _compile(src: str, name: str, out: Path, objc: bool) -> Path:
    source = out / (name + (".m" if objc else ".c"))
    source.write_text(src)
    obj = out / (name + ".o")
    subprocess.run(
        [tool("clang-22"), "-target", "arm64-apple-macos12", "-O1", "-c", str(source), "-o", str(obj)],
        check=True,
    )
    return obj


def _link(obj: Path, install: str, root: Path, deps: list[str], fixups: str) -> Path:
    out = root / install.lstrip("/")
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["link", "-arch", "arm64", "-fixups", fixups, "-o", str(out), "-install_name", install, str(obj)]
    args += [str(root / d.lstrip("/")) for d in deps]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return out


def _root(tmp: Path, fixups: str = "chained") -> Path:
    objs = tmp / "obj"
    objs.mkdir(parents=True, exist_ok=True)
    root = tmp / "root"
    _link(_compile(LIBOBJC_C, "objc", objs, False), LIBOBJC, root, [], fixups)
    _link(_compile(LIBA_M, "liba", objs, True), LIBA, root, [LIBOBJC], fixups)
    _link(_compile(LIBB_M, "libb", objs, True), LIBB, root, [LIBOBJC, LIBA], fixups)
    return root


def _build(root: Path, out: Path) -> Built:
    result = build_cache(BuildOptions(arch="arm64", output_dir=str(out), root=str(root), jobs=1))
    return Built(root, result.files[0], list(result.warnings))


@pytest.fixture(scope="module", params=["chained", "opcodes"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("objcopt")
    b = _build(_root(tmp, request.param), tmp / "cache")
    readable = _root(tmp / "readable", "opcodes") if request.param == "chained" else None
    return Built(b.root, b.main, b.warnings, readable)


@pytest.fixture(scope="module")
def oracle(built: Built) -> ObjCOracle:
    slide = 0x4000 * random.Random().randrange(1, 1 << 14)
    return ObjCOracle(built.main, slide)


def _methnames(path: Path) -> list[bytes]:
    python_module("lief")
    import lief

    fat = lief.MachO.parse(str(path))  # the slices live as long as the fat binary
    sect = fat.at(0).get_section("__objc_methname")
    return bytes(sect.content).split(b"\0")[:-1] if sect is not None else []


def _selref_count(path: Path) -> int:
    import lief

    fat = lief.MachO.parse(str(path))
    sect = fat.at(0).get_section("__objc_selrefs")
    return 0 if sect is None else int(sect.size) // 8


def _symbols(path: Path) -> dict[str, int]:
    import lief

    fat = lief.MachO.parse(str(path))
    return {sym.name: int(sym.value) for sym in fat.at(0).symbols}


def _cstr_at(path: Path, address: int) -> str:
    return bytes(open_macho(path).read_at_address(address, 64)).split(b"\0")[0].decode()


def _image_address(oracle: ObjCOracle, install_name: str) -> int:
    base = oracle.base
    count_off, count = struct.unpack_from("<II", oracle.header, 0x1C0)
    for i in range(count):
        addr, _, _, path_off, _ = struct.unpack("<QQQII", oracle.raw(base + count_off + 32 * i, 32))
        if oracle.cstr(base + path_off).decode() == install_name:
            return int(addr)
    raise AssertionError(f"{install_name} is not in the cache")


# ---------------------------------------------------------------------------------------------


def test_every_input_selector_resolves_to_one_string(built: Built, oracle: ObjCOracle) -> None:
    opt = oracle.opt()
    assert opt is not None and opt.selectors is not None and not opt.legacy
    strings = opt.selectors.strings
    assert len(set(strings.values())) == len(strings), "each selector is in the table once"
    assert strings[oracle.slot(opt.selectors, MAGIC)] == MAGIC
    assert opt.base_selector is not None and oracle.cstr(opt.base_selector) == MAGIC
    names = {n for lib in (LIBA, LIBB) for n in _methnames(built.input(lib))}
    assert {b"zeta", b"beta", b"value", b"omega", b"alpha", b"extra", b"dup", b"make"} <= names
    for name in names:
        slot = oracle.slot(opt.selectors, name)
        assert slot is not None, name
        assert strings[slot] == name
    assert oracle.slot(opt.selectors, b"notASelector") is None


def test_every_selector_reference_points_at_the_canonical_string(built: Built, oracle: ObjCOracle) -> None:
    opt = oracle.opt()
    assert opt is not None and opt.selectors is not None
    t = opt.selectors
    for lib in (LIBA, LIBB):
        refs = oracle.pointer_section(lib, "__objc_selrefs")
        assert len(refs) == _selref_count(built.input(lib)) > 0
        for ref in refs:
            name = oracle.cstr(ref)
            slot = oracle.slot(t, name)
            assert slot is not None and ref == t.address + t.offsets[slot], name


def test_class_and_protocol_names_find_every_definition(oracle: ObjCOracle) -> None:
    opt = oracle.opt()
    assert opt is not None
    classes: dict[str, list[tuple[int, int | None]]] = {}
    for name, address, index in opt.class_objects:
        classes.setdefault(name, []).append((address, index))
    images = [mh for mh, _v, _f, _l in opt.header_infos]
    a_index = images.index(_image_address(oracle, LIBA))
    b_index = images.index(_image_address(oracle, LIBB))
    for lib, index in ((LIBA, a_index), (LIBB, b_index)):
        for a in oracle.pointer_section(lib, "__objc_classlist"):
            k = oracle.one_class(a, opt.base_selector)
            assert (a, index) in classes[k.name], k.name
    assert sorted(i for _, i in classes["Dup"]) == sorted([a_index, b_index]), "a multimap: both Dups"
    assert set(classes) == {"Base", "Derived", "Dup", "Leaf"}
    protocols = [(n, i) for n, _a, i in opt.protocol_objects]
    assert sorted(protocols) == sorted([("Shared", a_index), ("Shared", b_index)])
    for _name, address, _index in opt.protocol_objects:
        assert oracle.text(oracle.ptr(address + 8)) == "Shared"


def _entries(oracle: ObjCOracle, ml: int) -> tuple[int, list[int]]:
    """entsizeAndFlags and the selector address of each entry of a pointer method list."""
    flags, count = oracle.u32(ml), oracle.u32(ml + 4)
    return flags, [oracle.ptr(ml + 8 + 24 * i) for i in range(count)]


def test_method_lists_are_the_inputs_sorted_by_selector(built: Built, oracle: ObjCOracle) -> None:
    opt = oracle.opt()
    assert opt is not None
    checked = 0
    for lib in (LIBA, LIBB):
        listing = objdump.objc_metadata(built.readable(lib))
        symbols = _symbols(built.input(lib))  # the cached file's own symbols for IMPs
        image = _image_address(oracle, lib)
        names = {p.name_address for _a, cls, _m in listing.classes for p in (cls,)}
        assert names
        for a in oracle.pointer_section(lib, "__objc_classlist"):
            for cls_addr in (a, oracle.ptr(a)):
                k = oracle.one_class(cls_addr, opt.base_selector)
                ro = oracle.ptr(cls_addr + 32) & 0x00007FFFFFFFFFF8
                ml = oracle.ptr(ro + 32)
                sign = "+" if k.meta else "-"
                part = next(
                    (m if k.meta else c)
                    for _x, c, m in listing.classes
                    if _cstr_at(built.readable(lib), c.name_address) == k.name
                )
                expected = sorted((m.name, symbols[f"{sign}[{k.name} {m.name}]"]) for m in part.methods)
                assert sorted((n, i - image) for n, _t, i in k.methods) == expected, k.name
                if not ml:
                    continue
                flags, sels = _entries(oracle, ml)
                assert flags & 3 == 3, "uniqued and sorted (dyld-1162 sets both bits)"
                assert flags & 0xFFFC == 24
                assert sels == sorted(sels), f"{k.name}: entries are not in selector address order"
                checked += 1
    assert checked >= 4
    # Base's list was [value, zeta, beta]; its selector strings are in first-use order
    base = next(k for k in oracle.classes(LIBA, opt.base_selector) if k.name == "Base" and not k.meta)
    assert [n for n, _t, _i in base.methods] == ["zeta", "beta", "value"]


def test_categories_and_protocol_method_lists(oracle: ObjCOracle) -> None:
    opt = oracle.opt()
    assert opt is not None
    cats = oracle.categories(LIBB, opt.base_selector)
    assert [(n, cls, [m for m, _t, _i in inst]) for n, cls, inst, _c in cats] == [
        ("Extra", "Base", ["extra"])
    ]
    for lib in (LIBA, LIBB):
        for a in oracle.pointer_section(lib, "__objc_protolist"):
            ml = oracle.ptr(a + 24)
            flags, sels = _entries(oracle, ml)
            assert flags & 3 == 3 and [oracle.cstr(s) for s in sels] == [b"value"]


def test_images_are_marked_optimized_and_libobjc_points_at_the_tables(
    built: Built, oracle: ObjCOracle
) -> None:
    opt = oracle.opt()
    assert opt is not None and not opt.legacy
    # flags: NoMissingWeakSuperclasses | LargeSharedCache; never IsProduction (development cache)
    assert opt.flags == 0b110
    assert [f & 8 for _mh, _v, f, _l in opt.header_infos] == [8, 8]
    for lib in (LIBA, LIBB):
        info = oracle.image_info(lib)
        assert info is not None and info[1] & 8
    assert not built.warnings
    # objc_opt_t v16 in libobjc's __TEXT,__objc_opt_ro: offsets from itself (objc-shared-cache.h)
    sect = oracle.sections(LIBOBJC)[("__TEXT", "__objc_opt_ro")][0]
    version, flags, selopt, hro, _c, _p, hrw, _p2, cls, proto = struct.unpack("<2I8i", oracle.raw(sect, 40))
    base = oracle.i64(sect + 40)
    opts_off = struct.unpack_from("<Q", oracle.header, 0x1D0)[0]
    head = struct.unpack("<2I6Q", oracle.raw(oracle.base + opts_off, 56))
    assert (version, flags) == (16, head[1])
    assert [sect + o for o in (hro, hrw, selopt, cls, proto)] == [oracle.base + o for o in head[2:7]]
    assert sect + base == oracle.base + head[7] == opt.base_selector


def test_the_cache_verifies(built: Built) -> None:
    r = run_cli("verify", built.main)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# malformed metadata: the image is not optimized, with a warning; the build goes on


def _patch(path: Path, address: int, value: bytes) -> None:
    m = open_macho(path)
    offset = m.address_to_offset(address)
    assert offset is not None
    data = bytearray(path.read_bytes())
    data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))


def _class_addresses(path: Path) -> dict[str, int]:
    listing = objdump.objc_metadata(path)
    out = {}
    for address, cls, _meta in listing.classes:
        m = open_macho(path)
        raw = bytes(m.read_at_address(cls.name_address, 64))
        out[raw.split(b"\0")[0].decode()] = address
    return out


def _bad_entsize(liba: Path) -> None:
    part = next(c for _a, c, _m in objdump.objc_metadata(liba).classes if c.method_count == 3)
    _patch(liba, part.base_methods, struct.pack("<I", 32))


def _cyclic_superclass(liba: Path) -> None:
    derived = _class_addresses(liba)["Derived"]
    _patch(liba, derived + 8, struct.pack("<Q", derived))


def _class_outside(liba: Path) -> None:
    sect = next(s for s in open_macho(liba).sections if s.sectname == "__objc_classlist")
    _patch(liba, sect.addr, struct.pack("<Q", 0x7FFF0000))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_bad_entsize, "entry size 32 is not 24"),
        (_cyclic_superclass, "cyclic superclass chain"),
    ],
    ids=["entsize", "cyclic-superclass"],
)
def test_malformed_metadata_skips_only_that_image(tmp_path: Path, breakage: object, message: str) -> None:
    # opcode fixups: every rebase target is the word in the file, so a patch changes it
    root = _root(tmp_path, fixups="opcodes")
    assert callable(breakage)
    breakage(root / LIBA.lstrip("/"))
    built = _build(root, tmp_path / "cache")
    ours = [w for w in built.warnings if "ObjC metadata" in w]
    assert len(ours) == 1 and f"'{LIBA}'" in ours[0] and message in ours[0], built.warnings
    r = run_cli("verify", built.main)
    assert r.returncode == 0, r.stdout
    oracle = ObjCOracle(built.main, 0x4000 * random.Random().randrange(1, 1 << 14))
    opt = oracle.opt()
    assert opt is not None
    flags = {mh: f for mh, _v, f, _l in opt.header_infos}
    assert flags[_image_address(oracle, LIBA)] & 8 == 0, "the malformed image is left to libobjc"
    assert flags[_image_address(oracle, LIBB)] & 8
    assert {n for n, _a, _i in opt.class_objects} == {"Leaf", "Dup"}, "only libb's classes are in the table"
    # libb's selector references still reach unique strings
    assert opt.selectors is not None
    for ref in oracle.pointer_section(LIBB, "__objc_selrefs"):
        slot = oracle.slot(opt.selectors, oracle.cstr(ref))
        assert slot is not None and ref == opt.selectors.address + opt.selectors.offsets[slot]


def test_a_class_pointer_outside_the_image_is_a_problem(tmp_path: Path) -> None:
    # a build evicts a dylib whose rebase leaves its segments before the ObjC optimizers see
    # it (eligibility), so the reader's own verdict is checked on the file
    from dyldcache.builder.optimizers.objc_input import read_objc_input

    root = _root(tmp_path, fixups="opcodes")
    liba = root / LIBA.lstrip("/")
    assert read_objc_input(open_macho(liba), LIBA).problem is None
    _class_outside(liba)
    problem = read_objc_input(open_macho(liba), LIBA).problem
    assert problem is not None and "class pointer outside the image (0x7fff0000)" in problem


def test_objc_report_lists_our_tables(built: Built) -> None:
    r = run_cli("objc", built.main, "--selectors")
    assert r.returncode == 0, r.stderr
    assert "OptimizedByDyld" in r.stdout and "the tables are empty" not in r.stdout
    for name in ("zeta", "beta", "value", "omega", "extra"):
        assert f" {name}\n" in r.stdout
