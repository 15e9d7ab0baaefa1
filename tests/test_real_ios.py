"""A real iOS 14.4 arm64 root in a cache, with its libraries' real code running.

The root (``../shared/data/real/ios14.4-arm64-procursus/procursus``) holds small Apple dylibs
(libSystem.B, some of its re-exported libraries, frameworks) and libraries that Procursus built
with Apple's ld64-609 (libzstd, liblz4, libncursesw, libcrypt, ...). It lacks most of libSystem's
re-exported libraries, libobjc, libc++ and the frameworks those dylibs link, and its versioned
files lost their install-name symlinks. The session fixture copies it, restores the symlinks,
adds stand-ins for every missing library (tests/standins.py: ``dyldcache link -stub_library``
with the real heap and string code of tests/fixtures/src/standin_system.c) and builds the cache
at the default settings.

Oracles: which files are placed, and why each other one is evicted, is derived here from the
rules of cache-format.md §8.1 (dyld-1162's ``canBePlacedInDyldCache`` and self-containment)
applied to llvm-objdump-22's reading of every file; the libraries' code runs in unicorn at a
random slide and its results are compared with Python's ``zstandard``, ``lz4`` and ``crypt``
(the host's libxcrypt), and with the C semantics of the functions called; DyldExtractor
extracts every image with its log gate; ``dyldcache verify`` passes.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import objdump
import pytest
import yaml
from apple_rules import apple_verdicts, dependencies, headers, id_name, machos
from cache_fixtures import RawCache, RawFile, input_symtab
from conftest import python_module, run_cli, shared_path, time_limit
from standins import (
    STANDIN_OBJECTS,
    StandIn,
    copy_root,
    object_exports,
    prepare_ios_root,
)

from dyldcache.builder.pipeline import BuildOptions, BuildResult, build_cache

ROOT = ("data", "real", "ios14.4-arm64-procursus", "procursus")
ARCH = "arm64"

#: from the issue: Procursus libraries with a two-level namespace, and Apple's own, that must be
#: placed once their dependencies exist
PROCURSUS_PLACED = (
    "/usr/lib/libzstd.1.dylib",
    "/usr/lib/liblz4.1.dylib",
    "/usr/lib/libncursesw.6.dylib",
    "/usr/lib/libreadline.8.dylib",
    "/usr/lib/libhistory.8.dylib",
    "/usr/lib/libintl.8.dylib",
    "/usr/lib/libgpg-error.0.dylib",
    "/usr/lib/libcrypt.2.dylib",
    "/usr/lib/libformw.6.dylib",
    "/usr/lib/libmenuw.6.dylib",
    "/usr/lib/libpanelw.6.dylib",
)
APPLE_PLACED = (
    "/usr/lib/libSystem.B.dylib",
    "/usr/lib/system/libsystem_sandbox.dylib",
    "/usr/lib/system/libsystem_coreservices.dylib",
    "/usr/lib/system/libsystem_collections.dylib",
    "/usr/lib/system/libsystem_featureflags.dylib",
    "/usr/lib/system/libsystem_product_info_filter.dylib",
    "/usr/lib/system/libremovefile.dylib",
    "/usr/lib/system/liblaunch.dylib",
)
ZSTD = "/usr/lib/libzstd.1.dylib"
LZ4 = "/usr/lib/liblz4.1.dylib"


@dataclass
class IosBuild:
    source: Path
    root: Path
    #: (install name, file path) of every install-name symlink restored
    links: list[tuple[str, str]]
    standins: list[StandIn]
    result: BuildResult
    outdir: Path

    @property
    def main(self) -> str:
        return str(self.result.files[0])

    def file(self, install_path: str) -> Path:
        return self.root / install_path.lstrip("/")


@pytest.fixture(scope="session")
def ios(tmp_path_factory: pytest.TempPathFactory) -> IosBuild:
    source = shared_path(*ROOT)
    base = tmp_path_factory.mktemp("real-ios")
    # libobjc a plain stand-in here: tests/test_real_objc.py builds this root with a runtime
    root, links, standins = prepare_ios_root(source, base, objc_runtime=False)
    outdir = base / "cache"
    with time_limit(120):
        # Apple's rules: the oracle below is dyld-1162's (the relaxed default is tested on wheels)
        result = build_cache(
            BuildOptions(arch=ARCH, platform="ios", output_dir=str(outdir), root=str(root), apple_rules=True)
        )
    return IosBuild(source, root, links, standins, result, outdir)


# ---------------------------------------------------------------------------------------------
# what the root lacks, and the stand-ins for it


def _headers(paths: list[Path]) -> dict[Path, objdump.PrivateHeaders]:
    heads = headers(paths, ARCH)
    return {p: ph for p, ph in heads.items() if ph is not None}


def test_standins_are_exactly_the_missing_libraries(ios: IosBuild) -> None:
    """A stand-in for every absolute dependency the source root lacks (libSystem's missing
    re-exports among them) and for nothing else; afterwards nothing is missing."""
    heads = _headers(machos(ios.source))
    wanted = {
        dep
        for ph in heads.values()
        for dep, _weak in dependencies(ph)
        if dep.startswith("/")
        and not os.path.lexists(ios.source / dep.lstrip("/"))
        # a dependency is also there when some file has it as its install name
        and dep not in {id_name(h) for h in heads.values()}
    }
    made = {s.install_name for s in ios.standins}
    assert made == wanted
    libsystem = heads[ios.source / "usr/lib/libSystem.B.dylib"]
    reexports = {d for d, _ in dependencies(libsystem)}
    assert {"/usr/lib/system/libsystem_c.dylib", "/usr/lib/system/libsystem_kernel.dylib"} <= reexports & made
    after = _headers(machos(ios.root))
    still = {
        dep
        for ph in after.values()
        for dep, _ in dependencies(ph)
        if dep.startswith("/") and not os.path.lexists(ios.file(dep))
    }
    assert not still


def test_standins_export_their_stubs(ios: IosBuild) -> None:
    """llvm-objdump reads every stand-in without a warning; it exports what its stub lists
    (read here as plain YAML) plus what its real-code object defines, and nothing else."""
    objdump.prefetch([(s.path, ("--exports-trie",)) for s in ios.standins])
    code = object_exports(STANDIN_OBJECTS[ARCH], ARCH)
    for s in ios.standins:
        doc = yaml.safe_load(s.tbd.read_text(encoding="utf-8").replace("--- !tapi-tbd", "---"))
        listed = {str(n) for sect in doc.get("exports", []) for n in sect.get("symbols", [])}
        exported = {e.name for e in objdump.exports_trie(s.path)}
        extra = code if s.objects else set()
        assert exported == listed | extra, s.install_name
        assert doc["install-name"] == s.install_name
    # the heap and string code went where the symbols are: malloc's library and libsystem_c
    with_code = {s.install_name for s in ios.standins if s.objects}
    assert {"/usr/lib/system/libsystem_malloc.dylib", "/usr/lib/system/libsystem_c.dylib"} <= with_code


# ---------------------------------------------------------------------------------------------
# placement, by the rules


def test_placement_and_every_eviction_follow_the_rules(ios: IosBuild) -> None:
    verdicts = apple_verdicts(ios.root, ARCH, "ios")
    assert sorted(ios.result.dylibs) == sorted(p for p, v in verdicts.items() if v.reason is None)
    expected = {p: v.reason for p, v in verdicts.items() if v.reason}
    assert {e.path: e.reason for e in ios.result.evictions} == expected
    # the rules are not vacuous here: each of these evicts something in this root
    reasons = {r.split(" '")[0] for r in expected.values()}
    assert {
        "path is not in a shared cache location",
        "install name not an absolute path",
        "Not built with two level namespaces",
        "Missing split seg info",
    } <= reasons


def test_procursus_and_apple_dylibs_are_placed(ios: IosBuild) -> None:
    placed = set(ios.result.dylibs)
    assert set(PROCURSUS_PLACED) <= placed
    assert set(APPLE_PLACED) <= placed
    assert {s.install_name for s in ios.standins} <= placed
    # the versioned files are cached under their install names, through the restored links
    for name, file in ios.links:
        if name in placed:
            assert file not in placed
            assert ios.result.dylibs.count(name) == 1


def test_flat_namespace_libraries_are_evicted_by_apple_rule_5(ios: IosBuild) -> None:
    """libpcre and libgcrypt lack MH_TWOLEVEL: dyld-1162 keeps them out, and so do we."""
    evicted = {e.path: e.reason for e in ios.result.evictions}
    for name in ("/usr/lib/libpcre.1.dylib", "/usr/lib/libgcrypt.20.dylib"):
        assert "TWOLEVEL" not in objdump.private_headers(ios.file(name)).header
        assert evicted[name] == "Not built with two level namespaces"
    for name in ("/usr/local/lib/liblzma.5.dylib", "/usr/libexec/sudo/libsudo_util.0.dylib"):
        assert evicted[name] == "path is not in a shared cache location"


# ---------------------------------------------------------------------------------------------
# readers


def test_dyldextractor_extracts_every_image(ios: IosBuild, tmp_path: Path) -> None:
    python_module("DyldExtractor")
    from dyldextractor_gate import run_gate

    gate = run_gate(ios.main, outdir=tmp_path)
    assert set(gate.images) == set(ios.result.dylibs)
    assert gate.failures == {}
    assert set(gate.extracted) == set(ios.result.dylibs)


def test_verify_passes(ios: IosBuild) -> None:
    proc = run_cli("verify", ios.main)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith(": ok")


N_INDR, N_SECT, N_TYPE, N_EXT = 0x0A, 0x0E, 0x0E, 0x01


def test_reexported_symbols_leave_no_stale_indirect_entries(ios: IosBuild) -> None:
    """Regression: liblaunch lists its re-exports as N_INDR symbols, whose n_value is an offset
    in its own string table. dyld-1162 copies only N_SECT globals into the cache's symbol table;
    we copied the N_INDR ones too, and DyldExtractor read their n_values as addresses."""
    name = "/usr/lib/system/liblaunch.dylib"
    indirect = [s for s in input_symtab(ios.file(name)) if s[1] & N_TYPE == N_INDR]
    assert len(indirect) > 50
    raw = RawCache(ios.main)
    segs = [s for s in raw.segments(name) if s.name != "__LINKEDIT"]
    for sym, n_type, _sect, value in raw.symtab(name):
        if n_type & N_EXT and n_type & N_TYPE:
            assert n_type & N_TYPE == N_SECT, (sym, n_type)
            assert any(s.vmaddr <= value < s.vmaddr + s.vmsize for s in segs), (sym, hex(value))


def test_missing_symbol_of_an_umbrella_names_the_umbrella(ios: IosBuild, tmp_path: Path) -> None:
    """Regression: libSystem.B binds to itself (ordinal 0) for symbols of its re-exports; when
    none has one, the error says where it was expected, libSystem.B, as dyld-1162 does."""
    binds = objdump.bind_table(ios.source / "usr/lib/libSystem.B.dylib")
    code = object_exports(STANDIN_OBJECTS[ARCH], ARCH)
    symbol, owner = next(
        (b.symbol, s)
        for b in binds
        if b.dylib == "this-image" and not b.weak_import and b.symbol not in code
        for s in ios.standins
        if b.symbol in s.symbols
    )
    root = copy_root(ios.root, tmp_path / "root")
    stub = tmp_path / "stub.tbd"
    stub.write_text(
        owner.tbd.read_text(encoding="utf-8").replace(f"'{symbol}', ", "").replace(f", '{symbol}'", "")
    )
    assert f"'{symbol}'" not in stub.read_text(encoding="utf-8")
    from dyldcache.link.linker import LinkInput, LinkOptions, link

    link(
        LinkOptions(
            ARCH,
            str(root / owner.install_name.lstrip("/")),
            "",
            [LinkInput(str(o)) for o in owner.objects],
            platform="ios",
            stub_library=str(stub),
            stub_data=frozenset(owner.data),
        )
    )
    # dyld-1162 stops the build here; we evict libSystem.B (and so everything that needs it)
    # with the same facts, and build the rest
    result = build_cache(
        BuildOptions(
            arch=ARCH, platform="ios", output_dir=str(tmp_path / "out"), root=str(root), apple_rules=True
        )
    )
    reasons = {e.path: e.reason for e in result.evictions}
    assert "/usr/lib/libSystem.B.dylib" not in result.dylibs
    assert reasons["/usr/lib/libSystem.B.dylib"] == (
        f"Symbol not found: {symbol} (referenced from /usr/lib/libSystem.B.dylib, "
        "expected in /usr/lib/libSystem.B.dylib)"
    )


# ---------------------------------------------------------------------------------------------
# the real code, in unicorn at a random slide

BUF = 0x6000_0000  # scratch memory for arguments and results, far from the cache and the stack
BUF_SIZE = 0x100000


@dataclass
class Running:
    loaded: Any
    slide: int

    @property
    def machine(self) -> Any:
        return self.loaded.machine

    def fn(self, dylib: str, symbol: str) -> int:
        addr = self.loaded.lookup(dylib, symbol)
        assert addr is not None, f"{symbol} is not exported by {dylib}"
        return int(addr)

    def call(self, dylib: str, symbol: str, *args: int) -> int:
        return int(self.machine.call(self.fn(dylib, symbol), *args))

    def cstring(self, addr: int, limit: int = 4096) -> bytes:
        raw = self.machine.read(addr, limit)
        return bytes(raw[: raw.index(0)])

    def put(self, offset: int, data: bytes) -> int:
        self.machine.write(BUF + offset, data)
        return BUF + offset


@pytest.fixture(scope="module")
def running(ios: IosBuild) -> Running:
    python_module("unicorn")
    import emulator

    max_slide = RawFile(ios.main).field("maxSlide")
    slide = random.Random(os.urandom(8)).randrange(1, max(2, max_slide // 0x4000)) * 0x4000
    loaded = emulator.load_cache(ios.main, ARCH, slide)
    loaded.machine.map(BUF, BUF_SIZE)
    return Running(loaded, slide)


def _packed_version(ios: IosBuild, install_name: str) -> tuple[int, int, int]:
    """The dylib's current version, as llvm-objdump prints its LC_ID_DYLIB."""
    (ident,) = objdump.private_headers(ios.file(install_name)).commands_named("LC_ID_DYLIB")
    major, minor, patch = (int(x) for x in ident["current version"].split("."))
    return major, minor, patch


