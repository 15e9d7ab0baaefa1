"""Single-file caches for arm64 and x86_64 (issue 3): ``dyldcache build`` end to end.

Oracles: DyldExtractor (tests/dyldextractor_gate.py) extracts every image; llvm-objdump-22 reads
the extracted dylibs and the inputs; the unicorn emulator (tests/emulator.py, its own slide-info
code) runs every function of expected.json at a random slide against the native gcc build
(tests/fixtures/native_harness.py); LIEF and the raw bytes of the input dylibs give what every
slid pointer must hold; header fields are checked against docs/cache-format.md §1, §2, §7 read
with ``struct`` (tests/cache_fixtures.RawCache), never against dyldcache's own reader.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from cache_fixtures import (
    CACHES,
    CYCLE_DYLIBS,
    EVICTION_CASES,
    GHOST_DYLIB,
    CacheFactory,
    InputImages,
    RawCache,
    RawFile,
    emulate_calls,
    fixture_install_names,
    input_segments,
    objdump_dylib,
    slide_of,
    snapshot,
)
from conftest import LLVM_OBJDUMP, python_module, run_cli, tool
from objc_checks import protocol_table_words
from oracles import read_uleb, trie_lookup

from dyldcache.cache.verify import verify_cache
from dyldcache.examples import OBJ_DIR, TBD_DIR
from dyldcache.link.linker import LinkInput, LinkOptions, link
from dyldcache.macho.file import open_macho
from dyldcache.macho.tbd import format_tbd

#: caches built from the example dylibs (and friends) that DyldExtractor can read in full
SINGLE = [
    "arm64",
    "x86_64",
    "arm64-opcodes",
    "x86_64-opcodes",
    "arm64-evictions",
    "x86_64-evictions",
    "x86_64-v1",
    "x86_64-v1-opcodes",
    "x86_64-lazy",
    "arm64-lazy",
]
#: the seven example dylibs, by install name
EXAMPLES = sorted(fixture_install_names().values())


def placed(key: str) -> list[str]:
    """The install names the cache ``key`` must hold: the examples, and in the evictions root the
    two dylibs that re-export each other too."""
    return sorted([*EXAMPLES, *(CYCLE_DYLIBS if CACHES[key].root == "evictions" else ())])


GiB = 1 << 30


def _need_native() -> None:
    """The emulator and the native oracle (gcc, objcopy)."""
    python_module("unicorn")
    tool("gcc")
    tool("objcopy")


# ---------------------------------------------------------------------------------------------
# DyldExtractor and llvm-objdump


@pytest.mark.parametrize("key", SINGLE)
def test_dyldextractor_extracts_every_image(cache_factory: CacheFactory, key: str) -> None:
    python_module("DyldExtractor")
    built = cache_factory.build(key)
    gate = cache_factory.gate(key)
    raw = RawCache(built.main)
    assert raw.subcaches == [] and raw.symbols is None, "a single-file cache"
    assert list(gate.images) == [p for p, _ in raw.images] == list(built.result.dylibs)
    assert sorted(gate.images) == placed(key)
    assert gate.failures == {}
    for name in placed(key):
        assert gate.extracted[name].stat().st_size > 0, name


@pytest.mark.parametrize("key", SINGLE)
def test_extracted_dylibs_read_by_llvm_objdump(cache_factory: CacheFactory, key: str) -> None:
    python_module("DyldExtractor")
    objdump = tool(LLVM_OBJDUMP)
    built = cache_factory.build(key)
    gate = cache_factory.gate(key)
    raw = RawCache(built.main)
    for name in placed(key):
        out = objdump_dylib(objdump, gate.extracted[name])
        assert out.returncode == 0 and out.stderr == "", (name, out.stderr)
        assert "LC_ID_DYLIB" in out.stdout and "Exports trie:" in out.stdout, name
        inp = objdump_dylib(objdump, built.input_path(name))
        assert inp.returncode == 0 and inp.stderr == "", (name, inp.stderr)
        assert inp.exports, f"{name}: the input exports nothing?"
        assert sorted(out.exports) == sorted(inp.exports), name
        # every export sits where its input address moved to: input offset + its segment's
        # slide (§4.3); llvm-objdump prints addresses from the extracted image's own vmaddrs
        seg_in, seg_cached = input_segments(built.input_path(name)), raw.segments(name)
        for sym, addr in inp.exports.items():
            if addr is not None:
                assert out.exports[sym] == addr + slide_of(seg_in, seg_cached, addr), (name, sym)


def test_the_gate_can_fail(cache_factory: CacheFactory, tmp_path: Path) -> None:
    """DyldExtractor reports a broken cache: a slide info version it does not know."""
    python_module("DyldExtractor")
    from dyldextractor_gate import run_gate

    built = cache_factory.build("arm64")
    copy = tmp_path / "bad"
    shutil.copytree(built.outdir, copy)
    main = copy / os.path.basename(built.main)
    data = bytearray(main.read_bytes())
    mp = next(m for m in RawFile(main).mappings if m.slide_info_size)
    struct.pack_into("<I", data, mp.slide_info_offset, 7)
    main.write_bytes(bytes(data))
    assert run_gate(main).failures


# ---------------------------------------------------------------------------------------------
# emulation


@pytest.mark.parametrize("key", SINGLE)
def test_emulation_matches_native_results(cache_factory: CacheFactory, key: str) -> None:
    _need_native()
    built = cache_factory.build(key)
    run = emulate_calls(built.main, built.spec.arch, cache_factory.random_slide(built.main))
    assert run.slide and run.slide % 0x4000 == 0
    assert run.initializers["/usr/lib/libfxd.dylib"] >= 1, "libd's initializer was not found"
    assert run.calls >= 40
    assert run.mismatches == {}, f"slide {run.slide:#x}"


def _decode_v2(f: RawFile) -> dict[int, int]:
    """Every pointer of every v2 chain of ``f``: location -> raw value (§2.10)."""
    out: dict[int, int] = {}
    for mp in f.mappings:
        if not mp.slide_info_size:
            continue
        so = mp.slide_info_offset
        ver, page_size, starts_off, starts_count, _extras_off, extras_count, mask, _add = struct.unpack_from(
            "<6I2Q", f.data, so
        )
        assert ver == 2 and extras_count == 0
        shift = (mask & -mask).bit_length() - 1 - 2
        for p in range(starts_count):
            start = struct.unpack_from("<H", f.data, so + starts_off + 2 * p)[0]
            if start == 0x4000:  # DYLD_CACHE_SLIDE_PAGE_ATTR_NO_REBASE
                continue
            assert not start & 0x8000, "page extras are not expected"
            off = start * 4
            while True:
                assert off + 8 <= page_size, f"{f.path}: chain leaves page {p} of {mp.address:#x}"
                loc = mp.address + p * page_size + off
                raw = struct.unpack_from("<Q", f.data, mp.file_offset + p * page_size + off)[0]
                assert loc not in out
                out[loc] = raw
                delta = (raw & mask) >> shift
                if not delta:
                    break
                off += delta
    return out


@pytest.mark.parametrize("key", SINGLE)
def test_slid_pointers_hold_the_input_fixups(cache_factory: CacheFactory, key: str) -> None:
    """Every rebase and bind of every input dylib (LIEF + raw input bytes) is a slide-info
    pointer of the cache, and after the emulator's own slide holds the moved target."""
    python_module("lief")
    python_module("unicorn")
    import emulator

    built = cache_factory.build(key)
    raw = RawCache(built.main)
    images = InputImages(built, raw)
    expected = {e.location: e for name in placed(key) for e in images.expected_pointers(name)}
    assert len(expected) > 6144, "fxa_big_table alone has 6144 pointers"
    chains = {loc: v for f in raw.files for loc, v in _decode_v2(f).items()}
    from_inputs = {loc for loc, e in expected.items() if e.target}
    assert from_inputs <= set(chains)
    # the only other pointers: those of the canonical protocols (tests/objc_checks.py checks them)
    assert set(chains) - from_inputs <= protocol_table_words(built.main)
    slide = cache_factory.random_slide(built.main)
    loaded = emulator.load_cache(built.main, built.spec.arch, slide)
    rewritten = {loc for name in placed(key) for loc in images.objc_rewritten(name)}
    wrong = []
    for e in expected.values():
        if e.location in rewritten:  # ObjC selectors, protocols: tests/test_objc_*.py
            continue
        want = (e.target + slide) | (e.high8 << 56) if e.target else 0
        got = loaded.machine.read_u64(e.location + slide)
        if got != want:
            wrong.append(f"{e.what}: {got:#x}, expected {want:#x}")
    assert wrong == [], f"slide {slide:#x}"


