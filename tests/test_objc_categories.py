"""Pre-attached ObjC categories (objc_categories.py), on the ObjC fixture root built with the
optimizer switched on: libfxpoly's FXBase (FXPolyExtras) extends a class of libfxshapes and
libfxtop's NSObject (FXTopDebug) one of libobjc.

- the checker (objc_checks.check_preattached_categories, an independent relative_list_list_t
  decoder in objc_oracle.py) finds every category method list on its class at a random slide,
  with the input's names and IMPs, and every other check still passes (the class's own list is
  the last entry);
- it reports a cache whose list-of-lists entry names another image;
- the libobjc stand-in, which skips the catlists of images marked DyldCategoriesOptimized as
  libobjc does, still gets the natively computed results of messages across dylibs, category
  methods included, on arm64, arm64e and x86_64;
- Apple's ObjC caches (dyld before pre-attached categories) carry no DyldCategoriesOptimized
  image, so the check passes on them without looking at anything.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import struct
import tempfile
from pathlib import Path

import emulator
import objc_checks as oc
import objc_fixtures as fx
import pytest
from cache_fixtures import RawCache, random_slide
from conftest import run_cli
from test_objc_semantics import APPLE_OBJC, _apple, _file_offset, _map_images, check_calls

from dyldcache.builder.pipeline import BuildOptions, build_cache


@functools.cache
def _built(arch: str) -> fx.ObjCBuilt:
    root, inputs = fx.objc_root(arch)
    out = os.path.join(tempfile.mkdtemp(prefix=f"dyldcache-objccat-{arch}-"), "cache")
    options = BuildOptions(
        arch=arch, platform="macos", output_dir=out, root=root, jobs=1, objc_preattached_categories=True
    )
    result = build_cache(options)
    return fx.ObjCBuilt(arch, "macos", root, inputs, result)


def _open(arch: str) -> tuple[oc.CacheObjC, oc.InputObjC]:
    built = _built(arch)
    cache = oc.open_cache(built.main, random_slide(built.main))
    return cache, oc.inputs_from_files(built.main, built.inputs, arch, random.randrange(1 << 30))


@pytest.mark.parametrize("arch", ["arm64", "arm64e"])
def test_categories_are_attached_to_their_classes(arch: str) -> None:
    cache, inputs = _open(arch)
    flagged = [
        n for n in fx.OBJC_IMAGES if (cache.oracle.image_info(n) or (0, 0))[1] & oc.DYLD_CATEGORIES_OPTIMIZED
    ]
    assert sorted(flagged) == sorted(fx.OBJC_IMAGES)
    assert oc.check_preattached_categories(cache, inputs) == []
    for check in oc.CHECKS.values():
        assert check(cache, inputs) == []
    # the categories really are there: FXBase's and NSObject's method fields are lists of lists
    o = cache.oracle
    tagged = 0
    for name in (fx.SHAPES, fx.LIBOBJC):
        for slot in o.pointer_section(name, "__objc_classlist"):
            for k in (slot, o.ptr(slot)):
                tagged += o.ptr((o.ptr(k + 32) & 0x00007FFFFFFFFFF8) + 32) & 1
    assert tagged == 4  # FXBase, its metaclass, NSObject, its metaclass


def test_checker_reports_a_wrong_image_index(tmp_path: Path) -> None:
    built = _built("arm64")
    cache, inputs = _open("arm64")
    o = cache.oracle
    slot = o.pointer_section(fx.POLY, "__objc_catlist")[0]
    cls = o.ptr(slot + 8)
    field = o.ptr((o.ptr(cls + 32) & 0x00007FFFFFFFFFF8) + 32)
    assert field & 1
    first = (field & ~1) + 8  # the category's entry: it names another image
    src = Path(built.main)
    data = bytearray(src.read_bytes())
    at = _file_offset(RawCache(src), first)
    (word,) = struct.unpack_from("<Q", data, at)
    struct.pack_into("<Q", data, at, word ^ 1)
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    dst.write_bytes(bytes(data))
    for other in src.parent.iterdir():  # the subcaches, unchanged
        if other != src and not (tmp_path / other.name).exists():
            shutil.copy(other, tmp_path / other.name)
    mutated = oc.open_cache(str(dst))
    assert oc.check_preattached_categories(mutated, inputs)


@pytest.mark.parametrize("arch", fx.ARCHS)
def test_messages_through_preattached_categories(arch: str) -> None:
    built = _built(arch)
    loaded = emulator.load_cache(built.main, arch, random_slide(built.main))
    assert _map_images(loaded) == 0  # every catlist skipped: the categories are pre-attached
    check_calls(loaded)


@pytest.mark.parametrize("name", APPLE_OBJC)
def test_apple_caches_have_no_preattached_categories(name: str) -> None:
    path = _apple(name)
    cache = oc.open_cache(str(path))
    infos = [cache.oracle.image_info(n) for n in cache.images]
    assert not any(i and i[1] & oc.DYLD_CATEGORIES_OPTIMIZED for i in infos)
    assert oc.check_preattached_categories(cache, oc.inputs_from_cache(cache)) == []


@pytest.mark.parametrize("switch", [False, True])
def test_the_command_line_switch(switch: bool, tmp_path: Path) -> None:
    """`build --objc-preattached-categories` attaches them; without it no image is flagged."""
    root, _inputs = fx.objc_root("arm64")
    out = tmp_path / "out"
    args = ["build", "--arch", "arm64", "--root", root, "-o", str(out), "-q"]
    assert run_cli(*args, *(["--objc-preattached-categories"] if switch else [])).returncode == 0
    shown = json.loads(run_cli("objc", str(out / "dyld_shared_cache_arm64"), "--json").stdout)
    flagged = {i["path"] for i in shown["images"] if i["image_info_flags"] & oc.DYLD_CATEGORIES_OPTIMIZED}
    assert flagged == (set(fx.OBJC_IMAGES) if switch else set())
