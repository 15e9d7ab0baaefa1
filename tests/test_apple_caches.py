"""Caches written by Apple's builder (../shared/data/real/apple-caches and the golden cache): the cache
reader, ``info``, ``list`` and ``verify`` must agree with each other and with readers that are not ours
(DyldExtractor, and the raw decoders of the tests: cache_fixtures.RawCache, the emulator's slide-info
walker, the trie walker of test_cache_reader)."""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import pytest
from cache_fixtures import RawCache
from conftest import python_module, run_cli, shared_path
from emulator import load_cache
from test_cache_reader import walk_trie

from dyldcache.cache.reader import DyldCache

APPLE_CACHES = [
    ("data", "golden", "dyld_shared_cache_arm64-macOS"),
    ("data", "real", "apple-caches", "dyld_shared_cache_arm64-macOS-1042.1"),
    ("data", "real", "apple-caches", "dyld_shared_cache_arm64-macOS-objc"),
    ("data", "real", "apple-caches", "dyld_shared_cache_arm64e-macOS-objc"),
]


@pytest.fixture(params=APPLE_CACHES, ids=lambda p: p[-1])
def apple_cache(request: pytest.FixtureRequest) -> Path:
    return shared_path(*request.param)


def _dx_view(path: Path) -> tuple[list[tuple[int, ...]], list[tuple[str, int, int, int]], dict[str, bytes]]:
    """DyldExtractor's mappings, images and per-image LC_UUID."""
    python_module("DyldExtractor")
    from DyldExtractor.dyld.dyld_context import DyldContext
    from DyldExtractor.macho.macho_context import MachOContext
    from DyldExtractor.macho.macho_structs import LoadCommands

    with path.open("rb") as f:
        dx = DyldContext(f)
        mappings = [(m.address, m.size, m.fileOffset, m.maxProt, m.initProt) for m, _ in dx.mappings]
        images = [
            (dx.readString(i.pathFileOffset)[:-1].decode(), i.address, i.modTime, i.inode) for i in dx.images
        ]
        uuids = {}
        for name, address, _m, _i in images:
            off, _ctx = dx.convertAddr(address)
            uuid_cmd = MachOContext(f, off).getLoadCommand((LoadCommands.LC_UUID,))
            uuids[name] = bytes(uuid_cmd.uuid)
    return mappings, images, uuids


def test_reader_agrees_with_dyldextractor(apple_cache: Path) -> None:
    mappings, images, uuids = _dx_view(apple_cache)
    with DyldCache.open(apple_cache) as cache:
        assert [(m.address, m.size, m.file_offset, m.max_prot, m.init_prot) for m in cache.main.mappings] == (
            mappings
        )
        assert [(i.path, i.address, i.mod_time, i.inode) for i in cache.images] == images
        for img in cache.images:
            macho = cache.image_macho(img.index)
            assert macho.install_name == img.path
            assert macho.uuid == uuids[img.path]
            del macho


def test_info_and_list_agree_with_independent_readers(apple_cache: Path) -> None:
    raw = RawCache(apple_cache)
    mappings, images, uuids = _dx_view(apple_cache)
    info = run_cli("info", "--json", str(apple_cache))
    assert info.returncode == 0, info.stderr
    d = json.loads(info.stdout)
    assert d["image_count"] == len(images)
    assert d["uuid"].replace("-", "").lower() == raw.main.data[0x58:0x68].hex()
    got = [
        (m["address"], m["size"], m["file_offset"], m["max_prot"], m["init_prot"])
        for m in d["files"][0]["mappings"]
    ]
    assert got == mappings
    # slide info: offset, size and version word where the mapping_and_slide_info array says
    for m, r in zip(d["files"][0]["mappings"], raw.main.mappings, strict=True):
        if r.slide_info_size:
            version = struct.unpack_from("<I", raw.main.data, r.slide_info_offset)[0]
            assert m["slide_info"] == {
                "version": version,
                "offset": r.slide_info_offset,
                "size": r.slide_info_size,
            }
        else:
            assert m["slide_info"] is None
    listing = run_cli("list", "--json", str(apple_cache))
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert [(r["path"], r["address"]) for r in rows] == [(p, a) for p, a, _m, _i in images]
    assert [r["uuid"].replace("-", "").lower() for r in rows] == [uuids[p].hex() for p, *_ in images]