# ---------------------------------------------------------------------------------------------
# evictions


@pytest.mark.parametrize("arch", ["arm64", "x86_64"])
def test_evictions_are_reported_and_the_rest_builds(cache_factory: CacheFactory, arch: str) -> None:
    built = cache_factory.build(f"{arch}-evictions")
    reasons = {e.path: e.reason for e in built.result.evictions}
    assert sorted(reasons) == sorted(EVICTION_CASES.values())
    r = {case: reasons[path] for case, path in EVICTION_CASES.items()}
    assert f"Could not find dependency '{GHOST_DYLIB}'" == r["missing_dependency"]
    assert "/opt/lib/libfxopt.dylib" in r["install_name_mismatch"]
    assert "does not match" in r["install_name_mismatch"]
    assert "not in a shared cache location" in r["ineligible_path"]
    assert "cmdsize" in r["corrupt_load_command"] and "malformed" in r["corrupt_load_command"]
    assert EVICTION_CASES["missing_dependency"] in r["depends_on_evicted"]
    assert "evicted" in r["depends_on_evicted"]
    # a file cut inside its LINKEDIT: the reader names the file, the offset and the problem
    trunc = built.input_path(EVICTION_CASES["truncated"])
    assert r["truncated"].startswith(f"malformed Mach-O: {trunc}: offset 0x")
    assert "past the end of the file" in r["truncated"]
    assert (
        r["unsupported_split_seg_kind"]
        == "split seg v2 kind ARM_MOVW_MOVT is not supported in a 64-bit cache"
    )
    other = "x86_64" if arch == "arm64" else "arm64"
    assert r["fat_without_arch"] == f"fat file has no {arch} slice (it has {other})"
    client, cycle1 = EVICTION_CASES["symbol_not_found_in_cycle"], CYCLE_DYLIBS[0]
    assert r["symbol_not_found_in_cycle"].startswith("Symbol not found: _fxa_")
    assert f"referenced from {client}, expected in {cycle1}" in r["symbol_not_found_in_cycle"]
    assert sorted(built.result.dylibs) == placed(built.key)
    assert sorted(p for p, _ in RawCache(built.main).images) == placed(built.key)


