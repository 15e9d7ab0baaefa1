"""A real macOS 10.14 ``/usr/lib`` (x86_64, ld64-409: split seg v1, dyld-info opcodes with lazy
binding, re-exports, resolvers, weak C++ definitions, TLVs, ObjC) in a cache, with its real code
running.

The source (``../shared/data/real/macos10.14-x86_64-usr-lib``) lost its symlinks: some became text
files holding the link target, versioned files lost the link named by their install name, and the
frameworks and libobjc are absent. The session fixture copies it, turns the link texts back into
links, restores the install-name links and the well-known aliases of libSystem, adds stand-ins for
every missing library (tests/standins.py) and builds the cache at the default settings.

Oracles: the placement and every eviction come from the rules of cache-format.md §8.1 applied to
llvm-objdump-22's reading of each file (tests/apple_rules.py); the code runs in unicorn at a random
slide and is compared with Python's zlib, int(), str methods and math module; DyldExtractor extracts
every image with its log gate; ``dyldcache verify`` passes. The root as it comes (no stand-ins) is
built too: the missing libobjc must take libSystem and everything above it out, each with its reason.
"""

from __future__ import annotations

import functools
import math
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import objdump
import pytest
from apple_rules import apple_verdicts, resolve_in_root
from cache_fixtures import RawCache, RawSegment, slice_offset
from conftest import python_module, run_cli, shared_path, time_limit
from oracles import read_uleb, trie_lookup
from standins import MACOS_SYSTEM_ALIASES as SYSTEM_ALIASES
from standins import StandIn, prepare_macos_root

from dyldcache.builder.pipeline import BuildOptions, BuildResult, build_cache

SOURCE = ("data", "real", "macos10.14-x86_64-usr-lib")
ARCH = "x86_64"
LIBZ = "/usr/lib/libz.1.dylib"
LIBC = "/usr/lib/system/libsystem_c.dylib"
LIBM = "/usr/lib/system/libsystem_m.dylib"
PLATFORM = "/usr/lib/system/libsystem_platform.dylib"


@dataclass
class MacBuild:
    source: Path
    root: Path
    link_texts: dict[str, str]
    #: (install name, versioned file) of every install-name link restored
    install_name_links: list[tuple[str, str]]
    standins: list[StandIn]
    result: BuildResult

    @property
    def main(self) -> str:
        return str(self.result.files[0])


@pytest.fixture(scope="session")
def mac(tmp_path_factory: pytest.TempPathFactory) -> MacBuild:
    source = shared_path(*SOURCE)
    base = tmp_path_factory.mktemp("real-macos")
    root, texts, links, standins = prepare_macos_root(source, base)
    with time_limit(180):
        # Apple's rules: the oracle of the placement test is dyld-1162's
        result = build_cache(
            BuildOptions(arch=ARCH, output_dir=str(base / "cache"), root=str(root), apple_rules=True)
        )
    return MacBuild(source, root, texts, links, standins, result)


# ---------------------------------------------------------------------------------------------
# placement


def test_placement_and_every_eviction_follow_the_rules(mac: MacBuild) -> None:
    verdicts = apple_verdicts(mac.root, ARCH, "macos")
    assert sorted(mac.result.dylibs) == sorted(p for p, v in verdicts.items() if v.reason is None)
    ours = {e.path: e.reason for e in mac.result.evictions}
    for path, v in verdicts.items():
        if v.reason == "no-arch":  # a file with no x86_64 slice: our reason names the arch
            assert ARCH in ours[path] and path in ours, path
        elif v.reason:
            assert ours.get(path) == v.reason, path
    rule_based = {p for p, v in verdicts.items() if v.reason}
    # the rest of our evictions are the link texts that point at absent frameworks: dangling
    # links are not files, so they are reported as warnings, not evictions
    assert set(ours) == rule_based
    assert len(mac.result.dylibs) > 200, "nearly all of /usr/lib is placed"
    placed = set(mac.result.dylibs)
    for name in (
        LIBZ,
        LIBC,
        LIBM,
        PLATFORM,
        "/usr/lib/libSystem.B.dylib",
        "/usr/lib/libc++.1.dylib",
        "/usr/lib/libc++abi.dylib",
        "/usr/lib/libsqlite3.dylib",
        "/usr/lib/libxml2.2.dylib",
    ):
        assert name in placed, name


