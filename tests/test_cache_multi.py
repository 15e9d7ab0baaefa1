"""arm64e caches (slide info v3 and v5) and multi-file caches (issue 4).

Oracles: DyldExtractor (v2/v3 only) extracts every image across the main file, subcaches and
``.symbols``; the unicorn emulator (UC_CPU_ARM64_MAX for arm64e) runs expected.json against the
native gcc build; the slide-info chains are decoded here, from the raw bytes and the bit layouts of
docs/cache-format.md §2.11 (v3) and §2.13 (v5), and every pointer is compared with what the input
dylib's fixups (LIEF + raw input bytes) say it must hold and with the emulator's memory after its
own slide; local symbols are compared with the input dylibs' symbol tables; code signatures are
parsed and re-hashed here (§6); file suffixes, subcache entries and UUIDs follow §1-§2.5.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cache_fixtures import (
    CACHES,
    Built,
    CacheFactory,
    ExpectedPointer,
    InputImages,
    RawCache,
    RawFile,
    emulate_calls,
    fixture_install_names,
    input_segments,
    input_symtab,
    objdump_dylib,
    slide_of,
    snapshot,
)
from conftest import LLVM_OBJDUMP, python_module, run_cli, tool

EXAMPLES = sorted(fixture_install_names().values())
MULTI = ["arm64-multi", "x86_64-multi", "arm64e-ios-multi", "arm64e-macos-multi"]
ARM64E = ["arm64e-ios", "arm64e-macos", "arm64e-ios-multi", "arm64e-macos-multi", "arm64e-ios-keep-locals"]
#: caches DyldExtractor can read: everything but slide info v5
GATED = [
    "arm64e-ios",
    "arm64e-ios-multi",
    "arm64-multi",
    "x86_64-multi",
    "arm64-ios",
    "arm64e-ios-keep-locals",
]
#: caches whose locals were moved to a .symbols file
UNMAPPED = ["arm64e-ios", "arm64e-ios-multi", "arm64-ios"]


def _need_native() -> None:
    """The emulator and the native oracle (gcc, objcopy)."""
    python_module("unicorn")
    tool("gcc")
    tool("objcopy")


def _all_files(raw: RawCache) -> list[RawFile]:
    return [*raw.files, *([raw.symbols] if raw.symbols else [])]


def _is_local(n_type: int) -> bool:
    """A non-stab, non-external, N_SECT symbol."""
    return not n_type & 0xE0 and not n_type & 0x01 and n_type & 0x0E == 0x0E


# ---------------------------------------------------------------------------------------------
# DyldExtractor


@pytest.mark.parametrize("key", GATED)
def test_dyldextractor_extracts_every_image(cache_factory: CacheFactory, key: str) -> None:
    python_module("DyldExtractor")
    python_module("lief")
    import lief

    objdump = tool(LLVM_OBJDUMP)
    built = cache_factory.build(key)
    gate = cache_factory.gate(key)
    raw = RawCache(built.main)
    assert list(gate.images) == [p for p, _ in raw.images] == list(built.result.dylibs)
    assert sorted(gate.images) == EXAMPLES
    assert gate.failures == {}
    if built.spec.subcache_text_limit:
        holders = {raw.locate(addr)[0].path for _, addr in raw.images}
        assert len(holders) >= 3, "images are spread over the main file and the subcaches"
    lief.logging.disable()
    for name in EXAMPLES:
        out = objdump_dylib(objdump, gate.extracted[name])
        assert out.returncode == 0 and out.stderr == "", (name, out.stderr)
        inp = objdump_dylib(objdump, built.input_path(name))
        assert sorted(out.exports) == sorted(inp.exports), name
        if key in UNMAPPED:
            # DyldExtractor takes locals only from the .symbols file: finding every input
            # local in the extracted dylib shows it read that file
            locals_in = {s for s, t, _, _ in input_symtab(built.input_path(name)) if _is_local(t)}
            fat = lief.MachO.parse(str(gate.extracted[name]))  # keep it alive while .at(0) is used
            assert fat is not None and fat.at(0) is not None, name
            extracted = {s.name for s in fat.at(0).symbols}  # type: ignore[union-attr]
            assert locals_in and locals_in <= extracted, name


# ---------------------------------------------------------------------------------------------
# emulation


@pytest.mark.parametrize("key", [*ARM64E, "arm64-multi", "x86_64-multi", "arm64-ios"])
def test_emulation_matches_native_results(cache_factory: CacheFactory, key: str) -> None:
    _need_native()
    built = cache_factory.build(key)
    run = emulate_calls(built.main, built.spec.arch, cache_factory.random_slide(built.main))
    if built.spec.arch == "arm64e":
        from unicorn import arm64_const

        # pointer authentication instructions need the MAX cpu (with no keys set they pass)
        assert run.loaded.machine.mu.ctl_get_cpu_model() == arm64_const.UC_CPU_ARM64_MAX
    assert run.initializers["/usr/lib/libfxd.dylib"] >= 1
    assert run.mismatches == {}, f"slide {run.slide:#x}"


# ---------------------------------------------------------------------------------------------
# slide info v3 and v5, decoded here


@dataclass(frozen=True)
class Decoded:
    location: int
    target: int
    high8: int
    auth: bool
    key: int
    diversity: int
    addr_div: bool


def _decode_chains(f: RawFile, base: int) -> dict[int, Decoded]:
    """Every pointer of every v3 or v5 chain of one file, from its raw bytes."""
    out: dict[int, Decoded] = {}
    for mp in f.mappings:
        if not mp.slide_info_size:
            continue
        so = mp.slide_info_offset
        version, page_size, count, _pad, value_add = struct.unpack_from("<4IQ", f.data, so)
        assert version in (3, 5), version
        # §2.11 / §2.13: 4 KiB pages for v3 and 16 KiB for v5; value_add is the cache base
        assert page_size == (0x1000 if version == 3 else 0x4000)
        assert count == mp.size // page_size
        assert value_add == base
        assert mp.slide_info_size >= 24 + 2 * count
        for p in range(count):
            start = struct.unpack_from("<H", f.data, so + 24 + 2 * p)[0]
            if start == 0xFFFF:  # ..._PAGE_ATTR_NO_REBASE
                continue
            off = start
            while True:
                assert off % 8 == 0 and off + 8 <= page_size, f"chain leaves page {p} of {mp.address:#x}"
                loc = mp.address + p * page_size + off
                v = struct.unpack_from("<Q", f.data, mp.file_offset + p * page_size + off)[0]
                auth = bool(v >> 63)
                if version == 3:
                    # bit 62 must stay 0 (the kernel reads it as a bind)
                    assert not (v >> 62) & 1, f"{loc:#x}: bit 62 set"
                    nxt = (v >> 51) & 0x7FF
                    if auth:
                        d = Decoded(
                            loc,
                            (v & 0xFFFFFFFF) + value_add,
                            0,
                            True,
                            (v >> 49) & 3,
                            (v >> 32) & 0xFFFF,
                            bool((v >> 48) & 1),
                        )
                    else:
                        # 43-bit target, then the top byte at bits 43-50
                        d = Decoded(loc, v & 0x7FFFFFFFFFF, (v >> 43) & 0xFF, False, 0, 0, False)
                else:
                    nxt = (v >> 52) & 0x7FF
                    target = (v & 0x3FFFFFFFF) + value_add
                    if auth:
                        # keyIsData picks DA over IA: B keys cannot be expressed
                        d = Decoded(
                            loc,
                            target,
                            0,
                            True,
                            2 if (v >> 51) & 1 else 0,
                            (v >> 34) & 0xFFFF,
                            bool((v >> 50) & 1),
                        )
                    else:
                        assert not (v >> 42) & 0x3FF, f"{loc:#x}: unused bits 42-51 are set"
                        d = Decoded(loc, target, (v >> 34) & 0xFF, False, 0, 0, False)
                assert loc not in out, f"{loc:#x} is on two chains"
                out[loc] = d
                if not nxt:
                    break
                off += nxt * 8
    return out


@pytest.mark.parametrize("key", ARM64E)
def test_every_chain_decodes_to_what_the_input_fixups_require(cache_factory: CacheFactory, key: str) -> None:
    python_module("lief")
    python_module("unicorn")
    import emulator

    built = cache_factory.build(key)
    raw = RawCache(built.main)
    decoded: dict[int, Decoded] = {}
    for f in raw.files:
        versions = {
            struct.unpack_from("<I", f.data, m.slide_info_offset)[0] for m in f.mappings if m.slide_info_size
        }
        assert versions == {built.spec.slide_version}
        decoded.update(_decode_chains(f, raw.base))
    assert any(d.auth for d in decoded.values()) and any(not d.auth for d in decoded.values())
    # every target lies inside the cache
    spans = [(m.address, m.end) for f in raw.files for m in f.mappings]
    outside = [d for d in decoded.values() if not any(a <= d.target < e for a, e in spans)]
    assert outside == []
    # ... and is what the input dylib's rebase or bind says, moved into the cache
    images = InputImages(built, raw)
    expected: dict[int, ExpectedPointer] = {
        e.location: e for name in EXAMPLES for e in images.expected_pointers(name)
    }
    nulls = {loc for loc, e in expected.items() if e.target == 0}
    assert nulls, "libb's missing weak imports"
    assert set(decoded) == set(expected) - nulls
    rewritten = {loc for name in EXAMPLES for loc in images.objc_rewritten(name)}
    wrong = [
        (e.what, d)
        for loc, d in decoded.items()
        if loc not in rewritten  # ObjC selectors: tests/test_objc_optimizers.py
        and (e := expected[loc])
        and (d.target, d.high8, d.auth, d.key, d.diversity, d.addr_div)
        != (e.target, e.high8, e.auth, e.key, e.diversity, e.addr_div)
    ]
    assert wrong == []
    # the emulator slides with its own code: its memory must hold target + slide (+ high8)
    slide = cache_factory.random_slide(built.main)
    loaded = emulator.load_cache(built.main, "arm64e", slide)
    for loc, d in decoded.items():
        assert loaded.machine.read_u64(loc + slide) == (d.target + slide) | (d.high8 << 56), f"{loc:#x}"
    for loc in nulls:
        assert loaded.machine.read_u64(loc + slide) == 0, f"{expected[loc].what} is not null"


def _sections(raw: RawCache, install_name: str) -> dict[str, tuple[int, int]]:
    out = {}
    for cmd, body in raw.load_commands(install_name):
        if cmd == 0x19:
            for k in range(struct.unpack_from("<I", body, 64)[0]):
                at = 72 + 80 * k
                name = body[at : at + 16].split(b"\0")[0].decode()
                out[name] = struct.unpack_from("<2Q", body, at + 32)
    return out


@pytest.mark.parametrize("key", ["arm64e-ios", "arm64e-macos-multi"])
def test_auth_stubs_jump_through_authenticated_pointers(cache_factory: CacheFactory, key: str) -> None:
    """libfxb calls libfxa through __auth_stubs: adrp/add x17, ldr x16,[x17], braa x16,x17; each
    slot is an IA-signed, address-diversified pointer to code (the emulation calls go this way)."""
    built = cache_factory.build(key)
    raw = RawCache(built.main)
    decoded: dict[int, Decoded] = {}
    for f in raw.files:
        decoded.update(_decode_chains(f, raw.base))
    text = [(m.address, m.end) for f in raw.files for m in f.mappings if m.max_prot == 5]
    addr, size = _sections(raw, "/usr/lib/libfxb.dylib")["__auth_stubs"]
    code = raw.read(addr, size)
    assert size and size % 16 == 0
    for k in range(0, size, 16):
        adrp, add, ldr, braa = struct.unpack_from("<4I", code, k)
        assert adrp & 0x9F00001F == 0x90000011, f"{adrp:#x} is not adrp x17"
        assert add & 0xFFC003FF == 0x91000231, f"{add:#x} is not add x17, x17, #imm"
        assert ldr == 0xF9400230 and braa == 0xD71F0A11
        imm = ((adrp >> 29) & 3) | (((adrp >> 5) & 0x7FFFF) << 2)
        imm -= (imm & 0x100000) << 1  # sign-extend 21 bits
        slot = ((addr + k) & ~0xFFF) + (imm << 12) + ((add >> 10) & 0xFFF)
        d = decoded[slot]
        assert d.auth and d.key == 0 and d.addr_div, f"stub {k // 16}: slot {slot:#x} is {d}"
        assert any(a <= d.target < e for a, e in text), f"stub {k // 16} does not jump to code"


# ---------------------------------------------------------------------------------------------
# multi-file layout


def _expected_suffix(f: RawFile, index: int, platform: str) -> str:
    """§2.5: .NN on macOS; on iOS .NN.dylddata with any DATA, .NN.dyldlinkedit with only LINKEDIT."""
    nn = f".{index:02d}"
    if platform == "macos":
        return nn
    if any(m.max_prot & 2 for m in f.mappings):
        return nn + ".dylddata"
    if any(m.max_prot == 1 for m in f.mappings):
        return nn + ".dyldlinkedit"
    return nn


@pytest.mark.parametrize("key", MULTI)
def test_multi_file_layout(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    spec = built.spec
    raw = RawCache(built.main)
    assert len(raw.entries) >= 3
    assert len(raw.entries) == raw.main.field("subCacheArrayCount")
    names = [os.path.basename(p) for p in built.result.files]
    main_name = os.path.basename(built.main)
    expected_files = [main_name] + [main_name + e.suffix for e in raw.entries]
    if spec.platform == "ios":
        expected_files.append(main_name + ".symbols")
    assert names == expected_files
    assert sorted(n for n in os.listdir(built.outdir) if not n.endswith((".map", ".json"))) == sorted(names)
    for i, (entry, sub) in enumerate(zip(raw.entries, raw.subcaches, strict=True), 1):
        assert entry.suffix == _expected_suffix(sub, i, spec.platform)
        assert entry.uuid == sub.field("uuid") and any(entry.uuid)
        assert entry.vm_offset == sub.mappings[0].address - raw.base
        assert sub.field("sharedRegionStart") == sub.mappings[0].address
        assert sub.field("subCacheArrayCount") == 0
        assert not any(sub.field("symbolFileUUID"))
    # the files' VM ranges are disjoint and in file order
    spans = [(m.address, m.end) for f in _all_files(raw) for m in f.mappings]
    assert spans == sorted(spans) and all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    # every image's segments are in one of the mapped files
    for name, _ in raw.images:
        for seg in raw.segments(name):
            if seg.vmsize:
                raw.locate(seg.vmaddr)


def test_subcache_text_limit_on_the_command_line(cache_factory: CacheFactory, tmp_path: Path) -> None:
    api = cache_factory.build("arm64e-ios-multi")
    out = tmp_path / "out"
    proc = run_cli(
        "build", "--arch", "arm64e", "--platform", "ios", "-q", "-o", str(out), "--root", api.root,
        "--subcache-text-limit", "8K",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert snapshot(out) == snapshot(api.outdir)


@pytest.mark.parametrize("key", [*MULTI, "arm64e-ios", "arm64e-macos", "arm64-ios"])
def test_symbols_file_is_found_through_its_uuid(cache_factory: CacheFactory, key: str) -> None:
    from dyldcache.cache.reader import DyldCache

    built = cache_factory.build(key)
    raw = RawCache(built.main)
    symbols_path = built.main + ".symbols"
    with DyldCache.open(built.main) as cache:
        found = cache.symbols_file.path if cache.symbols_file else None
    if built.spec.platform == "macos":
        assert not any(raw.main.field("symbolFileUUID"))
        assert not os.path.exists(symbols_path) and found is None
        return
    sym = RawFile(symbols_path)
    assert raw.main.field("symbolFileUUID") == sym.field("uuid") and any(sym.field("uuid"))
    assert found == symbols_path
    # not a listed subcache: one header mapping, its VM after every other file's
    assert all(e.suffix != ".symbols" for e in raw.entries)
    assert len(sym.mappings) == 1 and sym.mappings[0].max_prot == 5
    assert sym.mappings[0].address >= max(m.end for f in raw.files for m in f.mappings)
    assert sym.field("localSymbolsOffset") and sym.field("localSymbolsSize")


# ---------------------------------------------------------------------------------------------
# dyldcache verify


@pytest.mark.parametrize("key", list(CACHES))
def test_verify_passes(cache_factory: CacheFactory, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    from dyldcache.cli import main

    built = cache_factory.build(key)
    assert main(["verify", built.main]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


def _mutate_text(main: Path, raw: RawCache) -> tuple[Path, str]:
    """One byte of a dylib's __TEXT page in the second subcache (past its header page)."""
    sub = raw.subcaches[1]
    target = Path(str(main) + raw.entries[1].suffix)
    addr = next(a for _, a in raw.images if raw.locate(a)[0] is sub)
    off = sub.mappings[0].file_offset + (addr - sub.mappings[0].address) + 0x100
    data = bytearray(target.read_bytes())
    data[off] ^= 0x01
    target.write_bytes(bytes(data))
    return target, "__TEXT"