def test_version_numbers_are_the_dylib_versions(ios: IosBuild, running: Running) -> None:
    """ZSTD_VERSION_NUMBER is MAJOR*10000 + MINOR*100 + RELEASE (zstd.h), LZ4's likewise (lz4.h);
    the libraries were linked with -current_version of the same version."""
    for lib, prefix in ((ZSTD, "_ZSTD"), (LZ4, "_LZ4")):
        major, minor, patch = _packed_version(ios, lib)
        assert running.call(lib, prefix + "_versionNumber") == major * 10000 + minor * 100 + patch
        text = running.cstring(running.call(lib, prefix + "_versionString"))
        assert text == f"{major}.{minor}.{patch}".encode(), f"slide {running.slide:#x}"


def _inputs() -> list[bytes]:
    rng = random.Random(20210126)
    text = b"".join(b"line %d of a log that repeats itself, more or less\n" % (i % 37) for i in range(300))
    return [
        text,
        bytes(rng.randrange(256) for _ in range(5000)),  # incompressible
        bytes(20000),
        b"z",
        text[:1000] + bytes(rng.randrange(4) for _ in range(3000)) + text[:1000],
    ]


@pytest.mark.parametrize("level", [1, 3, 9, -5])
def test_zstd_compresses_what_python_decompresses(running: Running, level: int) -> None:
    python_module("zstandard")
    import zstandard

    for data in _inputs():
        src = running.put(0, data)
        bound = running.call(ZSTD, "_ZSTD_compressBound", len(data))
        # ZSTD_COMPRESSBOUND in zstd.h
        margin = ((128 << 10) - len(data)) >> 11 if len(data) < (128 << 10) else 0
        assert bound == len(data) + (len(data) >> 8) + margin
        n = running.call(ZSTD, "_ZSTD_compress", BUF + 0x40000, bound, src, len(data), level & 0xFFFFFFFF)
        assert running.call(ZSTD, "_ZSTD_isError", n) == 0, running.cstring(
            running.call(ZSTD, "_ZSTD_getErrorName", n)
        )
        frame = running.machine.read(BUF + 0x40000, n)
        assert zstandard.ZstdDecompressor().decompress(frame) == data, (level, len(data), running.slide)