def test_exports_agree_with_an_independent_trie_walk(apple_cache: Path) -> None:
    raw = RawCache(apple_cache)
    checked = 0
    with DyldCache.open(apple_cache) as cache:
        for img in cache.images:
            cmds = raw.load_commands(img.path)
            trie = None
            for cmd, body in cmds:
                if cmd in (0x22, 0x80000022):  # LC_DYLD_INFO(_ONLY): export_off, export_size
                    trie = struct.unpack_from("<II", body, 40)
                elif cmd == 0x80000033:  # LC_DYLD_EXPORTS_TRIE
                    trie = struct.unpack_from("<II", body, 8)
            if trie is None or trie[1] == 0:
                continue
            le = next(s for s in raw.segments(img.path) if s.name == "__LINKEDIT")
            data = raw.read(le.vmaddr + trie[0] - le.fileoff, trie[1])
            expected = walk_trie(data)
            macho = cache.image_macho(img.index)
            ours = {e.name: e.flags for e in macho.exports}
            assert ours == expected, img.path
            checked += len(ours)
            del macho
    assert checked > 0


def test_slide_info_matches_an_independent_slider(apple_cache: Path) -> None:
    """Every pointer the reader decodes from slide info holds, after the emulator's own slide-info walk
    at a random slide, the reader's target plus the slide."""
    slide = random.Random(apple_cache.name).randrange(1, 0x1000) * 0x4000
    with DyldCache.open(apple_cache) as cache:
        arch = cache.arch
        decoded = []
        for i in range(len(cache.main.mappings)):
            si = cache.main.slide_info(i)
            if si is not None:
                decoded.append((cache.main.mappings[i].address, si[1]))
    if not decoded:  # the dyld-1042 cache: nothing slides, and the raw header agrees
        assert all(m.slide_info_size == 0 for m in RawCache(apple_cache).main.mappings)
        return
    loaded = load_cache(str(apple_cache), arch, slide)
    total = 0
    for mapping_address, ptrs in decoded:
        for p in ptrs:
            value = loaded.machine.read_u64(mapping_address + int(p["offset"]) + slide)
            if p["auth"]:
                # an authenticated pointer holds the plain target once slid (no keys in the emulator)
                assert value & 0xFFFFFFFFFFFF == int(p["target"]) + slide
            else:
                assert value == (int(p["target"]) + slide) | (int(p["high8"]) << 56)
            total += 1
    if total == 0:
        # no pointer to slide (the golden cache's pages are all NO_REBASE): the independent walk
        # must not have changed a byte either
        raw = RawCache(apple_cache)
        for m in raw.main.mappings:
            if m.slide_info_size:
                got = loaded.machine.read(m.address + slide, m.size)
                assert got == raw.main.data[m.file_offset : m.file_offset + m.size]


def test_verify_passes_and_catches_a_changed_text_byte(apple_cache: Path, tmp_path: Path) -> None:
    ok = run_cli("verify", str(apple_cache))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    raw = RawCache(apple_cache)
    if not raw.main.field("codeSignatureSize"):
        pytest.skip("unsigned cache: no page hash to check")
    copy = tmp_path / apple_cache.name
    shutil.copyfile(apple_cache, copy)
    data = bytearray(copy.read_bytes())
    text = raw.main.mappings[0]
    at = text.file_offset + text.size - 0x100  # inside __TEXT, past the header
    data[at] ^= 0x40
    copy.write_bytes(bytes(data))
    bad = run_cli("verify", str(copy))
    assert bad.returncode == 1
    assert "hash" in (bad.stdout + bad.stderr).lower()