def test_the_root_as_it_comes_cascades_from_the_missing_libobjc(tmp_path: Path) -> None:
    """Without stand-ins libdispatch links libobjc (upward, not weak), so libdispatch goes, then
    libSystem, then everything that links libSystem: dyld-1162's self-containment, each with its
    reason, printed, and the JSON output lists every one."""
    source = shared_path(*SOURCE)
    verdicts = apple_verdicts(source, ARCH, "macos")
    proc = run_cli(
        "build", "--arch", ARCH, "--apple-rules", "--json", "-o", str(tmp_path / "out"), "--root", str(source)
    )
    expected_placed = sorted(p for p, v in verdicts.items() if v.reason is None)
    if expected_placed:
        import json

        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert sorted(doc["dylibs"]) == expected_placed
        evicted = {e["path"]: e["reason"] for e in doc["evictions"]}
    else:
        assert proc.returncode == 1
        evicted = {}
    assert (
        verdicts["/usr/lib/system/libdispatch.dylib"].reason
        == "Could not find dependency '/usr/lib/libobjc.A.dylib'"
    )
    assert verdicts["/usr/lib/libSystem.B.dylib"].reason is not None
    for path in ("/usr/lib/system/libdispatch.dylib", "/usr/lib/libSystem.B.dylib", LIBZ):
        line = f"Dylib located at '{path}' not placed in shared cache because: {verdicts[path].reason}"
        assert line in proc.stderr, path
        if evicted:
            assert evicted[path] == verdicts[path].reason


def test_aliases_from_symlinks(mac: MacBuild) -> None:
    raw = RawCache(mac.main)
    dylibs_trie = raw.read(raw.main.field("dylibsTrieAddr"), raw.main.field("dylibsTrieSize"))
    index = {p: i for i, (p, _) in enumerate(raw.images)}

    def trie(table: bytes, key: str) -> int | None:
        at = trie_lookup(table, key)
        return None if at is None else read_uleb(table, at)[0]

    # a chain of links (libc.dylib -> libSystem.dylib -> libSystem.B.dylib) ends at one image
    for alias in SYSTEM_ALIASES:
        target = (mac.root / alias.lstrip("/")).resolve()
        name = "/" + target.relative_to(mac.root.resolve()).as_posix()
        assert trie(dylibs_trie, alias) == index[name], alias
    # a versioned file is cached under its install name, and its file name is an alias
    checked = 0
    for name, file in mac.install_name_links:
        if name in index:
            assert trie(dylibs_trie, file) == index[name], file
            assert file not in index
            checked += 1
    assert checked >= 5, "several versioned files are placed under their install names"
    # and a link text the source stored became an alias when its target is here
    for alias in mac.link_texts:
        resolved = resolve_in_root(mac.root, alias)
        if resolved in index:
            assert trie(dylibs_trie, alias) == index[resolved], alias


# ---------------------------------------------------------------------------------------------
# readers


def test_dyldextractor_extracts_every_image(mac: MacBuild) -> None:
    python_module("DyldExtractor")
    from dyldextractor_gate import run_gate

    gate = run_gate(mac.main, arm64_fixers=False)
    assert sorted(gate.images) == sorted(mac.result.dylibs)
    assert gate.failures == {}


def test_verify_passes(mac: MacBuild) -> None:
    proc = run_cli("verify", mac.main)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inputs_read_by_llvm_objdump_as_the_rules_did(mac: MacBuild) -> None:
    """Every placed input's load commands are read by llvm-objdump without a warning (sanity for
    the oracle above, which reads them the same way)."""
    placed = [mac.root / p.lstrip("/") for p in mac.result.dylibs]
    objdump.prefetch([(p, ("--arch=x86_64", "--private-headers")) for p in placed if not p.is_symlink()])


# ---------------------------------------------------------------------------------------------
# the real code, in unicorn at a random slide

BUF = 0x6000_0000_0000