def _mutate_entry_uuid(main: Path, raw: RawCache) -> tuple[Path, str]:
    """The main header's record of the first subcache's UUID."""
    data = bytearray(main.read_bytes())
    data[raw.main.field("subCacheArrayOffset") + 5] ^= 0x40
    main.write_bytes(bytes(data))
    return Path(str(main) + raw.entries[0].suffix), "UUID"


def _mutate_own_uuid(main: Path, raw: RawCache) -> tuple[Path, str]:
    """The last subcache's own header UUID."""
    target = Path(str(main) + raw.entries[-1].suffix)
    data = bytearray(target.read_bytes())
    data[0x58 + 9] ^= 0x01
    target.write_bytes(bytes(data))
    return target, "UUID"


def _mutate_slide_start(main: Path, raw: RawCache) -> tuple[Path, str]:
    """A page start of the first slide info of the main file (v2 counts 4-byte units, v3/v5 bytes)."""
    mp = next(m for m in raw.main.mappings if m.slide_info_size)
    data = bytearray(main.read_bytes())
    version = struct.unpack_from("<I", data, mp.slide_info_offset)[0]
    starts = mp.slide_info_offset + (40 if version == 2 else 24)
    none = 0x4000 if version == 2 else 0xFFFF
    p = 0
    while struct.unpack_from("<H", data, starts + 2 * p)[0] == none:
        p += 1
    value = struct.unpack_from("<H", data, starts + 2 * p)[0]
    struct.pack_into("<H", data, starts + 2 * p, value + (2 if version == 2 else 8))
    main.write_bytes(bytes(data))
    return main, "slide info"


