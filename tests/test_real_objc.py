"""The ObjC optimizers on real Apple inputs.

Two roots of ../shared/data/real, each prepared as its own test prepares it (tests/standins.py),
with the ObjC fixture's runtime (tests/fixtures/src/objc/runtime.m: NSObject, Protocol,
``__TEXT,__objc_opt_ro``, ``__DATA_CONST,__objc_opt_ptrs``) as libobjc's stand-in, so that the
optimizers run on the real dylibs with ObjC metadata:

- macOS 10.14's /usr/lib (x86_64, ld64-409, pointer method lists, dyld-info opcode fixups, fat
  files with an i386 slice): 31 real ObjC dylibs, libobjc from the x86_64 runtime.o;
- iOS 14.4's root (arm64, Apple's small dylibs and Procursus' ld64-609 ones, opcode fixups, split
  seg v2): 8 dylibs have ObjC metadata; the 5 with split seg info are placed (liblog_coreacc,
  libAHTRestore, libsystem_featureflags, PeppySystemState, ZhuGeSupport); libapt-pkg,
  libapt-private and MatrixSource have none and it cannot be synthesized (their code reaches
  across segments with ADR), so they are evicted. libobjc from the arm64 runtime.o.

Each cache is built here with the default settings (under a second for iOS, a few seconds for
macOS: not worth coupling to the session builds of test_real_macos / test_real_ios, which use
Apple's placement rules).

Oracles: which inputs have ObjC comes from their own load commands (the ``__objc_imageinfo``
section, read by tests/objc_oracle.py's section_table from the arch's slice), which have split
seg info from llvm-objdump-22; every semantic check of tests/objc_checks.py compares the cache,
read by the independent ObjC oracle at a random slide in the emulator, with the input files
mapped by LIEF (their arch's slices, their opcode fixups applied) at random bases.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import objc_checks as oc
import objdump
import pytest
from cache_fixtures import slice_offset
from conftest import python_module, run_cli, shared_path, time_limit
from objc_oracle import LIBOBJC, section_table
from standins import prepare_ios_root, prepare_macos_root

from dyldcache.builder.pipeline import BuildOptions, BuildResult, build_cache


@dataclass(frozen=True)
class RealRoot:
    source: tuple[str, ...]
    arch: str
    platform: str
    #: lower bounds of what the checks cover in the real images (libobjc left out)
    least: dict[str, int]
    #: the real image the mutation test changes
    mutated: str
    #: files of the root with ObjC metadata that cannot be placed (no split seg info)
    unplaced: int


ROOTS = {
    # 10.14: 2301 selectors, 2084 selrefs, 266 classes, 4117 methods, 142 protocols
    "macos10.14": RealRoot(
        ("data", "real", "macos10.14-x86_64-usr-lib"),
        "x86_64",
        "macos",
        dict(
            images=31,
            selectors=2000,
            selrefs=2000,
            classes=200,
            methods=4000,
            protocols=100,
            categories=20,
            method_lists=400,
            fat=5,
            imp_caches=-1,  # x86_64: none (objc4 reads them on arm64 only)
        ),
        "/usr/lib/libprequelite.dylib",
        0,
    ),
    "ios14.4": RealRoot(
        ("data", "real", "ios14.4-arm64-procursus", "procursus"),
        "arm64",
        "ios",
        # 103 selectors, 126 selrefs, 4 classes, 49 methods, 1 protocol, 1 category, 10 lists
        dict(
            images=5,
            selectors=100,
            selrefs=120,
            classes=3,
            methods=45,
            protocols=0,
            categories=0,
            method_lists=8,
            fat=0,
            # every class with methods but the root NSObject (PSSInterface, PSSInterfacePSOC,
            # PeppySystemState, AHTLoader, and the metaclasses with class methods)
            imp_caches=5,
        ),
        "/System/Library/PrivateFrameworks/PeppySystemState.framework/PeppySystemState",
        3,
    ),
}


@dataclass
class ObjCBuild:
    real: RealRoot
    root: Path
    result: BuildResult
    #: install name -> input file, for every placed input with ObjC metadata
    objc_inputs: dict[str, str]
    cache: oc.CacheObjC
    inputs: oc.InputObjC

    @property
    def main(self) -> str:
        return str(self.result.files[0])


def _is_macho(path: Path) -> bool:
    """A thin 64-bit or fat Mach-O file (not a link)."""
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) in (b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")


def _has_objc(path: Path, arch: str) -> bool:
    """The input's ``arch`` slice has a __DATA* __objc_imageinfo section (what libobjc and dyld
    look for)."""
    data = path.read_bytes()
    at = slice_offset(data, arch)
    sizeofcmds = struct.unpack_from("<I", data, at + 20)[0]
    sections = section_table(data[at : at + 32 + sizeofcmds], 0)
    return any(sect == "__objc_imageinfo" and seg.startswith("__DATA") for seg, sect in sections)


@pytest.fixture(scope="module", params=list(ROOTS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ObjCBuild:
    python_module("unicorn")
    python_module("lief")
    real = ROOTS[request.param]
    source = shared_path(*real.source)
    base = tmp_path_factory.mktemp(f"real-objc-{request.param}")
    if real.platform == "macos":
        root = prepare_macos_root(source, base)[0]
    else:
        root = prepare_ios_root(source, base)[0]
    with time_limit(120):
        result = build_cache(
            BuildOptions(
                arch=real.arch, platform=real.platform, output_dir=str(base / "cache"), root=str(root)
            )
        )
    files = {name: (root / name.lstrip("/")).resolve() for name in result.dylibs}
    objc_inputs = {name: str(path) for name, path in files.items() if _has_objc(path, real.arch)}
    seed = random.randrange(1 << 30)
    cache = oc.open_cache(str(result.files[0]))
    inputs = oc.inputs_from_files(str(result.files[0]), objc_inputs, real.arch, seed, partial=True)
    return ObjCBuild(real, root, result, objc_inputs, cache, inputs)


def test_every_real_objc_image_is_optimized(built: ObjCBuild) -> None:
    """libobjc and every placed input with ObjC metadata have a header_info and are marked
    OptimizedByDyld; the builder warned about none (their metadata is well-formed)."""
    assert LIBOBJC in built.objc_inputs
    assert len(built.objc_inputs) >= built.real.least["images"] + 1, sorted(built.objc_inputs)
    assert set(built.cache.images) == set(built.objc_inputs)
    for name, im in built.cache.images.items():
        assert im.image_info is not None and im.image_info[1] & oc.OPTIMIZED_BY_DYLD, name
    assert [w for w in built.result.warnings if "ObjC" in w] == []
    # among the real images, x86_64 slices of fat files
    fat = sum(Path(p).read_bytes()[:4] == b"\xca\xfe\xba\xbe" for p in built.objc_inputs.values())
    assert fat >= built.real.least["fat"]


def test_every_real_objc_file_is_placed_or_lacks_split_seg(built: ObjCBuild) -> None:
    """Every Mach-O file of the root with ObjC metadata is placed, or has no split seg info
    (llvm-objdump-22 finds no LC_SEGMENT_SPLIT_INFO) and is evicted for that (iOS: libapt-pkg,
    libapt-private, MatrixSource, whose code reaches across segments with ADR)."""
    placed = {(built.root / n.lstrip("/")).resolve() for n in built.result.dylibs}
    evicted = {(built.root / e.path.lstrip("/")).resolve(): e.reason for e in built.result.evictions}
    objc_files = {
        p.resolve() for p in built.root.rglob("*") if _is_macho(p) and _has_objc(p, built.real.arch)
    }
    assert {Path(p).resolve() for p in built.objc_inputs.values()} <= objc_files
    unplaced = objc_files - placed
    assert len(unplaced) == built.real.unplaced, sorted(map(str, unplaced))
    for p in unplaced:
        assert not objdump.private_headers(p).commands_named("LC_SEGMENT_SPLIT_INFO"), p
        assert "split seg" in evicted[p], (p, evicted.get(p))


def test_verify_passes_on_the_objc_cache(built: ObjCBuild) -> None:
    proc = run_cli("verify", built.main)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("check", list(oc.CHECKS))
def test_objc_check_passes_on_the_real_inputs(built: ObjCBuild, check: str) -> None:
    assert set(built.inputs.images) == set(built.objc_inputs)
    assert oc.CHECKS[check](built.cache, built.inputs) == []


def test_the_checks_are_not_vacuous(built: ObjCBuild) -> None:
    """What the checks above covered: the real images' selectors, selector references, classes,
    protocols, categories and method lists (counts far above the fixture's), read from the
    input files, and on iOS the IMP caches (built by default there) that check_imp_caches
    compared with method lookup on them."""
    ims = [im for name, im in built.inputs.images.items() if name != LIBOBJC]
    selectors = set().union(*(im.selectors() for im in ims))
    selrefs = sum(len(im.selector_references) for im in ims)
    classes = [k for im in ims for k in im.classes if not k.meta]
    methods = sum(len(k.methods) for im in ims for k in im.classes)
    protocols = sum(len(im.protocols) for im in ims)
    categories = sum(len(im.categories) for im in ims)
    lists = sum(len(built.cache.oracle.method_list_addresses(n)) for n in built.inputs.images)
    imp_caches = sum(
        built.cache.oracle.preopt_cache(k.address) is not None
        for im in built.cache.images.values()
        for k in im.classes
        if built.real.arch != "x86_64"
    )
    counts = dict(
        selectors=len(selectors),
        selrefs=selrefs,
        classes=len(classes),
        methods=methods,
        protocols=protocols,
        categories=categories,
        method_lists=lists,
        imp_caches=imp_caches,
    )
    print(counts)
    least = built.real.least
    assert all(counts[k] > least[k] for k in counts), (counts, least)


def test_the_checks_report_real_inputs_that_differ(built: ObjCBuild) -> None:
    """Against inputs changed where they look (one real image's first two selector references
    swapped, one of its methods' IMP moved), the checks report that image."""
    name = built.real.mutated
    im = built.inputs.images[name]
    refs = list(im.selector_references)
    refs[0], refs[1] = refs[1], refs[0]
    assert refs != im.selector_references
    k = next(k for k in im.classes if k.methods)
    (sel, types, imp), *rest = k.methods
    moved = replace(k, methods=[(sel, types, imp + 4), *rest])
    changed = replace(im, selector_references=refs, classes=[moved if c is k else c for c in im.classes])
    inputs = oc.InputObjC({**built.inputs.images, name: changed}, built.inputs.to_cache)
    assert any(name in p for p in oc.check_selector_references(built.cache, inputs))
    assert any(name in p and k.name in p for p in oc.check_method_lists(built.cache, inputs))