@pytest.fixture(scope="module")
def running(mac: MacBuild):  # type: ignore[no-untyped-def]
    python_module("unicorn")
    import emulator

    slide = random.Random(mac.main).randrange(1, 0x3F000) * 0x1000
    loaded = emulator.load_cache(mac.main, ARCH, slide)
    loaded.machine.map(BUF, 0x200000)
    return loaded


def _fn(running, image: str, symbol: str) -> int:  # type: ignore[no-untyped-def]
    addr = running.lookup(image, symbol)
    assert addr is not None, f"{symbol} not exported by {image}"
    return int(addr)


def test_libz_checksums_equal_pythons(running) -> None:  # type: ignore[no-untyped-def]
    m = running.machine
    rng = random.Random(7)
    crc32, adler32 = _fn(running, LIBZ, "_crc32"), _fn(running, LIBZ, "_adler32")
    for size in (0, 1, 7, 100, 4096, 65537):
        data = bytes(rng.randrange(256) for _ in range(size))
        m.write(BUF, data)
        assert m.call(crc32, 0, BUF, size) & 0xFFFFFFFF == zlib.crc32(data), size
        assert m.call(adler32, 1, BUF, size) & 0xFFFFFFFF == zlib.adler32(data), size
    version = m.call(_fn(running, LIBZ, "_zlibVersion"))
    text = m.read(version, 16).split(b"\0")[0].decode()
    current = objdump.dylibs_used(shared_path(*SOURCE, "usr/lib/libz.1.dylib"))[0][1]
    assert text in current, (text, current)


def test_libc_string_to_number_equals_python(running) -> None:  # type: ignore[no-untyped-def]
    m = running.machine
    atoi, strtol, strtoul = (_fn(running, LIBC, s) for s in ("_atoi", "_strtol", "_strtoul"))
    cases = [("42", 10), ("  -17xyz", 10), ("0x7fff", 16), ("777", 8), ("zz", 36), ("-0", 10), ("+123", 10)]
    for text, base in cases:
        m.write(BUF, text.encode() + b"\0")
        digits = text.strip().rstrip("xyz") if base == 10 else text
        want = int(digits, base)
        assert m.call(strtol, BUF, 0, base) == want & 0xFFFFFFFFFFFFFFFF, text
        if base == 10:
            assert m.call_int(atoi, BUF) == want, text
        if not text.strip().startswith("-"):
            assert m.call(strtoul, BUF, 0, base) == want, text


def test_libc_character_classes_equal_python(running) -> None:  # type: ignore[no-untyped-def]
    m = running.machine
    fns = {
        name: _fn(running, LIBC, "_" + name)
        for name in ("isdigit", "isalpha", "isspace", "toupper", "tolower")
    }
    for c in range(128):
        ch = chr(c)
        assert bool(m.call_int(fns["isdigit"], c)) == ch.isdigit(), c
        assert bool(m.call_int(fns["isalpha"], c)) == ch.isalpha(), c
        assert bool(m.call_int(fns["isspace"], c)) == (ch in " \t\n\v\f\r"), c
        assert m.call_int(fns["toupper"], c) == ord(ch.upper()), c
        assert m.call_int(fns["tolower"], c) == ord(ch.lower()), c


def test_platform_string_functions_through_resolvers(running) -> None:  # type: ignore[no-untyped-def]
    """libsystem_platform exports its string functions as stub-and-resolver entries: calls go
    through the stub and its lazy pointer, which the builder bound."""
    m = running.machine
    text = b"the quick brown fox\0"
    m.write(BUF, text)
    strlen = _fn(running, PLATFORM, "__platform_strlen")
    memchr = _fn(running, PLATFORM, "__platform_memchr")
    strcmp = _fn(running, PLATFORM, "__platform_strcmp")
    assert m.call(strlen, BUF) == len(text) - 1
    assert m.call(memchr, BUF, ord("b"), len(text)) == BUF + text.index(b"b")
    assert m.call(memchr, BUF, ord("Z"), len(text)) == 0
    m.write(BUF + 0x100, b"the quick brown fix\0")
    assert m.call_int(strcmp, BUF, BUF + 0x100) > 0
    assert m.call_int(strcmp, BUF, BUF) == 0


