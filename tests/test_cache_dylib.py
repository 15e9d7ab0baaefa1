"""A cache dylib's own facts, which several optimizers share (``builder/cache_dylib.py``,
``builder/model.py``): which input segment holds an input address, and which file holds a dylib.
Expected values come from the input files' load commands (the test-side reader)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cache_fixtures import CacheFactory, RawCache, fixture_install_names, input_segments

from dyldcache.builder.pipeline import BuildOptions, CacheBuilder, build_cache
from dyldcache.builder.types import InputVMAddr

_OBJC_OPTS = 0x1D0  # dyld_cache_header.objcOptsOffset, objcOptsSize
LIBOBJC = "/usr/lib/libobjc.A.dylib"


def test_an_input_address_belongs_to_the_segment_whose_range_holds_it(
    cache_factory: CacheFactory, tmp_path: Path
) -> None:
    """[vmaddr, vmaddr + vmsize): the first byte and the last byte of a segment are in it, the
    byte after it is in the next segment (or none)."""
    root = cache_factory.root("arm64")
    builder = CacheBuilder(BuildOptions(arch="arm64", output_dir=str(tmp_path / "out"), root=root, jobs=1))
    builder.calculate_inputs()
    assert builder.model is not None
    checked = 0
    for d in builder.model.dylibs:
        segs = input_segments(os.path.join(root, d.install_name.lstrip("/")))
        for k, seg in enumerate(segs):
            after = (
                segs[k + 1].name
                if k + 1 < len(segs) and segs[k + 1].vmaddr == seg.vmaddr + seg.vmsize
                else None
            )
            for addr, want in (
                (seg.vmaddr, seg.name),
                (seg.vmaddr + seg.vmsize - 1, seg.name),
                (seg.vmaddr + seg.vmsize, after),
            ):
                found = d.segment_for_input_address(InputVMAddr(addr))
                assert (found.name if found is not None else None) == want, (d.install_name, hex(addr))
                checked += 1
        before = d.segment_for_input_address(InputVMAddr(segs[0].vmaddr - 1)) if segs[0].vmaddr else None
        assert before is None
    assert checked > 3 * len(builder.model.dylibs)


def test_the_objc_header_exists_exactly_when_libobjc_is_cached(
    cache_factory: CacheFactory, tmp_path: Path
) -> None:
    """dyld reads objcOptsOffset without a 0 check whenever libobjc is a cache dylib
    (cache-format.md §12.1): the header is there with libobjc, and absent without it."""
    with_objc = RawCache(cache_factory.build("arm64").main)
    assert LIBOBJC in dict(with_objc.images)
    offset, size = struct.unpack_from("<2Q", with_objc.main.data, _OBJC_OPTS)
    assert offset and size
    root = cache_factory.root("arm64")
    names = fixture_install_names()
    paths = [os.path.join(root, names[k].lstrip("/")) for k in ("libsystem", "liba")]
    result = build_cache(BuildOptions(arch="arm64", output_dir=str(tmp_path / "out"), paths=paths, jobs=1))
    without = RawCache(result.files[0])
    assert sorted(dict(without.images)) == sorted(names[k] for k in ("libsystem", "liba"))
    assert struct.unpack_from("<2Q", without.main.data, _OBJC_OPTS) == (0, 0)
