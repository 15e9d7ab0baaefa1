"""The patch table and the ObjC header of built caches, read back by decoders written here from
the format rules (docs/cache-format.md §3 and §5.1), checked against the binds LIEF finds in
the input dylibs.

Every bind from one cache dylib to another must be patchable: its location must be listed
under the exporting dylib, for the right client, with the export's name and address.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from conftest import python_module

from dyldcache.builder.pipeline import BuildOptions, build_cache
from dyldcache.examples import link_examples


@pytest.fixture(scope="module", params=["arm64", "arm64e", "x86_64"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    arch = request.param
    root = tmp_path_factory.mktemp(f"pt-root-{arch}")
    link_examples(arch, str(root))
    out = tmp_path_factory.mktemp(f"pt-cache-{arch}")
    build_cache(BuildOptions(arch=arch, output_dir=str(out), root=str(root), jobs=1))
    return arch, root, out / f"dyld_shared_cache_{arch}"


def _file_offset(data: bytes, addr: int) -> int:
    moff, mcount = struct.unpack_from("<II", data, 0x10)
    for i in range(mcount):
        a, s, fo = struct.unpack_from("<3Q", data, moff + 32 * i)
        if a <= addr < a + s:
            return fo + (addr - a)
    raise AssertionError(f"{addr:#x} is not mapped by this file")


def _images(data: bytes) -> list[tuple[str, int]]:
    off, count = struct.unpack_from("<II", data, 0x1C0)
    out = []
    for i in range(count):
        addr, _mt, _ino, po = struct.unpack_from("<3QI", data, off + 32 * i)
        out.append((data[po : data.index(b"\0", po)].decode(), addr))
    return out


def _location_addend(word: int) -> int:
    """Addend of a dyld_cache_patchable_location_v4: bits 9-13 when authenticated (bit 0), else 9-31."""
    return (word >> 9) & (0x1F if word & 1 else 0x7FFFFF)


def _decode_patch_table(data: bytes) -> dict[tuple[str, str], set[tuple[int, str, int]]]:
    """(target dylib, client dylib) -> {(client offset of the use, export name, export offset + addend)}."""
    addr, size = struct.unpack_from("<QQ", data, 0x98)
    assert addr and size, "patchInfoAddr must point at a table"
    p = _file_offset(data, addr)
    version, loc_version = struct.unpack_from("<II", data, p)
    assert version == 4 and loc_version == 0
    fields = struct.unpack_from("<18Q", data, p + 8)
    (
        images_a,
        images_n,
        exports_a,
        _exports_n,
        clients_a,
        _clients_n,
        cexp_a,
        _cexp_n,
        locs_a,
        _locs_n,
        names_a,
        _names_size,
        _gotc_a,
        gotc_n,
        *_rest,
    ) = fields
    imgs = _images(data)
    assert images_n == len(imgs) and gotc_n == len(imgs)
    out: dict[tuple[str, str], set[tuple[int, str, int]]] = {}
    for i, (path, _load) in enumerate(imgs):
        c_start, c_count, e_start, e_count = struct.unpack_from(
            "<4I", data, _file_offset(data, images_a) + 16 * i
        )
        for k in range(c_count):
            client, ce_start, ce_count = struct.unpack_from(
                "<3I", data, _file_offset(data, clients_a) + 12 * (c_start + k)
            )
            for m in range(ce_count):
                exp_index, l_start, l_count = struct.unpack_from(
                    "<3I", data, _file_offset(data, cexp_a) + 12 * (ce_start + m)
                )
                assert e_start <= exp_index < e_start + e_count, (
                    "client export refers outside its dylib's exports"
                )
                impl, name_word = struct.unpack_from(
                    "<II", data, _file_offset(data, exports_a) + 8 * exp_index
                )
                name_at = _file_offset(data, names_a) + (name_word & 0x0FFFFFFF)
                name = data[name_at : data.index(b"\0", name_at)].decode()
                for q in range(l_count):
                    use, word = struct.unpack_from(
                        "<II", data, _file_offset(data, locs_a) + 8 * (l_start + q)
                    )
                    out.setdefault((path, imgs[client][0]), set()).add(
                        (use, name, impl + _location_addend(word))
                    )
    return out


def _lief_cross_binds(root: Path, arch: str) -> dict[tuple[str, str], set[tuple[int, str]]]:
    """(library, client) -> {(client offset of the bind, symbol)} from the input dylibs, by LIEF."""
    import lief

    lief.logging.disable()
    out: dict[tuple[str, str], set[tuple[int, str]]] = {}
    for p in sorted(root.rglob("*.dylib")):
        b = lief.MachO.parse(str(p)).at(0)
        me = next(lib.name for lib in b.libraries if lib.command == lief.MachO.LoadCommand.TYPE.ID_DYLIB)
        for bi in b.bindings:
            if not bi.has_library or str(getattr(bi, "binding_class", "")).endswith("WEAK"):
                continue
            out.setdefault((bi.library.name, me), set()).add((bi.address, bi.symbol.name))
    return out


def test_every_cross_dylib_bind_is_patchable(built: tuple[str, Path, Path]) -> None:
    python_module("lief")
    arch, root, cache = built
    data = cache.read_bytes()
    table = _decode_patch_table(data)
    binds = _lief_cross_binds(root, arch)
    for (library, client), uses in binds.items():
        if library == "/usr/lib/libfxc.dylib":
            library_candidates = {library, "/usr/lib/libfxa.dylib"}  # libfxc re-exports libfxa
        else:
            library_candidates = {library}
        found = set()
        for lib in library_candidates:
            found |= {(use, name) for use, name, _impl in table.get((lib, client), set())}
        # input offsets equal cache offsets only for __TEXT; compare per symbol counts instead
        by_name: dict[str, int] = {}
        for _use, name in uses:
            by_name[name] = by_name.get(name, 0) + 1
        patched: dict[str, int] = {}
        for _use, name in found:
            patched[name] = patched.get(name, 0) + 1
        for name, count in by_name.items():
            if name in ("_fx_missing_fn", "_fx_missing_data"):
                assert name not in patched, "a missing weak import binds to 0 and has nothing to patch"
                continue
            assert patched.get(name) == count, (
                f"{client} -> {library}: {name} bound {count}x, patchable {patched.get(name)}x"
            )


def test_patch_locations_hold_the_export_address(built: tuple[str, Path, Path]) -> None:
    """Every listed use, after the cache is slid, holds the export's address (emulator's own slide)."""
    arch, _root, cache = built
    from emulator import load_cache

    slide = 0x4000 * 37
    lc = load_cache(str(cache), arch, slide)
    data = cache.read_bytes()
    loads = dict(_images(data))
    table = _decode_patch_table(data)
    assert table, "the example has cross-dylib binds"
    for (target, client), uses in table.items():
        for use, _name, impl in uses:
            value = lc.machine.read_u64(loads[client] + slide + use) & 0x00FFFFFFFFFFFFFF
            assert value == loads[target] + slide + impl, (
                f"{client}+{use:#x} does not hold {target}+{impl:#x}"
            )


def test_objc_header_points_at_valid_lists(built: tuple[str, Path, Path]) -> None:
    _arch, _root, cache = built
    data = cache.read_bytes()
    base = struct.unpack_from("<Q", data, 0xE0)[0]
    opts_off, opts_size = struct.unpack_from("<QQ", data, 0x1D0)
    assert opts_off and opts_size == 56, "libobjc is in the cache, so objcOptsOffset must point at a header"
    version, flags, ro, rw, sel, _cls, _proto, rel_base = struct.unpack_from(
        "<2I6Q", data, _file_offset(data, base + opts_off)
    )
    assert version == 1 and flags & 4  # LargeSharedCache
    imgs = _images(data)
    objc_images = [a for p, a in imgs if p in ("/usr/lib/libobjc.A.dylib", "/usr/lib/libfxobjc.dylib")]
    p = _file_offset(data, base + ro)
    count, entsize = struct.unpack_from("<II", data, p)
    assert (count, entsize) == (len(objc_images), 24)
    mhs = []
    for i in range(count):
        field = base + ro + 8 + 24 * i
        mh_off, info_off, meta = struct.unpack_from("<3q", data, p + 8 + 24 * i)
        mhs.append(field + mh_off)
        assert meta == 0
        info = data[_file_offset(data, field + 8 + info_off) :][:8]
        # dyld-1162 (emitObjCHeaderInfo) sets OptimizedByDyld on every well-formed ObjC image
        assert struct.unpack("<II", info)[1] & 8, "the ObjC images are marked optimized by dyld"
    assert mhs == sorted(objc_images), "header_info_ro entries are the ObjC images in ascending address order"
    count_rw, entsize_rw = struct.unpack_from("<II", data, _file_offset(data, base + rw))
    assert (count_rw, entsize_rw) == (count, 8)
    # the selector table holds at least the magic selector: a power-of-two capacity, the
    # occupied count no larger (StringHashTable: version, capacity, occupied, ...)
    _version, capacity, occupied = struct.unpack_from("<3I", data, _file_offset(data, base + sel))
    assert capacity and capacity & (capacity - 1) == 0 and 1 <= occupied <= capacity
    assert data[_file_offset(data, base + rel_base) :][:5] == "\U0001f92f".encode() + b"\0"