def test_libm_equals_pythons_math(running) -> None:  # type: ignore[no-untyped-def]
    m = running.machine
    cases = [
        ("_sqrt", (2.0,), math.sqrt(2.0)),
        ("_exp", (1.5,), math.exp(1.5)),
        ("_log", (10.0,), math.log(10.0)),
        ("_sin", (0.7,), math.sin(0.7)),
        ("_cos", (2.5,), math.cos(2.5)),
        ("_atan2", (1.0, -2.0), math.atan2(1.0, -2.0)),
        ("_pow", (1.7, 3.3), math.pow(1.7, 3.3)),
        ("_floor", (-2.5,), -3.0),
        ("_fmod", (10.5, 3.0), math.fmod(10.5, 3.0)),
    ]
    for name, args, want in cases:
        got = m.call_double(_fn(running, LIBM, name), *args)
        assert math.isclose(got, want, rel_tol=4e-16, abs_tol=0.0), (name, got, want)


def _listing(mac: MacBuild, name: str) -> objdump.Listing:
    path = (mac.root / name.lstrip("/")).resolve()
    with path.open("rb") as f:
        fat = f.read(4) == b"\xca\xfe\xba\xbe"
    return objdump.listing(path, ARCH if fat else None)


class Definitions:
    """Where each symbol of each input lives in the cache, read from llvm-objdump's export tries
    of the inputs (re-exports followed to the dylib llvm names) and the cache's segment table."""

    def __init__(self, mac: MacBuild, raw: RawCache) -> None:
        self.mac, self.raw = mac, raw
        self.placed = set(mac.result.dylibs)

    @functools.cache  # noqa: B019 - one instance per test
    def listing(self, name: str) -> objdump.Listing:
        return _listing(self.mac, name)

    @functools.cache  # noqa: B019
    def exports(self, name: str) -> dict[str, objdump.ObjExport]:
        return {e.name: e for e in self.listing(name).exports()}

    @functools.cache  # noqa: B019
    def headers(self, name: str) -> objdump.PrivateHeaders:
        return self.listing(name).private_headers()

    @functools.cache  # noqa: B019
    def deps(self, name: str) -> list[str]:
        return [
            c["name"].rsplit(" (offset ", 1)[0]
            for c in self.headers(name).commands
            if c.get("cmd")
            in ("LC_LOAD_DYLIB", "LC_LOAD_WEAK_DYLIB", "LC_REEXPORT_DYLIB", "LC_LOAD_UPWARD_DYLIB")
        ]

    def dep_named(self, name: str, short: str) -> str:
        """The dependency llvm-objdump calls ``short`` (resolved through the root's links), or
        the image itself for ordinal 0 ("this-image")."""
        if short == "this-image":
            return name
        dep = next((d for d in self.deps(name) if objdump.short_name_matches(d, short)), None)
        assert dep is not None, (name, short, self.deps(name))
        return dep if dep in self.placed else resolve_in_root(self.mac.root, dep) or dep

    @functools.cache  # noqa: B019
    def cached_segments(self, name: str) -> list[RawSegment]:
        return self.raw.segments(name)

    def to_cache(self, name: str, address: int) -> int:
        segs = zip(self.headers(name).segments, self.cached_segments(name), strict=True)
        for seg_in, seg_cached in segs:
            if seg_in.vmaddr <= address < seg_in.vmaddr + seg_in.vmsize:
                return address - seg_in.vmaddr + seg_cached.vmaddr
        raise AssertionError(f"{name}: {address:#x} is in no segment")

    def find(self, name: str, symbol: str, *, reexports: bool = True) -> int | None:
        """``symbol`` as ``name`` exports it: its own entry, then (unless only itself is asked)
        what it re-exports, as dyld searches."""
        if name not in self.placed:
            return None
        e = self.exports(name).get(symbol)
        if e is not None:
            if e.address is None:
                return self.find(self.dep_named(name, e.reexport_from or ""), e.import_name or symbol)
            if "absolute" in e.attributes:
                return e.address
            return self.to_cache(name, e.address)
        if reexports:
            for c in self.headers(name).commands_named("LC_REEXPORT_DYLIB"):
                dep = c["name"].rsplit(" (offset ", 1)[0]
                if dep not in self.placed:
                    dep = resolve_in_root(self.mac.root, dep) or dep
                found = self.find(dep, symbol)
                if found is not None:
                    return found
        return None


