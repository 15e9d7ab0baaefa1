"""The layout dumps beside a cache (``docs/cache-format.md`` §11.3), checked line by line against
the cache itself as the test-side reader (cache_fixtures.RawCache, struct offsets from
dyld_cache_format.h and loader.h) sees it:

- the text map: one ``mapping  EX|RW|RO <size> 0x.. -> 0x..`` line per mapping of every file in
  file order, two newlines, then per image its install name and one ``\\t%16s 0x%08X -> 0x%08X``
  line per segment (not __LINKEDIT), a blank line after each;
- the JSON map: base address, the main UUID, every image with its LC_UUID and segments, keys
  sorted, version "1".
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from cache_fixtures import CacheFactory, RawCache, RawFile

from dyldcache.builder.pipeline import BuildOptions, build_cache

_R, _W, _X = 1, 2, 4
#: the text map's names for a mapping's max protection
_MAP_NAME = {_R | _X: "EX", _R | _W: "RW", _R: "RO"}
_LC_UUID = 0x1B
#: one cache per layout shape: subcaches (contiguous, discontiguous), and a .symbols file
KEYS = ["arm64-multi", "x86_64-multi", "arm64e-ios", "arm64"]


def _size(n: int) -> str:
    # %4lluMB when more than 1 MiB, else %4lluKB
    return f"{n >> 20:4d}MB" if n > (1 << 20) else f"{n >> 10:4d}KB"


def _files(raw: RawCache) -> list[RawFile]:
    """Every file in build order: main, the listed subcaches, then .symbols."""
    return raw.files + ([raw.symbols] if raw.symbols is not None else [])


def _expected_text_map(raw: RawCache) -> str:
    lines = []
    for f in _files(raw):
        for mp in f.mappings:
            name = _MAP_NAME[mp.max_prot]
            lines.append(f"mapping  {name} {_size(mp.size)} 0x{mp.address:X} -> 0x{mp.end:X}")
    lines += ["", ""]
    for path, _addr in raw.images:
        lines.append(path)
        for seg in raw.segments(path):
            if seg.name != "__LINKEDIT":
                lines.append(f"\t{seg.name:>16} 0x{seg.vmaddr:08X} -> 0x{seg.vmaddr + seg.vmsize:08X}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _uuid(raw16: bytes) -> str:
    return str(uuid.UUID(bytes=raw16)).upper()


@pytest.mark.parametrize("key", KEYS)
def test_text_map_lists_every_mapping_and_segment(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    raw = RawCache(built.main)
    text = Path(built.main + ".map").read_text(encoding="utf-8")
    assert text == _expected_text_map(raw)
    assert text.count("mapping  ") == sum(len(f.mappings) for f in _files(raw)) > 1


@pytest.mark.parametrize("key", KEYS)
def test_json_map_describes_the_cache(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    raw = RawCache(built.main)
    text = Path(built.main + ".json").read_text(encoding="utf-8")
    doc = json.loads(text)
    assert list(doc) == sorted(doc), "keys are sorted"
    for img in doc["images"]:
        assert list(img) == sorted(img), "keys are sorted at every level"
        assert all(list(seg) == sorted(seg) for seg in img["segments"])
    assert set(doc) == {"base-address", "disposition", "evicted", "images", "uuid", "version"}
    assert doc["disposition"] == ""  # the device name of Apple's builds; none here
    assert doc["version"] == "1"
    assert doc["base-address"] == f"0x{raw.base:x}"
    assert doc["uuid"] == _uuid(raw.main.field("uuid"))
    assert doc["evicted"] == []
    images = []
    for path, _addr in raw.images:
        (lc_uuid,) = [body[8:24] for cmd, body in raw.load_commands(path) if cmd == _LC_UUID]
        segments = [
            {"name": s.name, "start-vmaddr": f"0x{s.vmaddr:x}", "end-vmaddr": f"0x{s.vmaddr + s.vmsize:x}"}
            for s in raw.segments(path)
            if s.name != "__LINKEDIT"
        ]
        images.append(
            {"path": path, "uuid": _uuid(lc_uuid), "segments": segments, "split-seg-info": "linker"}
        )
    assert doc["images"] == images
    assert len(images) == len(built.result.dylibs) > 1


def test_json_map_names_every_eviction(cache_factory: CacheFactory) -> None:
    built = cache_factory.build("arm64-evictions")
    doc = json.loads(Path(built.main + ".json").read_text(encoding="utf-8"))
    evicted = {e["path"]: e["reason"] for e in doc["evicted"]}
    assert evicted == {e.path: e.reason for e in built.result.evictions}
    assert len(evicted) >= 5
    assert {img["path"] for img in doc["images"]} == {p for p, _ in RawCache(built.main).images}


def test_text_map_of_a_cache_with_mappings_over_one_mib(generated_corpus: Path, tmp_path: Path) -> None:
    """80 generated dylibs: mappings larger than 1 MiB are given in MB, the smaller ones in KB."""
    result = build_cache(
        BuildOptions(arch="arm64", output_dir=str(tmp_path / "out"), root=str(generated_corpus))
    )
    raw = RawCache(result.files[0])
    text = Path(result.map_path).read_text(encoding="utf-8")
    assert text == _expected_text_map(raw)
    sizes = [mp.size for f in _files(raw) for mp in f.mappings]
    assert any(s > 1 << 20 for s in sizes) and any(s <= 1 << 20 for s in sizes), [hex(s) for s in sizes]
    assert "MB 0x" in text and "KB 0x" in text


def test_a_mapping_of_exactly_one_mib_is_given_in_kb() -> None:
    """The size rule at its edge: Apple's map prints ``%4lluMB`` only when the size is more than
    1024*1024 (NewSharedCacheBuilder.cpp, the text map), so exactly 1 MiB is ``1024KB``; the
    expected lines are written out by hand from that printf."""
    from dyldcache.builder.layout import RegionKind, SubCache, SubCacheKind
    from dyldcache.builder.map_file import text_map
    from dyldcache.builder.types import CacheVMAddr

    sub = SubCache(SubCacheKind.MAIN)
    sizes = {
        RegionKind.TEXT: (0x1_8000_0000, (1 << 20) - 0x4000),
        RegionKind.DATA: (0x1_8010_0000, 1 << 20),
        RegionKind.LINKEDIT: (0x1_8020_0000, (1 << 20) + 0x4000),
    }
    for kind, (addr, size) in sizes.items():
        region = sub.region(kind)
        region.vm_addr, region.vm_size = CacheVMAddr(addr), size
    assert text_map([sub], []).splitlines()[:3] == [
        "mapping  EX 1008KB 0x180000000 -> 0x1800FC000",
        "mapping  RW 1024KB 0x180100000 -> 0x180200000",
        "mapping  RO    1MB 0x180200000 -> 0x180304000",
    ]