def test_evictions_on_the_command_line(cache_factory: CacheFactory, tmp_path: Path) -> None:
    api = cache_factory.build("arm64-evictions")
    proc = run_cli(
        "build", "--arch", "arm64", "--apple-rules", "-o", str(tmp_path / "out"), "--root", api.root
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.replace("\r", "\n").splitlines()
    for e in api.result.evictions:
        line = f"Dylib located at '{e.path}' not placed in shared cache because: {e.reason}"
        assert any(line in ln for ln in lines), line
    main = tmp_path / "out" / "dyld_shared_cache_arm64"
    assert snapshot(tmp_path / "out") == snapshot(api.outdir), "the CLI and the API build the same cache"
    assert sorted(p for p, _ in RawCache(main).images) == placed(api.key)
    assert verify_cache(str(main)) == []


# ---------------------------------------------------------------------------------------------
# reproducibility


@pytest.mark.parametrize("key", ["arm64", "x86_64", "arm64e-ios", "arm64e-ios-multi", "x86_64-multi"])
def test_two_builds_are_byte_identical(cache_factory: CacheFactory, tmp_path: Path, key: str) -> None:
    first = cache_factory.build(key)
    again = cache_factory.build(key, outdir=str(tmp_path / "a"))
    snap = snapshot(tmp_path / "a")
    assert snap == snapshot(first.outdir)
    assert any(n.endswith(".map") for n in snap) and any(n.endswith(".json") for n in snap)
    # the same command again over the same folder
    cache_factory.build(key, outdir=str(tmp_path / "a"))
    assert snapshot(tmp_path / "a") == snap
    assert again.result.uuid == first.result.uuid


# ---------------------------------------------------------------------------------------------
# --root symlinks, --dylib-order, info/list --json (all through the command line)


ORDER = [
    "/usr/lib/libfxobjc.dylib",
    "# a comment",
    "/usr/lib/libfxd.dylib",
    "/usr/lib/libnotthere.dylib",
    "/usr/lib/libobjc.A.dylib",
    "/usr/lib/libfxb.dylib",
]
ALIAS = "/usr/lib/libfxa.1.dylib"
ESCAPE = "/usr/lib/libfxescape.dylib"
ESCAPE_ABSOLUTE = "/usr/lib/libfxescape2.dylib"


@pytest.fixture(scope="module")
def cli_build(cache_factory: CacheFactory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The arm64 examples root plus an alias and an escaping symlink, built with --dylib-order."""
    base = tmp_path_factory.mktemp("cli")
    root = base / "root"
    shutil.copytree(cache_factory.root("arm64"), root, symlinks=True)
    os.symlink("libfxa.dylib", root / ALIAS.lstrip("/"))
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(root / "usr/lib/libfxa.dylib", outside / "libfxescape.dylib")
    os.symlink("../../../outside/libfxescape.dylib", root / ESCAPE.lstrip("/"))  # climbs out of the root
    os.symlink(outside / "libfxescape.dylib", root / ESCAPE_ABSOLUTE.lstrip("/"))  # a host path
    order = base / "order.txt"
    order.write_text("\n".join(ORDER) + "\n")
    out = base / "out"
    proc = run_cli(
        "build", "--arch", "arm64", "-o", str(out), "--root", str(root), "--dylib-order", str(order), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    return {
        "json": json.loads(proc.stdout),
        "stderr": proc.stderr,
        "main": str(out / "dyld_shared_cache_arm64"),
    }


def _trie_lookup(trie: bytes, key: str) -> int | None:
    """The ULEB payload of ``key``'s terminal in a dyld trie (§4.1), or None."""
    at = trie_lookup(trie, key)
    return None if at is None else read_uleb(trie, at)[0]


def test_alias_symlink_is_in_the_dylibs_trie(cli_build: dict[str, object]) -> None:
    from dyldcache.cache.reader import DyldCache

    main = str(cli_build["main"])
    raw = RawCache(main)
    index = [p for p, _ in raw.images].index("/usr/lib/libfxa.dylib")
    trie = raw.read(raw.main.field("dylibsTrieAddr"), raw.main.field("dylibsTrieSize"))
    assert _trie_lookup(trie, ALIAS) == index
    for i, (path, _) in enumerate(raw.images):
        assert _trie_lookup(trie, path) == i
    assert _trie_lookup(trie, ESCAPE) is None
    assert _trie_lookup(trie, ESCAPE_ABSOLUTE) is None
    with DyldCache.open(main) as cache:
        paths = cache.dylibs_trie()
    assert paths[ALIAS] == index
    assert ESCAPE not in paths
    assert sorted(paths) == sorted([ALIAS, *EXAMPLES])


def test_symlink_escaping_the_root_is_refused(cli_build: dict[str, object]) -> None:
    doc = cli_build["json"]
    assert isinstance(doc, dict)
    warned = [w for w in doc["warnings"] if f"'{ESCAPE}'" in w]
    assert warned and "leads outside the root" in warned[0]
    assert any(ESCAPE in ln and "outside the root" in ln for ln in str(cli_build["stderr"]).splitlines())
    assert ESCAPE not in doc["dylibs"]
    # an absolute target is a path inside the root (as the OS that boots from it sees it): here it
    # dangles, and nothing outside the root is read
    warned = [w for w in doc["warnings"] if f"'{ESCAPE_ABSOLUTE}'" in w]
    assert warned and "does not resolve inside the root" in warned[0]
    assert ESCAPE_ABSOLUTE not in doc["dylibs"]


def test_dylib_order_file(cli_build: dict[str, object]) -> None:
    raw = RawCache(str(cli_build["main"]))
    paths = [p for p, _ in raw.images]
    # §7.6: libobjc first, then the order file's entries by rank, then the rest by install name
    listed = [p for p in ORDER if p in EXAMPLES and p != "/usr/lib/libobjc.A.dylib"]
    rest = sorted(
        (p for p in EXAMPLES if p not in listed and p != "/usr/lib/libobjc.A.dylib"), key=str.encode
    )
    assert paths == ["/usr/lib/libobjc.A.dylib", *listed, *rest]
    addrs = [a for _, a in raw.images]
    assert addrs == sorted(addrs) and len(set(addrs)) == len(addrs)


def test_info_and_list_json_agree_with_the_build(cli_build: dict[str, object]) -> None:
    doc = cli_build["json"]
    assert isinstance(doc, dict)
    main = str(cli_build["main"])
    raw = RawCache(main)
    info_proc, list_proc = run_cli("info", "--json", main), run_cli("list", "--json", main)
    assert info_proc.returncode == 0 and list_proc.returncode == 0, info_proc.stderr + list_proc.stderr
    info, images = json.loads(info_proc.stdout), json.loads(list_proc.stdout)
    assert doc["files"] == [main]
    assert info["uuid"] == doc["uuid"]  # the same dashed form in both
    assert doc["uuid"].replace("-", "").lower() == raw.main.field("uuid").hex()
    assert info["image_count"] == len(doc["dylibs"]) == len(raw.images)
    assert [f["path"] for f in info["files"]] == doc["files"]
    assert [i["path"] for i in images] == doc["dylibs"] == [p for p, _ in raw.images]
    assert [i["address"] for i in images] == [a for _, a in raw.images]
    assert [i["index"] for i in images] == list(range(len(images)))
    assert info["base_address"] == raw.base and info["max_slide"] == raw.main.field("maxSlide")
    assert info["shared_region_size"] == raw.main.field("sharedRegionSize")
    assert info["platform"] == 1 and info["cache_type"] == 0 and info["header_size"] == 0x200
    assert [
        (m["address"], m["size"], m["file_offset"], m["max_prot"], m["init_prot"], m["flags"])
        for m in info["files"][0]["mappings"]
    ] == [(m.address, m.size, m.file_offset, m.max_prot, m.init_prot, m.flags) for m in raw.main.mappings]
    assert info["files"][0]["code_signature"] == {
        "offset": raw.main.field("codeSignatureOffset"),
        "size": raw.main.field("codeSignatureSize"),
    }
    # the list's UUIDs are the input dylibs' LC_UUIDs (image text info, §2.4)
    root = Path(main).parent.parent / "root"
    for img in images:
        want = open_macho(root / img["path"].lstrip("/")).uuid
        assert want and img["uuid"].replace("-", "").lower() == want.hex(), img["path"]


def test_cli_built_cache_verifies(cli_build: dict[str, object]) -> None:
    assert verify_cache(str(cli_build["main"])) == []


@pytest.mark.parametrize("key", list(CACHES))
def test_info_and_list_json_on_every_cache(
    cache_factory: CacheFactory, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from dyldcache.cli import main

    built = cache_factory.build(key)
    raw = RawCache(built.main)
    assert main(["info", "--json", built.main]) == 0
    info = json.loads(capsys.readouterr().out)
    assert main(["list", "--json", built.main]) == 0
    images = json.loads(capsys.readouterr().out)
    res = built.result
    symbols = [p for p in res.files if p.endswith(".symbols")]
    assert [f["path"] for f in info["files"]] == [p for p in res.files if p not in symbols]
    assert (info["symbols_file"] or {}).get("path") == (symbols[0] if symbols else None)
    assert info["uuid"].replace("-", "").lower() == res.uuid.hex() == raw.main.field("uuid").hex()
    assert [i["path"] for i in images] == list(res.dylibs) == [p for p, _ in raw.images]
    assert [i["address"] for i in images] == [a for _, a in raw.images]
    assert info["image_count"] == len(res.dylibs)
    assert info["arch"] == built.spec.arch and info["platform"] == (2 if built.spec.platform == "ios" else 1)
    assert [
        (s["suffix"], s["uuid"].replace("-", "").lower(), s["cache_vm_offset"]) for s in info["subcaches"]
    ] == [(e.suffix, e.uuid.hex(), e.vm_offset) for e in raw.entries]
    for f_info, f in zip(info["files"], raw.files, strict=True):
        assert [(m["address"], m["size"], m["file_offset"]) for m in f_info["mappings"]] == [
            (m.address, m.size, m.file_offset) for m in f.mappings
        ]
    assert info["max_slide"] == raw.main.field("maxSlide")
    assert info["dylibs_trie"]["entries"] == len(res.dylibs)


# ---------------------------------------------------------------------------------------------
# header fields, from the format rules


MAGIC = {"arm64": b"dyld_v1   arm64\0", "arm64e": b"dyld_v1  arm64e\0", "x86_64": b"dyld_v1  x86_64\0"}
BASE = {"arm64": 0x180000000, "arm64e": 0x180000000, "x86_64": 0x7FF800000000}
#: §2.2: (maxProt, initProt, flags) of each region kind, in dyld's mapping order
REGION_ORDER = [(5, 5, 0), (3, 1, 4), (3, 3, 0), (3, 3, 1), (3, 1, 5), (1, 1, 0)]


def _expected_max_slide(raw: RawCache, arch: str, platform: str) -> int:
    """§7.4, recomputed from the mappings (and the dynamic data reserve) of every file."""
    base = raw.base
    dyn_start: int = base + raw.main.field("dynamicDataOffset")
    dyn_size: int = raw.main.field("dynamicDataMaxSize")
    if arch == "x86_64":
        best = GiB
        for i, f in enumerate(raw.files):
            for m in f.mappings:
                if not m.max_prot & 2:  # text, linkedit
                    best = min(best, GiB - m.size)
            data = [m for m in f.mappings if m.max_prot & 2]
            best = min(best, GiB - (data[-1].end - data[0].address))
            if i == len(raw.files) - 1:
                best = min(best, GiB - dyn_size)  # the dynamic config region of the last file
        return best
    cache_size = 0x100000000 if platform == "ios" else 0x180000000
    files = [*raw.files, *([raw.symbols] if raw.symbols else [])]
    last = files[-1]
    end = max([m.end for m in last.mappings] + ([] if raw.symbols else [dyn_start + dyn_size]))
    slide = base + cache_size - end
    text_end = [m.end for f in files for m in f.mappings if m.max_prot == 5][-1]
    if text_end - base <= 2 * GiB:
        slide = 2 * GiB - (text_end - base)
    return min(slide, 512 << 20)


@pytest.mark.parametrize("key", list(CACHES))
def test_header_fields_follow_the_format(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    spec = built.spec
    raw = RawCache(built.main)
    h = raw.main
    for f in [*raw.files, *([raw.symbols] if raw.symbols else [])]:
        assert f.field("magic") == MAGIC[spec.arch]
        assert f.field("mappingOffset") == 0x200
        n = f.field("mappingCount")
        assert 1 <= n == len(f.mappings) == f.field("mappingWithSlideCount")
        assert f.field("mappingWithSlideOffset") == 0x200 + 56 * n
        assert f.plain_mappings() == [
            (m.address, m.size, m.file_offset, m.max_prot, m.init_prot) for m in f.mappings
        ]
        assert f.field("platform") == (2 if spec.platform == "ios" else 1)
        assert f.field("cacheType") == 0
        assert f.field("sharedRegionStart") == f.mappings[0].address
        # mappings: dyld's order with §2.2's protections, contiguous in the file, 16 KiB aligned
        kinds = [REGION_ORDER.index((m.max_prot, m.init_prot, m.flags)) for m in f.mappings]
        assert kinds == sorted(set(kinds)) and kinds[0] == 0
        assert f.mappings[0].file_offset == 0
        for a, b in itertools.pairwise(f.mappings):
            assert a.file_offset + a.size == b.file_offset and a.end <= b.address
        assert all(m.address % 0x4000 == 0 and m.size % 0x4000 == 0 for m in f.mappings)
        if f is not raw.symbols:
            assert kinds[-1] == 5, "the last mapping is LINKEDIT"
            if spec.arch != "arm64e":
                assert not any(m.flags & 1 for m in f.mappings), "AUTH mappings exist only on arm64e"
        linkedit = f.mappings[-1]
        for m in f.mappings:
            if not m.max_prot & 2:
                assert m.slide_info_size == 0
                continue
            assert m.slide_info_size, "every data mapping has slide info"
            assert linkedit.file_offset <= m.slide_info_offset
            assert m.slide_info_offset + m.slide_info_size <= linkedit.file_offset + linkedit.size
            version = struct.unpack_from("<I", f.data, m.slide_info_offset)[0]
            assert version == spec.slide_version
            if version == 2:
                fields = list(struct.unpack_from("<6I2Q", f.data, m.slide_info_offset))
                value_add = BASE[spec.arch] if spec.arch == "x86_64" else 0
                # no page extras; their offset is unused then (cache-format.md §2.10 says 0,
                # Apple's builder writes the end of page_starts): accept either
                assert fields[4] in (0, 40 + 2 * (m.size // 4096))
                fields[4] = 0
                assert fields == [2, 4096, 40, m.size // 4096, 0, 0, 0x00FFFF0000000000, value_add]
    # main header
    assert h.field("sharedRegionStart") == BASE[spec.arch]
    assert h.field("imagesOffsetOld") == 0 and h.field("imagesCountOld") == 0
    n = h.field("mappingCount")
    assert h.field("imagesOffset") == 0x200 + 112 * n  # §2.3
    assert h.field("imagesCount") == len(built.result.dylibs)
    assert [p for p, _ in raw.images] == list(built.result.dylibs)
    assert h.field("imagesTextCount") == len(built.result.dylibs)
    assert h.field("imagesTextOffset") == h.field("imagesOffset") + 32 * len(built.result.dylibs)
    # the dynamic data reserve: 16 KiB after the last mapping of the last mapped file, in no mapping
    dyn = h.field("sharedRegionStart") + h.field("dynamicDataOffset")
    assert h.field("dynamicDataMaxSize") == 0x4000
    assert dyn % 0x4000 == 0 and dyn >= raw.files[-1].mappings[-1].end
    everything = [m for f in [*raw.files, *([raw.symbols] if raw.symbols else [])] for m in f.mappings]
    assert not any(m.address < dyn + 0x4000 and dyn < m.end for m in everything)
    assert h.field("maxSlide") == _expected_max_slide(raw, spec.arch, spec.platform)
    if spec.arch != "x86_64":
        assert h.field("sharedRegionSize") == dyn + 0x4000 - h.field("sharedRegionStart")
    else:
        assert h.field("sharedRegionSize") >= dyn + 0x4000 - h.field("sharedRegionStart")


def test_image_text_infos_name_the_input_uuids(cache_factory: CacheFactory) -> None:
    built = cache_factory.build("arm64")
    raw = RawCache(built.main)
    at = raw.main.field("imagesTextOffset")
    for i, (path, addr) in enumerate(raw.images):
        uuid, load, text_size, path_off = struct.unpack_from("<16sQII", raw.main.data, at + 32 * i)
        assert uuid == open_macho(built.input_path(path)).uuid
        assert load == addr
        text = next(s for s in raw.segments(path) if s.name == "__TEXT")
        assert text_size == text.vmsize
        assert raw.main.data[path_off : raw.main.data.index(b"\0", path_off)].decode() == path


# ---------------------------------------------------------------------------------------------
# bad usage and bad input


def test_missing_arch_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("build", "-o", str(tmp_path / "out"), "--root", str(tmp_path))
    assert proc.returncode == 2
    assert "--arch" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_root_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("build", "--arch", "arm64", "-o", str(tmp_path / "out"), "--root", str(tmp_path / "nope"))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and str(tmp_path / "nope") in lines[0], proc.stderr


def test_root_without_eligible_dylibs_fails(cache_factory: CacheFactory, tmp_path: Path) -> None:
    evict_root = Path(cache_factory.root("arm64", kind="evictions"))
    root = tmp_path / "root"
    for path in (EVICTION_CASES["ineligible_path"], EVICTION_CASES["install_name_mismatch"]):
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(evict_root / path.lstrip("/"), root / path.lstrip("/"))
    proc = run_cli("build", "--arch", "arm64", "-q", "-o", str(tmp_path / "out"), "--root", str(root))
    assert proc.returncode == 1, proc.stderr
    assert "no input dylib can be placed" in proc.stderr
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def _liar_root(cache_factory: CacheFactory, folder: Path) -> Path:
    """The examples plus libfxliar: linked against a libSystem stub that also declares libfxa's
    exports, so it binds _fxa_* to libSystem, which does not export them."""
    root = folder / "root"
    shutil.copytree(cache_factory.root("arm64"), root, symlinks=True)
    lib = root / "usr" / "lib"
    symbols = {e.name for e in open_macho(lib / "libSystem.B.dylib").exports}
    symbols |= {e.name for e in open_macho(lib / "libfxa.dylib").exports}
    stub = folder / "liar.tbd"
    stub.write_text(format_tbd("/usr/lib/libSystem.B.dylib", ["arm64-macos"], sorted(symbols)))
    link(
        LinkOptions(
            arch="arm64",
            output=str(lib / "libfxliar.dylib"),
            install_name="/usr/lib/libfxliar.dylib",
            inputs=[
                LinkInput(str(OBJ_DIR / "arm64" / "libb.o")),
                LinkInput(str(stub)),
                LinkInput(str(TBD_DIR / "libfxmissing.tbd"), "weak"),
            ],
        )
    )
    return root


def test_failing_build_leaves_the_output_folder_alone(cache_factory: CacheFactory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    good = run_cli("build", "--arch", "arm64", "-q", "-o", str(out), "--root", cache_factory.root("arm64"))
    assert good.returncode == 0, good.stderr
    before = snapshot(out)
    assert "dyld_shared_cache_arm64" in before
    assert verify_cache(str(out / "dyld_shared_cache_arm64")) == []
    # a root in which nothing can be placed: libfxliar alone, without the libSystem it links
    root = _liar_root(cache_factory, tmp_path)
    lone = tmp_path / "lone"
    (lone / "usr" / "lib").mkdir(parents=True)
    shutil.copy(root / "usr" / "lib" / "libfxliar.dylib", lone / "usr" / "lib")
    proc = run_cli("build", "--arch", "arm64", "-q", "-o", str(out), "--root", str(lone))
    assert proc.returncode == 1, proc.stderr
    assert "Dylib located at '/usr/lib/libfxliar.dylib' not placed" in proc.stderr
    assert "Could not find dependency '/usr/lib/libSystem.B.dylib'" in proc.stderr
    assert "error: no input dylib can be placed in the cache" in proc.stderr
    assert snapshot(out) == before, "files changed, appeared or were left behind"
    # into a fresh folder: nothing at all is left
    fresh = tmp_path / "fresh"
    proc = run_cli("build", "--arch", "arm64", "-q", "-o", str(fresh), "--root", str(lone))
    assert proc.returncode == 1
    assert not fresh.exists() or os.listdir(fresh) == []


def test_an_unresolvable_bind_evicts_only_its_dylib(cache_factory: CacheFactory, tmp_path: Path) -> None:
    """dyld-1162 stops the whole build on "Symbol not found"; we evict the dylib in phase 1 with the
    same facts (symbol, client, the dylib it was expected in) and build the rest."""
    root = _liar_root(cache_factory, tmp_path)
    proc = run_cli("build", "--arch", "arm64", "--json", "-o", str(tmp_path / "out"), "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    evicted = {e["path"]: e["reason"] for e in doc["evictions"]}
    reason = evicted["/usr/lib/libfxliar.dylib"]
    assert reason.startswith("Symbol not found: _fxa_")
    assert "expected in /usr/lib/libSystem.B.dylib" in reason
    assert sorted(doc["dylibs"]) == EXAMPLES
    assert verify_cache(doc["files"][0]) == []