def test_every_bind_of_every_real_dylib_holds_its_definition(mac: MacBuild, running) -> None:  # type: ignore[no-untyped-def]
    """For every placed input, every bind, lazy bind and weak bind that llvm-objdump lists holds,
    in the cache after the emulator's slide, the address of the definition dyld would pick:
    through re-exported libraries (libSystem's parts), to stub-and-resolver stubs, missing weak
    imports null, and weak definitions coalesced to libc++ first, then the image itself
    (cache-format.md §8.2)."""
    raw = RawCache(mac.main)
    defs = Definitions(mac, raw)
    hosts = {n: (mac.root / n.lstrip("/")).resolve() for n in mac.result.dylibs}
    objdump.prefetch([(h, objdump.listing_flags(ARCH)) for h in hosts.values()])
    m, slide = running.machine, running.slide
    counts = {"bind": 0, "lazy": 0, "weak/libc++": 0, "weak/self": 0, "weak import": 0}
    for name in hosts:
        tables = defs.listing(name).tables()
        for row in objdump.parse_bind_table(tables):
            want = defs.find(defs.dep_named(name, row.dylib), row.symbol)
            got = m.read_u64(defs.to_cache(name, row.address) + slide)
            if want is None:
                assert row.weak_import and got == 0, (name, row.symbol)
                counts["weak import"] += 1
                continue
            assert got == want + row.addend + slide, (name, row.symbol)
            counts["bind"] += 1
        for _seg, _sect, address, dylib, symbol in objdump.parse_lazy_bind_table(tables):
            want = defs.find(defs.dep_named(name, dylib), symbol)
            got = m.read_u64(defs.to_cache(name, address) + slide)
            assert want is not None and got == want + slide, (name, symbol)
            counts["lazy"] += 1
        for _seg, _sect, address, addend, symbol in objdump.parse_weak_bind_table(tables):
            if address is None:
                continue
            want = defs.find("/usr/lib/libc++.1.dylib", symbol, reexports=False)
            where = "weak/libc++"
            if want is None:
                want, where = defs.find(name, symbol, reexports=False), "weak/self"
            if want is None:
                continue
            assert m.read_u64(defs.to_cache(name, address) + slide) == want + addend + slide, (name, symbol)
            counts[where] += 1
    assert counts["bind"] > 5000 and counts["lazy"] > 10000, counts
    assert counts["weak/libc++"] > 50 and counts["weak/self"] > 10, counts


def test_thread_local_variables_bind_to_the_tlv_bootstrap(mac: MacBuild, running) -> None:  # type: ignore[no-untyped-def]
    """libCRFSuite's __thread_vars descriptors: the thunk word binds to libdyld's
    _tlv_bootstrap, the key word stays 0, the offset word stays what the input holds."""
    name = "/usr/lib/libCRFSuite.dylib"
    assert name in mac.result.dylibs
    raw = RawCache(mac.main)
    defs = Definitions(mac, raw)
    sect = next(s for s in defs.headers(name).sections if s.sectname == "__thread_vars")
    bootstrap = defs.find("/usr/lib/system/libdyld.dylib", "__tlv_bootstrap")
    assert bootstrap is not None
    data = (mac.root / name.lstrip("/")).resolve().read_bytes()
    fat_offset = slice_offset(data, ARCH)
    m, slide = running.machine, running.slide
    assert sect.size and sect.size % 24 == 0
    for at in range(sect.addr, sect.addr + sect.size, 24):
        cached = defs.to_cache(name, at) + slide
        assert m.read_u64(cached) == bootstrap + slide
        assert m.read_u64(cached + 8) == 0
        file_at = fat_offset + sect.offset + (at - sect.addr)
        assert m.read_u64(cached + 16) == int.from_bytes(data[file_at + 16 : file_at + 24], "little")
