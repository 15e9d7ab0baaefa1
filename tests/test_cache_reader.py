"""The cache reader and ``dyldcache info`` / ``list``: the golden cache against its documented facts and
DyldExtractor; a split-cache re-wrap of it (v2 and v1 subcache entries, a .symbols file) built here with
struct at the documented offsets; corrupted copies; the fuzzed cache files; the CLI end to end."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest
from conftest import python_module, run_cli, shared_path
from oracles import read_uleb

from dyldcache.cache.reader import DyldCache
from dyldcache.errors import CacheFormatError

GOLDEN = ("data", "golden", "dyld_shared_cache_arm64-macOS")
UUID = "857BCE1A-017E-3464-9909-D58EE21CF8DC"
# validators.md §4: (address, size, file offset, maxProt, initProt)
MAPPINGS = [
    (0x180000000, 0x18000, 0x0, 5, 5),
    (0x182018000, 0x4000, 0x18000, 3, 3),
    (0x18401C000, 0x14000, 0x1C000, 1, 1),
]
IMAGES = [("/usr/lib/liba-1.0.dylib", 0x180001000), ("/usr/lib/libb-1.0.dylib", 0x180005000)]
# validators.md §2 (dx_exports.py on the golden cache)
EXPORTS = {0: {"_func_in_liba": 0x180004F60, "_what_is_cool": 0x180004F9C}, 1: {"_func_in_libb": 0x180008FA0}}


def golden_path() -> Path:
    return shared_path(*GOLDEN)


@pytest.fixture
def golden() -> DyldCache:
    cache = DyldCache.open(golden_path())
    yield cache  # type: ignore[misc]
    cache.close()


def walk_trie(t: bytes) -> dict[str, int]:
    """An independent trie walker (cache-format.md §4.1): key -> ULEB payload."""

    def uleb(o: int) -> tuple[int, int]:
        return read_uleb(t, o)

    out: dict[str, int] = {}

    def node(off: int, prefix: bytes) -> None:
        size, p = uleb(off)
        if size:
            out[prefix.decode()] = uleb(p)[0]
        p += size
        count = t[p]
        p += 1
        for _ in range(count):
            end = t.index(b"\0", p)
            label = t[p:end]
            child, p = uleb(end + 1)
            node(child, prefix + label)

    node(0, b"")
    return out


# ---------------------------------------------------------------------------------------------
# the golden cache


def test_golden_facts(golden: DyldCache) -> None:
    assert golden.arch == "arm64"
    assert golden.platform == 1
    assert golden.uuid.hex() == "857bce1a017e34649909d58ee21cf8dc"
    assert golden.base_address == 0x180000000
    assert golden.header.mapping_offset == 0x140
    assert len(golden.files) == 1 and golden.subcaches == [] and golden.symbols_file is None
    maps = golden.main.mappings
    assert [(m.address, m.size, m.file_offset, m.max_prot, m.init_prot) for m in maps] == MAPPINGS
    assert [m.name for m in maps] == ["__TEXT", "__DATA", "__LINKEDIT"]
    assert [(m.slide_info_offset, m.slide_info_size) for m in maps] == [(0, 0), (0x1C000, 0x4000), (0, 0)]
    assert [(i.path, i.address) for i in golden.images] == IMAGES
    assert [(t.path, t.load_address) for t in golden.image_text_infos] == IMAGES
    assert (golden.header.code_signature_offset, golden.header.code_signature_size) == (0x30000, 0x4000)
    assert golden.local_symbols() is None
    version, ptrs = golden.main.slide_info(1)  # type: ignore[misc]
    assert version == 2 and ptrs.size == 0  # all four pages NO_REBASE
    assert golden.main.slide_info(0) is None


def test_golden_addresses(golden: DyldCache) -> None:
    f, off = golden.address_to_file(0x180001000)
    assert (f is golden.main, off) == (True, 0x1000)
    assert golden.address_to_file(0x18401C010)[1] == 0x1C010
    assert bytes(golden.read(0x180001000, 4)) == struct.pack("<I", 0xFEEDFACF)
    with pytest.raises(CacheFormatError, match="not in any mapping"):
        golden.address_to_file(0x181000000)
    with pytest.raises(CacheFormatError, match="inside one mapping"):
        golden.read(0x180017FF0, 0x20)  # runs past the end of __TEXT


def test_golden_images_as_macho(golden: DyldCache) -> None:
    for index, (path, address) in enumerate(IMAGES):
        image = golden.image_macho(index)
        assert image.install_name == path
        assert image.base_address == address
        assert image.uuid == golden.image_text_infos[index].uuid
        assert {e.name: address + e.address for e in image.exports} == EXPORTS[index]
        del image


def test_golden_dylibs_trie(golden: DyldCache) -> None:
    ours = golden.dylibs_trie()
    h = golden.header
    raw = bytes(golden.read(h.dylibs_trie_addr, h.dylibs_trie_size))
    assert ours == walk_trie(raw)
    assert ours["/usr/lib/liba-1.0.dylib"] == 0 and ours["/usr/lib/libb-1.0.dylib"] == 1


def test_golden_matches_dyldextractor(golden: DyldCache) -> None:
    python_module("DyldExtractor")
    from DyldExtractor.dyld.dyld_context import DyldContext
    from DyldExtractor.macho.macho_context import MachOContext
    from DyldExtractor.macho.macho_structs import LoadCommands

    with golden_path().open("rb") as f:
        dx = DyldContext(f)
        assert [(m.address, m.size, m.fileOffset, m.maxProt, m.initProt) for m, _ in dx.mappings] == [
            (m.address, m.size, m.file_offset, m.max_prot, m.init_prot) for m in golden.main.mappings
        ]
        theirs = [
            (dx.readString(i.pathFileOffset)[:-1].decode(), i.address, i.modTime, i.inode) for i in dx.images
        ]
        assert theirs == [(i.path, i.address, i.mod_time, i.inode) for i in golden.images]
        for img in golden.images:
            off, _ctx = dx.convertAddr(img.address)
            assert golden.address_to_file(img.address)[1] == off
            mc = MachOContext(f, off)
            uuid_cmd = mc.getLoadCommand((LoadCommands.LC_UUID,))
            assert bytes(uuid_cmd.uuid) == golden.image_macho(img.index).uuid


# ---------------------------------------------------------------------------------------------
# a split cache made from the golden one


TEXT = (*MAPPINGS[0], 0, 0, 0)  # + slide info offset, size, flags
DATA = (*MAPPINGS[1], 0x1C000, 0x4000, 0)
LINKEDIT = (*MAPPINGS[2], 0, 0, 0)
SUB_UUID = bytes(range(0x20, 0x30))
SYM_UUID = bytes(range(0x40, 0x50))
MAIN_UUID = bytes(range(0x60, 0x70))


def write_header(
    buf: bytearray,
    size: int,
    maps: list[tuple[int, ...]],
    uuid: bytes,
    *,
    subcaches: list[tuple[bytes, int, bytes]] = (),
    images: bool = False,  # type: ignore[assignment]
    symbol_uuid: bytes = bytes(16),
) -> None:
    """A header of ``size`` bytes at the offsets of cache-format.md §1.1, arrays laid out as in §2.3."""
    buf[0x10:0x1000] = bytes(0x1000 - 0x10)
    struct.pack_into("<II", buf, 0x10, size, len(maps))
    struct.pack_into("<QQ", buf, 0x28, 0x30000, 0x4000)  # golden's code signature
    buf[0x58:0x68] = uuid
    struct.pack_into("<Q", buf, 0x68, 2)  # universal
    struct.pack_into("<I", buf, 0xD8, 1)  # macOS
    struct.pack_into("<3Q", buf, 0xE0, maps[0][0], 0x100000000, 0)
    o = size
    for i, (a, s, f, mx, ip, *_rest) in enumerate(maps):
        struct.pack_into("<3Q2I", buf, o + 32 * i, a, s, f, mx, ip)
    o += 56 * len(maps)
    struct.pack_into("<II", buf, 0x138, o, len(maps))
    for i, (a, s, f, mx, ip, so, ss, fl) in enumerate(maps):
        struct.pack_into("<6Q2I", buf, o + 56 * i, a, s, f, so, ss, fl, mx, ip)
    o += 56 * len(maps)
    if size > 0x188:
        entry = 56 if size > 0x1C8 else 24
        struct.pack_into("<II", buf, 0x188, o, len(subcaches))
        for i, (u, vm_offset, suffix) in enumerate(subcaches):
            struct.pack_into("<16sQ", buf, o + entry * i, u, vm_offset)
            if entry == 56:
                buf[o + 56 * i + 24 : o + 56 * i + 56] = suffix.ljust(32, b"\0")
        o += entry * len(subcaches)
    if size > 0x190:
        buf[0x190:0x1A0] = symbol_uuid
    if size > 0x1C8:
        struct.pack_into("<I", buf, 0x1C8, 1)
    if images:
        info_at, o = o, o + 32 * len(IMAGES)
        text_at, o = o, o + 32 * len(IMAGES)
        struct.pack_into("<II", buf, 0x1C0, info_at, len(IMAGES))
        struct.pack_into("<QQ", buf, 0x88, text_at, len(IMAGES))
        for i, (path, address) in enumerate(IMAGES):
            struct.pack_into("<3QII", buf, info_at + 32 * i, address, 0, 0, o, 0)
            struct.pack_into("<16sQII", buf, text_at + 32 * i, bytes([i]) * 16, address, 0x4000, o)
            buf[o : o + len(path) + 1] = path.encode() + b"\0"
            o += len(path) + 1
        # keep the golden dylibs trie (header fields live below 0x138)
        struct.pack_into("<QQ", buf, 0x108, 0x1840280F0, 0x44)


def make_split(tmp: Path, *, v2: bool = True, symbols: bool = False) -> Path:
    src = golden_path().read_bytes()
    main_path = tmp / "dyld_shared_cache_arm64"
    suffix = ".01" if v2 else ".1"
    size = 0x200 if v2 else 0x1C8
    main = bytearray(src)
    write_header(
        main,
        size,
        [TEXT],
        MAIN_UUID,
        subcaches=[(SUB_UUID, 0x2018000, suffix.encode())],
        images=True,
        symbol_uuid=SYM_UUID if symbols else bytes(16),
    )
    main[0x18000:0x30000] = bytes(0x18000)  # DATA and LINKEDIT now live in the subcache
    sub = bytearray(src)
    write_header(sub, size, [DATA, LINKEDIT], SUB_UUID)
    sub[0x1000:0x18000] = bytes(0x17000)  # TEXT lives in the main file
    main_path.write_bytes(main)
    Path(str(main_path) + suffix).write_bytes(sub)
    if symbols:
        Path(str(main_path) + ".symbols").write_bytes(make_symbols())
    return main_path


LOCALS = [(0, "_helper_a", 0x180004000), (0, "_static_a", 0x180004010), (1, "_helper_b", 0x180008000)]


def make_symbols() -> bytes:
    """A .symbols file: one R-X mapping for its header, then the local symbols (§2.6) at 0x4000."""
    buf = bytearray(0x8000)
    buf[0:16] = b"dyld_v1   arm64\0"
    write_header(buf, 0x200, [(0x184030000, 0x4000, 0, 5, 5, 0, 0, 0)], SYM_UUID)
    struct.pack_into("<QQ", buf, 0x28, 0, 0)  # unsigned
    strings = b"\0" + b"".join(name.encode() + b"\0" for _, name, _ in LOCALS)
    entries_at, nlist_at = 24, 64  # info, 2 entries of 16 bytes, nlist 16-aligned
    strings_at = nlist_at + 16 * len(LOCALS)
    base = 0x4000
    struct.pack_into("<6I", buf, base, nlist_at, len(LOCALS), strings_at, len(strings), entries_at, 2)
    struct.pack_into("<QII", buf, base + entries_at, 0x1000, 0, 2)  # liba: VM offset 0x1000, 2 locals
    struct.pack_into("<QII", buf, base + entries_at + 16, 0x5000, 2, 1)
    strx = 1
    for i, (_img, name, value) in enumerate(LOCALS):
        struct.pack_into("<IBBHQ", buf, base + nlist_at + 16 * i, strx, 0x0E, 1, 0, value)
        strx += len(name) + 1
    buf[base + strings_at : base + strings_at + len(strings)] = strings
    struct.pack_into("<QQ", buf, 0x48, base, strings_at + len(strings))
    return bytes(buf)


@pytest.mark.parametrize("v2", [True, False])
def test_split_cache(tmp_path: Path, v2: bool) -> None:
    path = make_split(tmp_path, v2=v2)
    with DyldCache.open(path) as cache:
        suffix = ".01" if v2 else ".1"
        assert [(s.suffix, s.uuid, s.cache_vm_offset) for s in cache.subcaches] == [
            (suffix, SUB_UUID, 0x2018000)
        ]
        assert [f.path for f in cache.files] == [str(path), str(path) + suffix]
        assert [m.address for f in cache.files for m in f.mappings] == [m[0] for m in MAPPINGS]
        assert [(i.path, i.address) for i in cache.images] == IMAGES
        assert cache.image_text_infos[1].uuid == b"\x01" * 16
        assert cache.address_to_file(0x182018008)[0].path == str(path) + suffix
        # LINKEDIT (exports) sits in the subcache: offsets there are relative to that file
        for index in (0, 1):
            image = cache.image_macho(index)
            assert {e.name: IMAGES[index][1] + e.address for e in image.exports} == EXPORTS[index]
            del image
        assert cache.dylibs_trie()["/usr/lib/libb-1.0.dylib"] == 1
        assert cache.files[1].slide_info(0)[0] == 2  # type: ignore[index]


def test_split_cache_matches_dyldextractor(tmp_path: Path) -> None:
    python_module("DyldExtractor")
    from DyldExtractor.dyld.dyld_context import DyldContext

    path = make_split(tmp_path, symbols=True)
    with DyldCache.open(path) as cache, path.open("rb") as f:
        dx = DyldContext(f)
        extra = dx.addSubCaches(path)
        try:
            ours = [
                (m.address, m.size, m.file_offset)
                for x in [*cache.files, cache.symbols_file]
                for m in x.mappings
            ]
            assert [(m.address, m.size, m.fileOffset) for m, _ in dx.mappings] == ours
            assert [i.address for i in dx.images] == [i.address for i in cache.images]
            assert bytes(dx.getSymbolsCache().header.uuid) == cache.symbols_file.uuid  # type: ignore[union-attr]
        finally:
            for x in extra:
                x.close()


def test_local_symbols(tmp_path: Path) -> None:
    path = make_split(tmp_path, symbols=True)
    with DyldCache.open(path) as cache:
        assert cache.symbols_file is not None and cache.symbols_file.uuid == SYM_UUID
        assert len(cache.files) == 2  # the .symbols file is not mapped
        ls = cache.local_symbols()
        assert ls is not None and ls.vm_offsets
        assert ls.entries == [(0x1000, 0, 2), (0x5000, 2, 1)]
        got = [(ls.name(int(n["n_strx"])), int(n["n_value"])) for n in ls.nlist]
        assert got == [(name, value) for _, name, value in LOCALS]


def test_missing_and_mismatched_members(tmp_path: Path) -> None:
    path = make_split(tmp_path, symbols=True)
    (tmp_path / "dyld_shared_cache_arm64.symbols").unlink()
    with pytest.raises(CacheFormatError, match=r"local symbols file .*missing") as info:
        DyldCache.open(path)
    assert info.value.offset == 0x190
    Path(str(path) + ".symbols").write_bytes(make_symbols().replace(SYM_UUID, bytes(16)))
    with pytest.raises(CacheFormatError, match="has UUID 00000000"):
        DyldCache.open(path)
    os.unlink(str(path) + ".01")
    with pytest.raises(CacheFormatError, match=r"subcache file .*\.01 is missing") as info:
        DyldCache.open(path)
    assert info.value.path == str(path)
    (tmp_path / "again").mkdir()
    path = make_split(tmp_path / "again", v2=True)
    sub = bytearray(Path(str(path) + ".01").read_bytes())
    sub[0x58] ^= 1
    Path(str(path) + ".01").write_bytes(sub)
    with pytest.raises(CacheFormatError, match=r"subcache .* has UUID"):
        DyldCache.open(path)


# ---------------------------------------------------------------------------------------------
# corrupted copies of the golden cache


def corrupt(tmp: Path, edits: dict[int, bytes], truncate: int | None = None) -> Path:
    data = bytearray(golden_path().read_bytes())
    for off, raw in edits.items():
        data[off : off + len(raw)] = raw
    if truncate is not None:
        del data[truncate:]
    out = tmp / "dyld_shared_cache_arm64"
    out.write_bytes(data)
    return out


@pytest.mark.parametrize(
    ("edits", "truncate", "offset", "words"),
    [
        ({}, 0x100, 0, "header (0x140 bytes) extends past"),
        ({}, 0x20000, 0x140 + 2 * 32, "mapping 2"),
        ({0x14: struct.pack("<I", 0)}, None, 0x14, "mapping count 0"),
        ({0x14: struct.pack("<I", 1000)}, None, 0x14, "mapping count 1000"),
        ({0x140 + 32 + 16: struct.pack("<Q", 1 << 40)}, None, 0x1E8 + 56, "differs"),  # plain != with-slide
        (
            {0x1E8 + 56 + 16: struct.pack("<Q", 1 << 40), 0x140 + 32 + 16: struct.pack("<Q", 1 << 40)},
            None,
            0x140 + 32,
            "extends past the end",
        ),
        ({0x13C: struct.pack("<I", 2)}, None, 0x13C, "2 mappings with slide info"),
        ({0x1E8 + 56 + 24: struct.pack("<Q", 0x40000)}, None, 0x160, "slide info of mapping 1"),
        ({0x28: struct.pack("<Q", 0x3F000)}, None, 0x28, "code signature"),
        ({0x10: struct.pack("<I", 0x10)}, None, 0x10, "smaller than any header"),
        ({0: b"dyld_v2 "}, None, 0, "not a dyld shared cache"),
    ],
)
def test_corrupted_headers(
    tmp_path: Path, edits: dict[int, bytes], truncate: int | None, offset: int, words: str
) -> None:
    path = corrupt(tmp_path, edits, truncate)
    with pytest.raises(CacheFormatError, match=re.escape(words)) as info:
        DyldCache.open(path)
    assert info.value.offset == offset
    assert info.value.path == str(path)


def test_corrupted_tables(tmp_path: Path) -> None:
    path = corrupt(tmp_path, {0x1C: struct.pack("<I", 0x10000000)})  # imagesCountOld
    with DyldCache.open(path) as cache, pytest.raises(CacheFormatError, match="image infos") as info:
        _ = cache.images
    assert info.value.offset == 0x18
    path = corrupt(tmp_path, {0x290 + 24: struct.pack("<I", 0x7FFFFFF)})  # image 0 path offset
    with DyldCache.open(path) as cache, pytest.raises(CacheFormatError, match="path of image 0"):
        _ = cache.images
    path = corrupt(tmp_path, {0x1C000 + 12: struct.pack("<I", 5)})  # slide info page_starts_count
    with DyldCache.open(path) as cache, pytest.raises(CacheFormatError, match="5 page starts") as info:
        cache.main.slide_info(1)
    assert info.value.offset == 0x1C000 + 12
    path = corrupt(tmp_path, {0x290: struct.pack("<Q", 0x190000000)})  # image 0 outside every mapping
    with DyldCache.open(path) as cache, pytest.raises(CacheFormatError, match="not in any mapping"):
        cache.image_macho(0)


@pytest.mark.parametrize("name", ["dyldcache_read4", "dyldcache_read8"])
def test_fuzzed_files(name: str) -> None:
    path = shared_path("data", "fuzzed", name)
    with pytest.raises(CacheFormatError) as info:
        DyldCache.open(path)
    assert info.value.path == str(path)


# ---------------------------------------------------------------------------------------------
# the CLI


def test_cli_info_json() -> None:
    path = golden_path()
    r = run_cli("info", str(path), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["uuid"] == UUID and d["arch"] == "arm64" and d["platform"] == 1
    assert (d["cache_type"], d["header_size"], d["format_version"], d["locally_built_cache"]) == (
        1,
        0x140,
        10,
        True,
    )
    assert (d["image_count"], d["base_address"]) == (2, 0x180000000)
    assert d["shared_region_size"] == 0x100000000 and d["max_slide"] == 0x7FFE8000  # header bytes 0xE8 / 0xF0
    (f,) = d["files"]
    assert [
        (m["address"], m["size"], m["file_offset"], m["max_prot"], m["init_prot"]) for m in f["mappings"]
    ] == MAPPINGS
    assert [m["name"] for m in f["mappings"]] == ["__TEXT", "__DATA", "__LINKEDIT"]
    assert f["mappings"][1]["slide_info"] == {"version": 2, "offset": 0x1C000, "size": 0x4000}
    assert f["code_signature"] == {"offset": 0x30000, "size": 0x4000}
    assert d["subcaches"] == [] and d["local_symbols"] is None
    assert d["dylibs_trie"] == {"address": 0x1840280F0, "size": 0x44, "entries": 3}


def test_cli_info_text_and_split(tmp_path: Path) -> None:
    r = run_cli("info", str(golden_path()))
    assert r.returncode == 0 and UUID in r.stdout and "slide info v2" in r.stdout
    path = make_split(tmp_path, symbols=True)
    d = json.loads(run_cli("info", str(path), "--json").stdout)
    assert [s["suffix"] for s in d["subcaches"]] == [".01"]
    assert d["subcaches"][0]["uuid"] == "20212223-2425-2627-2829-2A2B2C2D2E2F"
    assert d["cache_type"] == 2 and d["cache_sub_type"] == 1
    assert d["local_symbols"]["nlist_count"] == 3 and d["local_symbols"]["vm_offsets"] is True
    assert [m["name"] for f in d["files"] for m in f["mappings"]] == ["__TEXT", "__DATA", "__LINKEDIT"]


def test_cli_list() -> None:
    path = str(golden_path())
    r = run_cli("list", path)
    assert r.returncode == 0 and r.stdout.splitlines() == [p for p, _ in IMAGES]
    r = run_cli("list", path, "--vmaddr", "--uuid")
    assert r.stdout.splitlines() == [
        "0x180001000 <CCBF29D4-5569-3A15-9231-4E14D41A542A> /usr/lib/liba-1.0.dylib",
        "0x180005000 <60D2F3D6-44A2-3910-8750-3A56A3D8FF07> /usr/lib/libb-1.0.dylib",
    ]
    listed = json.loads(run_cli("list", path, "--json").stdout)
    assert [(i["path"], i["address"]) for i in listed] == IMAGES
    with DyldCache.open(path) as cache:  # the UUIDs are the images' own LC_UUIDs
        assert [i["uuid"].replace("-", "").lower() for i in listed] == [
            cache.image_macho(k).uuid.hex()
            for k in range(2)  # type: ignore[union-attr]
        ]


@pytest.mark.parametrize("name", ["dyldcache_read4", "dyldcache_read8", "mach0"])
@pytest.mark.parametrize("command", ["info", "list"])
def test_cli_bad_files(name: str, command: str) -> None:
    path = shared_path("data", "fuzzed", name)
    r = run_cli(command, str(path))
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dyldcache {command}: error: {path}")
    assert "Traceback" not in r.stderr
