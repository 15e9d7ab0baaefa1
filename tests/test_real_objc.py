"""The ObjC optimizers on real Apple inputs: macOS 10.14's /usr/lib (x86_64, ld64-409, pointer
method lists, dyld-info opcode fixups, fat files with an i386 slice).

The root is prepared as tests/test_real_macos.py prepares it (tests/standins.py), whose libobjc
stand-in is the ObjC fixture's runtime (tests/fixtures/src/objc/runtime.m: NSObject, Protocol,
``__TEXT,__objc_opt_ro``, ``__DATA_CONST,__objc_opt_ptrs``), so the optimizers run on the 31
real dylibs with ObjC metadata. The cache is built here with the default settings (a few
seconds: not worth coupling to test_real_macos's session build, which uses Apple's placement
rules).

Oracles: which inputs have ObjC comes from their own load commands (the ``__objc_imageinfo``
section, read by tests/objc_oracle.py's section_table from the x86_64 slice); every semantic
check of tests/objc_checks.py compares the cache, read by the independent ObjC oracle at a random
slide in the emulator, with the input files mapped by LIEF (their x86_64 slices, their opcode
fixups applied) at random bases.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import objc_checks as oc
import pytest
from cache_fixtures import slice_offset
from conftest import python_module, shared_path, time_limit
from objc_oracle import LIBOBJC, section_table
from standins import prepare_macos_root

from dyldcache.builder.pipeline import BuildOptions, BuildResult, build_cache

SOURCE = ("data", "real", "macos10.14-x86_64-usr-lib")
ARCH = "x86_64"


@dataclass
class ObjCBuild:
    root: Path
    result: BuildResult
    #: install name -> input file, for every placed input with ObjC metadata
    objc_inputs: dict[str, str]
    cache: oc.CacheObjC
    inputs: oc.InputObjC

    @property
    def main(self) -> str:
        return str(self.result.files[0])


def _has_objc(path: Path) -> bool:
    """The input's x86_64 slice has a __DATA* __objc_imageinfo section (what libobjc and dyld
    look for)."""
    data = path.read_bytes()
    at = slice_offset(data, ARCH)
    sizeofcmds = struct.unpack_from("<I", data, at + 20)[0]
    sections = section_table(data[at : at + 32 + sizeofcmds], 0)
    return any(sect == "__objc_imageinfo" and seg.startswith("__DATA") for seg, sect in sections)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> ObjCBuild:
    python_module("unicorn")
    python_module("lief")
    source = shared_path(*SOURCE)
    base = tmp_path_factory.mktemp("real-objc")
    root, _texts, _links, _standins = prepare_macos_root(source, base)
    with time_limit(120):
        result = build_cache(BuildOptions(arch=ARCH, output_dir=str(base / "cache"), root=str(root)))
    files = {name: (root / name.lstrip("/")).resolve() for name in result.dylibs}
    objc_inputs = {name: str(path) for name, path in files.items() if _has_objc(path)}
    seed = random.randrange(1 << 30)
    cache = oc.open_cache(str(result.files[0]))
    inputs = oc.inputs_from_files(str(result.files[0]), objc_inputs, ARCH, seed, partial=True)
    return ObjCBuild(root, result, objc_inputs, cache, inputs)


def test_every_real_objc_image_is_optimized(built: ObjCBuild) -> None:
    """libobjc and every placed input with ObjC metadata have a header_info and are marked
    OptimizedByDyld; the builder warned about none (their metadata is well-formed)."""
    assert LIBOBJC in built.objc_inputs
    assert len(built.objc_inputs) >= 32, sorted(built.objc_inputs)
    assert set(built.cache.images) == set(built.objc_inputs)
    for name, im in built.cache.images.items():
        assert im.image_info is not None and im.image_info[1] & oc.OPTIMIZED_BY_DYLD, name
    assert [w for w in built.result.warnings if "ObjC" in w] == []
    # among the real images, x86_64 slices of fat files
    assert sum(Path(p).read_bytes()[:4] == b"\xca\xfe\xba\xbe" for p in built.objc_inputs.values()) >= 5


@pytest.mark.parametrize("check", list(oc.CHECKS))
def test_objc_check_passes_on_the_real_inputs(built: ObjCBuild, check: str) -> None:
    assert set(built.inputs.images) == set(built.objc_inputs)
    assert oc.CHECKS[check](built.cache, built.inputs) == []


def test_the_checks_are_not_vacuous(built: ObjCBuild) -> None:
    """What the checks above covered: the real images' selectors, selector references, classes,
    protocols, categories and method lists (counts far above the fixture's), read from the
    input files."""
    ims = [im for name, im in built.inputs.images.items() if name != LIBOBJC]
    selectors = set().union(*(im.selectors() for im in ims))
    selrefs = sum(len(im.selector_references) for im in ims)
    classes = [k for im in ims for k in im.classes if not k.meta]
    methods = sum(len(k.methods) for im in ims for k in im.classes)
    protocols = sum(len(im.protocols) for im in ims)
    categories = sum(len(im.categories) for im in ims)
    lists = sum(len(built.cache.oracle.method_list_addresses(n)) for n in built.inputs.images)
    counts = dict(
        selectors=len(selectors),
        selrefs=selrefs,
        classes=len(classes),
        methods=methods,
        protocols=protocols,
        categories=categories,
        method_lists=lists,
    )
    print(counts)  # 10.14: 2301 selectors, 2084 selrefs, 266 classes, 4117 methods, 142 protocols
    assert len(selectors) > 2000 and selrefs > 2000, counts
    assert len(classes) > 200 and methods > 4000, counts
    assert protocols > 100 and categories > 20 and lists > 400, counts


def test_the_checks_report_real_inputs_that_differ(built: ObjCBuild) -> None:
    """Against inputs changed where they look (one real image's first two selector references
    swapped, one of its methods' IMP moved), the checks report that image."""
    name = "/usr/lib/libprequelite.dylib"
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