@pytest.mark.parametrize("key", ["arm64e-ios-multi", "x86_64-multi", "arm64e-macos-multi"])
@pytest.mark.parametrize(
    "mutate",
    [_mutate_text, _mutate_entry_uuid, _mutate_own_uuid, _mutate_slide_start],
    ids=lambda f: f.__name__,
)
def test_verify_fails_on_a_damaged_copy(
    cache_factory: CacheFactory,
    tmp_path: Path,
    key: str,
    mutate: Callable[[Path, RawCache], tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dyldcache.cli import main

    built = cache_factory.build(key)
    copy = tmp_path / "copy"
    shutil.copytree(built.outdir, copy)
    copy_main = copy / os.path.basename(built.main)
    damaged, word = mutate(copy_main, RawCache(copy_main))
    assert main(["verify", str(copy_main)]) == 1
    out = capsys.readouterr().out
    problems = [ln for ln in out.splitlines() if ln.strip()]
    assert problems and not out.strip().endswith(": ok")
    assert any(word in p and damaged.name in p for p in problems), out


# ---------------------------------------------------------------------------------------------
# local symbols


def _input_locals(built: Built, raw: RawCache, name: str) -> list[tuple[str, int, int]]:
    """(name, cache address, input n_sect) of the input dylib's N_SECT non-stab locals."""
    path = built.input_path(name)
    seg_in, seg_cached = input_segments(path), raw.segments(name)
    return sorted(
        (s, v + slide_of(seg_in, seg_cached, v), sect) for s, t, sect, v in input_symtab(path) if _is_local(t)
    )


@pytest.mark.parametrize("key", UNMAPPED)
def test_local_symbols_come_back_from_the_symbols_file(cache_factory: CacheFactory, key: str) -> None:
    from dyldcache.cache.reader import DyldCache

    built = cache_factory.build(key)
    raw = RawCache(built.main)
    with DyldCache.open(built.main) as cache:
        ls = cache.local_symbols()
    assert ls is not None and ls.vm_offsets and ls.path == built.main + ".symbols"
    assert len(ls.entries) == len(raw.images)
    total = 0
    for (dylib_offset, start, count), (name, addr) in zip(ls.entries, raw.images, strict=True):
        assert dylib_offset == addr - raw.base, name
        got = sorted((ls.name(int(n["n_strx"])), int(n["n_value"])) for n in ls.nlist[start : start + count])
        want = _input_locals(built, raw, name)
        assert got == [(s, a) for s, a, _ in want], name
        total += len(want)
        # §2.6: the mapped image keeps only its __text locals, as "<redacted>"
        cached = [(s, v) for s, t, _sect, v in raw.symtab(name) if not t & 0xE1]
        assert sorted(cached) == sorted(("<redacted>", a) for _, a, sect in want if sect == 1), name
    assert total > 50


def test_no_unmap_locals_keeps_them_in_the_images(cache_factory: CacheFactory) -> None:
    from dyldcache.cache.reader import DyldCache

    built = cache_factory.build("arm64e-ios-keep-locals")
    raw = RawCache(built.main)
    assert not any(n.endswith(".symbols") for n in os.listdir(built.outdir))
    assert not any(p.endswith(".symbols") for p in built.result.files)
    assert not any(raw.main.field("symbolFileUUID")) and raw.symbols is None
    with DyldCache.open(built.main) as cache:
        assert cache.local_symbols() is None
    total = 0
    for name, _ in raw.images:
        cached = sorted((s, v) for s, t, _sect, v in raw.symtab(name) if _is_local(t))
        want = [(s, a) for s, a, _ in _input_locals(built, raw, name)]
        assert cached == want, name
        total += len(want)
    assert total > 50


# ---------------------------------------------------------------------------------------------
# code signatures (§6)


@dataclass(frozen=True)
class Signature:
    offset: int
    size: int
    flags: int
    identifier: str
    page_size: int
    code_limit: int
    hash_type: int
    hashes: list[bytes]


def _signature(f: RawFile) -> Signature:
    """The primary CodeDirectory of a file's embedded signature (big-endian, §6)."""
    off, size = f.field("codeSignatureOffset"), f.field("codeSignatureSize")
    data = f.data
    magic, length, count = struct.unpack_from(">3I", data, off)
    assert magic == 0xFADE0CC0 and length <= size
    index = dict(struct.unpack_from(">2I", data, off + 12 + 8 * i) for i in range(count))
    cd = off + index[0]
    cd_magic, _len, _version, flags, hash_off, ident_off, _special, n_code, limit = struct.unpack_from(
        ">9I", data, cd
    )
    hash_size, hash_type, _platform, page_log2 = struct.unpack_from(">4B", data, cd + 36)
    assert cd_magic == 0xFADE0C02
    return Signature(
        off,
        size,
        flags,
        data[cd + ident_off : data.index(b"\0", cd + ident_off)].decode(),
        1 << page_log2,
        limit,
        hash_type,
        [data[cd + hash_off + i * hash_size : cd + hash_off + (i + 1) * hash_size] for i in range(n_code)],
    )


@pytest.mark.parametrize("key", list(CACHES))
def test_code_signatures(cache_factory: CacheFactory, key: str) -> None:
    built = cache_factory.build(key)
    spec = built.spec
    raw = RawCache(built.main)
    page = 0x4000 if spec.arch == "arm64e" or spec.platform == "ios" else 0x1000
    ident = f"com.apple.dyld.cache.{spec.arch}" + (".development" if spec.platform == "ios" else "")
    for f in _all_files(raw):
        sig = _signature(f)
        assert sig.offset + sig.size == len(f.data)
        assert sig.size % 0x4000 == 0 and sig.offset % 0x4000 == 0
        assert sig.identifier == ident, f.path
        assert sig.page_size == page, f.path
        assert sig.flags == 0x2 and sig.hash_type == 2  # ad hoc, SHA-256
        # covers exactly the bytes before it, page by page
        assert sig.code_limit == sig.offset
        assert len(sig.hashes) == math.ceil(sig.offset / page)
        for i, h in enumerate(sig.hashes):
            chunk = f.data[i * page : min((i + 1) * page, sig.offset)]
            assert hashlib.sha256(chunk).digest()[: len(h)] == h, f"{f.path}: page {i}"