def test_zstd_decompresses_what_python_compresses(running: Running) -> None:
    python_module("zstandard")
    import zstandard

    for i, data in enumerate(_inputs()):
        for level, checksum in ((1, False), (7, True), (19, True)):
            frame = zstandard.ZstdCompressor(level=level, write_checksum=checksum).compress(data)
            src = running.put(0, frame)
            n = running.call(ZSTD, "_ZSTD_decompress", BUF + 0x40000, 0x40000, src, len(frame))
            assert n == len(data), (i, level, hex(n))
            assert running.machine.read(BUF + 0x40000, n) == data


def test_zstd_reports_a_damaged_frame_as_python_does(running: Running) -> None:
    """A frame whose checksum no longer matches: both refuse it with zstd's own error text."""
    python_module("zstandard")
    import zstandard

    frame = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(_inputs()[0]))
    frame[-1] ^= 0xFF
    with pytest.raises(zstandard.ZstdError) as python_error:
        zstandard.ZstdDecompressor().decompress(bytes(frame))
    src = running.put(0, bytes(frame))
    code = running.call(ZSTD, "_ZSTD_decompress", BUF + 0x40000, 0x40000, src, len(frame))
    assert running.call(ZSTD, "_ZSTD_isError", code) == 1
    name = running.cstring(running.call(ZSTD, "_ZSTD_getErrorName", code)).decode()
    assert name and name in str(python_error.value)


