"""A cache dylib's own facts, which several optimizers share (``builder/cache_dylib.py``,
``builder/model.py``): which input segment holds an input address, and which file holds a dylib.
Expected values come from the input files' load commands (the test-side reader)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
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


_SECTION = struct.Struct("<16s16s2Q8I")  # section_64 (loader.h), after the 72-byte segment_command_64
_SEGMENT_HEADER = 72
_PAGE = 0x1000  # machHeaderAlignment


def _sections(body: bytes) -> list[tuple[str, int, int]]:
    """(name, address, alignment) of every section of one cached LC_SEGMENT_64."""
    (nsects,) = struct.unpack_from("<I", body, 64)
    out = []
    for k in range(nsects):
        name, _seg, addr, _size, _off, align, *_ = _SECTION.unpack_from(
            body, _SEGMENT_HEADER + k * _SECTION.size
        )
        out.append((name.split(b"\0")[0].decode(), addr, 1 << align))
    return out


@pytest.mark.parametrize("key", ["arm64", "x86_64", "arm64e-ios", "x86_64-multi", "arm64-opcodes"])
def test_cached_images_keep_their_alignment(cache_factory: CacheFactory, key: str) -> None:
    """Every mach header on 4 KiB (machHeaderAlignment), every section at a multiple of its own
    alignment, every segment at the largest of its sections' (cache-format.md §7.1)."""
    raw = RawCache(cache_factory.build(key).main)
    sections = 0
    for path, addr in raw.images:
        assert addr % _PAGE == 0, f"{path}: mach header at {addr:#x}"
        for cmd, body in raw.load_commands(path):
            if cmd != 0x19 or body[8:24].split(b"\0")[0] == b"__LINKEDIT":
                continue
            vmaddr = struct.unpack_from("<Q", body, 24)[0]
            found = _sections(body)
            for name, sect_addr, align in found:
                assert sect_addr % align == 0, f"{path} {name} at {sect_addr:#x} (align {align})"
            assert vmaddr % max((a for _, _, a in found), default=1) == 0, path
            sections += len(found)
    assert sections > 2 * len(raw.images)


def test_a_cache_address_moves_by_its_segments_slide(cache_factory: CacheFactory, tmp_path: Path) -> None:
    """After layout, an input address inside a segment moves by that segment's slide (cache
    address minus input address, from the segments' own placement); one past a segment's end
    stays with it, an address below the first segment moves with the lowest one. The scalar
    cache_address and the vectorized cache_addresses agree."""
    root = cache_factory.root("arm64")
    builder = CacheBuilder(BuildOptions(arch="arm64", output_dir=str(tmp_path / "out"), root=root, jobs=1))
    try:
        builder.calculate_inputs()
        builder.estimate_global_optimizations()
        builder.create_subcaches()
        assert builder.model is not None
        checked = 0
        for d in builder.model.dylibs:
            placed = [s for s in d.segments if s.chunk is not None]
            lowest = min(d.segments, key=lambda s: s.input.vmaddr)
            for seg in placed:
                base = seg.input.vmaddr
                for addr in (base, base + seg.input.vmsize - 1, base + seg.input.vmsize // 2):
                    want = addr + seg.cache_vmaddr - seg.input_vmaddr
                    assert d.cache_address(InputVMAddr(addr)) == want, (d.install_name, hex(addr))
                    checked += 1
            if lowest.input.vmaddr and lowest.chunk is not None:
                addr = lowest.input.vmaddr - 1
                assert d.cache_address(InputVMAddr(addr)) == addr + lowest.cache_vmaddr - lowest.input_vmaddr
            probes = [s.input.vmaddr + k for s in d.segments for k in (0, 1, s.input.vmsize)]
            vectorized = d.cache_addresses(np.array(probes, dtype=np.uint64)).tolist()
            assert [d.cache_address(InputVMAddr(a)) for a in probes] == vectorized
        assert checked > 2 * len(builder.model.dylibs)
    finally:
        builder._discard()
