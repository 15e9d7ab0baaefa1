"""``dyldcache extract``: cache images as standalone dylibs (issue 10, item 3).

Oracles: llvm-objdump-22 must read every extracted image of our caches and of Apple's without a
warning; the emulator's own cache reader (tests/emulator.py, slide info decoded from the format
rules) maps each cache at slide 0, and every extracted segment must hold exactly those bytes
(pointers as plain unslid values); the input dylibs give the exports, the symbol table (locals
included, even when the cache moved them to .symbols), the indirect symbols and the function
starts, moved by their segment's slide; finally the extracted dylibs of a fixture cache, mapped
at their own addresses, run every call of expected.json with the results of the native build,
and the golden cache's dylibs return what its README says.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import emulator
import objdump
import pytest
from cache_fixtures import (
    CacheFactory,
    RawCache,
    fixture_install_names,
    input_segments,
    input_symtab,
    native_harness,
    slide_of,
)
from conftest import python_module, run_cli, shared_path

from dyldcache.cache.extract import Extracted, extract
from dyldcache.cache.slide_info_decode import decode_slide_info
from dyldcache.errors import CacheFormatError

#: single file and subcaches, x86_64 (opcodes, lazy binding), arm64e with .symbols (slide v3), v5
OURS = ["arm64", "x86_64", "x86_64-lazy", "arm64-multi", "arm64e-ios", "arm64e-macos"]
APPLE = [
    ("data", "golden", "dyld_shared_cache_arm64-macOS"),
    ("data", "real", "apple-caches", "dyld_shared_cache_arm64-macOS-1042.1"),
    ("data", "real", "apple-caches", "dyld_shared_cache_arm64-macOS-objc"),
    ("data", "real", "apple-caches", "dyld_shared_cache_arm64e-macOS-objc"),
]
LLVM_FLAGS = ("--private-headers", "--exports-trie", "--syms", "--indirect-symbols")
N_STAB, N_TYPE, N_SECT = 0xE0, 0x0E, 0x0E


class Extractions:
    """Every cache extracted once per module: key or Apple cache name -> (cache, arch, files)."""

    def __init__(self, factory: CacheFactory, base: Path) -> None:
        self.factory = factory
        self.base = base
        self.done: dict[str, tuple[str, str, list[Extracted]]] = {}

    def ours(self, key: str) -> tuple[str, str, list[Extracted]]:
        if key not in self.done:
            built = self.factory.build(key)
            self.done[key] = (built.main, built.spec.arch, extract(built.main, str(self.base / key)))
        return self.done[key]

    def apple(self, parts: tuple[str, ...]) -> tuple[str, str, list[Extracted]]:
        key = parts[-1]
        if key not in self.done:
            path = str(shared_path(*parts))
            arch = "arm64e" if "arm64e" in key else "arm64"
            self.done[key] = (path, arch, extract(path, str(self.base / key)))
        return self.done[key]


@pytest.fixture(scope="module")
def extractions(cache_factory: CacheFactory, tmp_path_factory: pytest.TempPathFactory) -> Extractions:
    return Extractions(cache_factory, tmp_path_factory.mktemp("extract"))


def _all(extractions: Extractions) -> list[tuple[str, str, list[Extracted]]]:
    return [extractions.ours(k) for k in OURS] + [extractions.apple(p) for p in APPLE]


# ---------------------------------------------------------------------------------------------
# the files are sound Mach-O files holding the cache's bytes


def test_llvm_objdump_reads_every_extracted_image(extractions: Extractions) -> None:
    every = [e for _, _, done in _all(extractions) for e in done]
    assert len(every) == 6 * 7 + 2 + 4 + 8 + 8
    objdump.prefetch([(e.file, LLVM_FLAGS) for e in every])
    for e in every:
        text = objdump.run(e.file, *LLVM_FLAGS)  # fails on any warning or error
        assert f"name {e.image} (offset" in text and "SYMBOL TABLE:" in text, e.file
        assert os.path.getsize(e.file) == e.size


def _segments(path: str) -> list[tuple[str, int, int, int, int]]:
    """(name, vmaddr, vmsize, fileoff, filesize) of every LC_SEGMENT_64, read with struct."""
    data = Path(path).read_bytes()
    _magic, _cpu, _sub, _ft, ncmds, _size, flags = struct.unpack_from("<7I", data)
    assert not flags & 0x80000000, f"{path}: MH_DYLIB_IN_CACHE is still set"
    out, off = [], 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == 0x19:
            name = data[off + 8 : off + 24].rstrip(b"\0").decode()
            out.append((name, *struct.unpack_from("<4Q", data, off + 24)))
        off += size
    return out


def test_segments_hold_the_cache_at_slide_zero(extractions: Extractions) -> None:
    """Each segment is the cache's bytes as the emulator's own loader leaves them at slide 0:
    slide info applied, every pointer its plain unslid value."""
    for main, arch, done in _all(extractions):
        machine = emulator.load_cache(main, arch, 0).machine
        for e in done:
            data = Path(e.file).read_bytes()
            header_end = 32 + struct.unpack_from("<I", data, 20)[0]
            segs = _segments(e.file)
            assert segs[0][3] == 0, f"{e.file}: the mach header's segment is not first in the file"
            for name, vmaddr, _vmsize, fileoff, filesize in segs:
                if name == "__LINKEDIT" or not filesize:
                    continue
                assert fileoff % 0x1000 == vmaddr % 0x1000 or fileoff == 0, (e.file, name)
                skip = header_end if fileoff == 0 else 0  # the rewritten load commands
                got = data[fileoff + skip : fileoff + filesize]
                assert got == machine.read(vmaddr + skip, filesize - skip), (e.file, name)


def test_pointers_are_no_longer_chains(extractions: Extractions) -> None:
    """The raw cache bytes differ from the extracted ones exactly where slide info chains run (a
    check that the previous test compares something: without the slide, they would be equal)."""
    main, _, done = extractions.ours("arm64")
    raw = RawCache(main)
    changed = 0
    for e in done:
        data = Path(e.file).read_bytes()
        for name, vmaddr, _vmsize, fileoff, filesize in _segments(e.file):
            if name.startswith("__DATA") or name.startswith("__AUTH"):
                changed += data[fileoff : fileoff + filesize] != raw.read(vmaddr, filesize)
    assert changed >= 3


def test_a_tagged_pointer_keeps_its_top_byte(cache_factory: CacheFactory, tmp_path: Path) -> None:
    """A v2 pointer may carry a top byte (high8, §2.10); the fixtures have none, so one chain
    word of a copy of the arm64 cache gets one, and extraction must keep it."""
    built = cache_factory.build("arm64")
    main = tmp_path / os.path.basename(built.main)
    data = bytearray(Path(built.main).read_bytes())
    raw = RawCache(built.main)
    m = next(m for m in raw.main.mappings if m.slide_info_size)
    # dyld_cache_slide_info2: page_size @4, page_starts_offset @8, page_starts_count @12
    page_size, starts_off, count = struct.unpack_from("<3I", data, m.slide_info_offset + 4)
    starts = struct.unpack_from(f"<{count}H", data, m.slide_info_offset + starts_off)
    page = next(i for i, st in enumerate(starts) if st != 0x4000 and not st & 0x8000)
    at = m.file_offset + page * page_size + starts[page] * 4
    data[at + 7] |= 0x5A  # bits 56-63 are outside the delta mask: the pointer's high8
    main.write_bytes(bytes(data))
    address = m.address + page * page_size + starts[page] * 4
    done = extract(str(main), str(tmp_path / "out"))
    machine = emulator.load_cache(str(main), "arm64", 0).machine
    assert machine.read_u64(address) >> 56 == 0x5A
    owner = [e for e in done for s in _segments(e.file) if s[1] <= address < s[1] + s[4] and s[0] != "__TEXT"]
    assert len(owner) == 1
    for name, vmaddr, _vmsize, fileoff, filesize in _segments(owner[0].file):
        if vmaddr <= address < vmaddr + filesize:
            got = struct.unpack_from("<Q", Path(owner[0].file).read_bytes(), fileoff + address - vmaddr)[0]
            assert got == machine.read_u64(address), name


# ---------------------------------------------------------------------------------------------
# LINKEDIT: the image's own exports, symbols, indirect symbols and function starts


@pytest.mark.parametrize("key", OURS)
def test_linkedit_is_the_inputs(extractions: Extractions, key: str) -> None:
    main, _, done = extractions.ours(key)
    built = extractions.factory.build(key)
    raw = RawCache(main)
    for e in done:
        inp = built.input_path(e.image)
        seg_in, seg_cached = input_segments(inp), raw.segments(e.image)

        def moved(value: int) -> int:
            return value + slide_of(seg_in, seg_cached, value)  # noqa: B023

        # exports at their cache addresses
        assert {x.name: x.address for x in objdump.exports_trie(e.file)} == {
            x.name: None if x.address is None else moved(x.address) for x in objdump.exports_trie(inp)
        }, e.image
        # the whole symbol table, locals included (arm64e-ios keeps them in .symbols)
        assert sorted((n, t, s, v) for n, t, s, v in input_symtab(e.file) if not t & N_STAB) == sorted(
            (n, t, s, moved(v) if t & N_TYPE == N_SECT else v)
            for n, t, s, v in input_symtab(inp)
            if not t & N_STAB
        ), e.image
        # indirect symbols, section by section
        got = {k: [r[2] for r in rows] for k, rows in objdump.indirect_symbols(e.file).items()}
        assert got == {k: [r[2] for r in rows] for k, rows in objdump.indirect_symbols(inp).items()}, e.image
        assert objdump.function_starts(e.file) == [moved(a) for a in objdump.function_starts(inp)], e.image


# ---------------------------------------------------------------------------------------------
# the extracted dylibs run


def _run_calls(paths: list[str], arch: str) -> tuple[dict[tuple[str, str, tuple[int, ...]], object], int]:
    """Map the dylibs at their addresses, run their initializers (dependencies first), then call
    every function of expected.json they export: mismatches against the native build."""
    harness = native_harness()
    expected = harness.expected_results()
    names = fixture_install_names()
    machine, images = emulator.load_at_vmaddr(paths, arch)
    for install_name in names.values():
        for fn in images[install_name].initializers if install_name in images else []:
            machine.call(fn)
    bad: dict[tuple[str, str, tuple[int, ...]], object] = {}
    calls = 0
    for c in harness.load_calls():
        img = images.get(names[c.dylib])
        if img is None:
            continue
        fn = img.exports.get(c.symbol)
        try:
            got: object = "not exported" if fn is None else machine.call_int(fn, *c.args)
        except emulator.EmulationError as exc:
            got = str(exc)
        calls += 1
        if got != expected[c.key]:
            bad[c.key] = (got, expected[c.key])
    return bad, calls


@pytest.mark.parametrize("key", OURS)
def test_extracted_fixture_dylibs_run_every_call(extractions: Extractions, key: str) -> None:
    _, arch, done = extractions.ours(key)
    bad, calls = _run_calls([e.file for e in done], arch)
    assert calls == len(native_harness().load_calls())
    assert not bad, bad


def test_one_extracted_dylib_runs_alone(cache_factory: CacheFactory, tmp_path: Path) -> None:
    """libfxa extracted by itself: every call either gives the native result or leaves the image
    (it faults at a pc outside libfxa's __TEXT: nothing else is mapped, or only zeros around
    it), and most calls stay inside."""
    built = cache_factory.build("arm64")
    (one,) = extract(built.main, str(tmp_path), ["libfxa.dylib"])
    assert one.image == "/usr/lib/libfxa.dylib" and os.listdir(tmp_path) == ["usr"]
    text = next(s for s in _segments(one.file) if s[0] == "__TEXT")
    bad, calls = _run_calls([one.file], "arm64")
    assert calls == sum(c.dylib == "liba" for c in native_harness().load_calls())
    for key, (got, _want) in bad.items():
        assert isinstance(got, str) and "faulted at pc " in got, (key, got)
        pc = int(got.split("faulted at pc ")[1].split(":")[0], 16)
        assert not text[1] <= pc < text[1] + text[2], (key, got)
    assert calls - len(bad) >= calls // 2


def test_golden_extracted_dylibs_do_what_the_readme_says(extractions: Extractions) -> None:
    _, _, done = extractions.apple(APPLE[0])
    machine, images = emulator.load_at_vmaddr([e.file for e in done], "arm64")
    a = images["/usr/lib/liba-1.0.dylib"].exports
    assert machine.call_int(a["_func_in_liba"], 5, 3) == 42
    assert machine.call_int(a["_func_in_liba"], 3, 5) == 1337
    text = machine.call(a["_what_is_cool"])
    assert machine.read(text, 6) == b"rizin\0"
    assert machine.call_int(images["/usr/lib/libb-1.0.dylib"].exports["_func_in_libb"], 50) == 8


# ---------------------------------------------------------------------------------------------
# slide info chains with null links


def test_null_links_are_cleared() -> None:
    """A v2 chain may run through words that hold 0 (the builder's bridge over a long gap):
    rewriting the chain as plain pointers must give them back their 0."""
    delta_mask = 0x00FFFF0000000000
    value_add = 0x7FFF00000000  # x86_64: the cache base

    def link(value: int, delta_bytes: int) -> int:
        return value | ((delta_bytes // 4) << 40)

    page = bytearray(0x1000)
    struct.pack_into("<Q", page, 0x00, link(0x1000, 0x100))  # -> base + 0x1000
    struct.pack_into("<Q", page, 0x100, link(0, 0x100))  # a null link
    struct.pack_into("<Q", page, 0x200, link(0x2000, 0))
    # dyld_cache_slide_info2: version, page_size, page_starts_offset/count, extras offset/count
    blob = struct.pack("<6I2Q", 2, 0x1000, 40, 1, 42, 0, delta_mask, value_add) + struct.pack("<H", 0)
    _, without = decode_slide_info(blob, page, 0x7FFF20000000, "test", 0)
    _, withnull = decode_slide_info(blob, page, 0x7FFF20000000, "test", 0, null_links=True)
    assert [(int(p["offset"]), int(p["target"])) for p in without] == [
        (0, value_add + 0x1000),
        (0x200, value_add + 0x2000),
    ]
    assert [(int(p["offset"]), int(p["target"])) for p in withnull] == [
        (0, value_add + 0x1000),
        (0x100, 0),
        (0x200, value_add + 0x2000),
    ]


# ---------------------------------------------------------------------------------------------
# the command line


def test_cli_extract(tmp_path: Path) -> None:
    path = str(shared_path(*APPLE[0]))
    r = run_cli("extract", path, str(tmp_path / "all"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"extracted 2 images into {tmp_path / 'all'}\n"
    assert sorted(os.listdir(tmp_path / "all" / "usr" / "lib")) == ["liba-1.0.dylib", "libb-1.0.dylib"]
    # an alias picks its image; the file goes to the install name
    r = run_cli("extract", path, str(tmp_path / "one"), "/usr/lib/liba.dylib", "--json")
    doc = json.loads(r.stdout)
    assert [(i["image"], i["file"]) for i in doc["images"]] == [
        ("/usr/lib/liba-1.0.dylib", str(tmp_path / "one" / "usr" / "lib" / "liba-1.0.dylib"))
    ]
    assert os.listdir(tmp_path / "one" / "usr" / "lib") == ["liba-1.0.dylib"]
    # extracting again over the same folder gives the same bytes
    before = (tmp_path / "all" / "usr/lib/libb-1.0.dylib").read_bytes()
    assert run_cli("extract", path, str(tmp_path / "all")).returncode == 0
    assert (tmp_path / "all" / "usr/lib/libb-1.0.dylib").read_bytes() == before


def test_install_name_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    """A cache whose image path climbs out with '..' is malformed input: exit 2, nothing written."""
    golden = shared_path(*APPLE[0])
    data = bytearray(golden.read_bytes())
    path_off = struct.unpack_from("<I", data, 0x290 + 24)[0]  # image 0's pathFileOffset (§2.4)
    evil = b"/../../evil.dylib\0"
    data[path_off : path_off + len(evil)] = evil
    bad = tmp_path / golden.name
    bad.write_bytes(bytes(data))
    with pytest.raises(CacheFormatError, match="would leave the output folder"):
        extract(str(bad), str(tmp_path / "out" / "deep"))
    r = run_cli("extract", str(bad), str(tmp_path / "out" / "deep"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.dylib").exists()


@pytest.mark.parametrize("parts", APPLE, ids=lambda p: p[-1])
def test_dyldextractor_agrees_on_apple_caches(
    extractions: Extractions, tmp_path: Path, parts: tuple[str, ...]
) -> None:
    """Apple's caches have no input dylibs to compare with: DyldExtractor's extraction (its own
    slide code, LINKEDIT optimizer and readers; no stub or ObjC fixing) is the second opinion on
    segment bytes, symbol tables, indirect symbols and exports."""
    python_module("DyldExtractor")
    import lief
    from dyldextractor_gate import run_gate

    lief.logging.disable()
    main, _, done = extractions.apple(parts)
    gate = run_gate(main, arm64_fixers=False, outdir=tmp_path)
    assert not gate.failures
    assert sorted(gate.extracted) == sorted(e.image for e in done)
    for e in done:
        dx = str(gate.extracted[e.image])
        fat = lief.MachO.parse(dx)  # the binary lives as long as its fat object
        theirs = {s.name: bytes(s.content) for s in fat.at(0).segments}
        data = Path(e.file).read_bytes()
        header_end = 32 + struct.unpack_from("<I", data, 20)[0]
        for name, _vmaddr, _vmsize, fileoff, filesize in _segments(e.file):
            if name == "__LINKEDIT" or not filesize:
                continue
            skip = header_end if fileoff == 0 else 0
            assert data[fileoff + skip : fileoff + filesize] == theirs[name][skip:filesize], (e.image, name)

        def symbols(path: str) -> list[tuple[str, int, int, int]]:
            # DyldExtractor adds a "<redacted>" entry when an indirect symbol names index 0
            return sorted(x for x in input_symtab(path) if x[0] != "<redacted>")

        assert symbols(e.file) == symbols(dx), e.image
        assert objdump.exports_trie(e.file) == objdump.exports_trie(dx), e.image
        got = {k: [r[2] for r in rows] for k, rows in objdump.indirect_symbols(e.file).items()}
        assert got == {k: [r[2] for r in rows] for k, rows in objdump.indirect_symbols(dx).items()}, e.image