def test_lz4_round_trips_with_python(running: Running) -> None:
    python_module("lz4")
    import lz4.block

    for data in _inputs():
        src = running.put(0, data)
        bound = running.call(LZ4, "_LZ4_compressBound", len(data))
        assert bound == len(data) + len(data) // 255 + 16  # LZ4_COMPRESSBOUND in lz4.h
        n = running.machine.call_int(
            running.fn(LZ4, "_LZ4_compress_default"), src, BUF + 0x40000, len(data), bound
        )
        assert n > 0
        block = running.machine.read(BUF + 0x40000, n)
        assert lz4.block.decompress(block, uncompressed_size=len(data)) == data
        for mode in ("default", "high_compression"):
            theirs = lz4.block.compress(data, mode=mode, store_size=False)
            src = running.put(0x80000, theirs)
            got = running.machine.call_int(
                running.fn(LZ4, "_LZ4_decompress_safe"), src, BUF + 0x40000, len(theirs), 0x40000
            )
            assert got == len(data), (mode, got)
            assert running.machine.read(BUF + 0x40000, got) == data
    # a block cut short is an error (a negative result), not a crash
    theirs = lz4.block.compress(_inputs()[0], store_size=False)
    src = running.put(0x80000, theirs[: len(theirs) // 2])
    assert (
        running.machine.call_int(running.fn(LZ4, "_LZ4_decompress_safe"), src, BUF, len(theirs) // 2, 0x40000)
        < 0
    )


def test_ncurses_unctrl_follows_xopen(running: Running) -> None:
    """unctrl(c) for the 7-bit characters: '^' and c ^ 0x40 for controls and DEL, else c."""
    unctrl = running.fn("/usr/lib/libncursesw.6.dylib", "_unctrl")
    for c in range(128):
        expected = f"^{chr(c ^ 0x40)}" if c < 32 or c == 127 else chr(c)
        assert running.cstring(running.machine.call(unctrl, c)) == expected.encode(), c


@pytest.mark.parametrize(
    "salt",
    [b"ab", b"$1$saltsalt$", b"$2b$04$abcdefghijklmnopqrstuu"],
    ids=["des", "md5", "bcrypt"],
)
def test_crypt_hashes_as_the_host_libcrypt_does(
    running: Running, salt: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import emulator

    monkeypatch.setattr(emulator, "MAX_INSNS", 50_000_000)  # bcrypt's key schedule: ~10 million
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # removed in Python 3.13
        python_module("crypt")
        import crypt

    key = running.put(0x2000, b"correct horse\0")
    setting = running.put(0x2100, salt + b"\0")
    got = running.cstring(running.call("/usr/lib/libcrypt.2.dylib", "_crypt", key, setting))
    assert got.decode() == crypt.crypt("correct horse", salt.decode())
