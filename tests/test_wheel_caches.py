"""The dylibs of eight macOS wheels from PyPI (tests/wheel_corpus.py ``CACHE_WHEELS``) in a cache,
as a user would build one: the wheels unpacked into a site-packages folder of a root, the system
libraries they link (libSystem, libc++, libz, libiconv, frameworks, ...) stood in for by stub
dylibs our linker makes from .tbd files (tests/standins.py, with real heap and string code), and
one install-name map line for delocate's ``/DLC/`` install names.

None of the wheel dylibs has split seg info (Apple's linkers write it only under /usr/lib and
/System/Library), their install names are outside Apple's shared-cache locations, and they load
each other through @loader_path and @rpath: every one needs what issue 8 added.

Oracles: llvm-objdump-22 says which files are dylibs and that none has split seg info; real
functions of the placed libraries run in unicorn at a random slide and must give Python's
results (zlib, hashlib, and CRC-64 written from its definition); DyldExtractor extracts every
image; ``dyldcache verify`` passes.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import objdump
import pytest
import split_seg_coverage as cov
from apple_rules import headers, id_name, machos
from cache_fixtures import RawCache, random_slide
from conftest import python_module, run_cli
from standins import STANDIN_OBJECTS, StandIn, make_standins
from wheel_corpus import CACHE_WHEELS, wheel_folders

from dyldcache.builder.pipeline import BuildOptions, BuildResult, build_cache
from dyldcache.errors import SplitSegSynthesisError
from dyldcache.macho.file import open_macho
from dyldcache.synth import synthesize_split_seg

ARCHS = ("arm64", "x86_64")
SITE = "/usr/local/lib/python3.11/site-packages"
#: delocate names each bundled dylib /DLC/<package>/.dylibs/<file>; the wheel is unpacked at SITE
NAME_MAP = f"/DLC/ -> {SITE}/\n"
#: the share of the wheel dylibs that must be placed (issue 8)
PLACED_SHARE = 0.95
LOAD_COMMANDS = {0xC: "load", 0x80000018: "weak", 0x8000001F: "reexport", 0x80000023: "upward"}


@dataclass
class WheelBuild:
    arch: str
    root: Path
    #: install path -> host path of every MH_DYLIB of the wheels (llvm-objdump's filetype)
    dylibs: dict[str, Path]
    #: install path -> install name (as linked) of the same
    names: dict[str, str]
    standins: list[StandIn]
    result: BuildResult

    @property
    def main(self) -> str:
        return str(self.result.files[0])

    @property
    def placed(self) -> list[str]:
        return sorted(set(self.dylibs) & set(self.result.dylibs))


def _unpack(folders: list[Path], site: Path) -> None:
    for folder in folders:
        for image in machos(folder):
            dest = site / image.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, dest)


@pytest.fixture(scope="module", params=ARCHS)
def wheels(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> WheelBuild:
    arch = request.param
    folders = wheel_folders(CACHE_WHEELS[arch])
    base = tmp_path_factory.mktemp(f"wheels-{arch}")
    root = base / "root"
    _unpack(folders, root / SITE.lstrip("/"))
    heads = headers(machos(root), arch)
    dylibs = {
        "/" + p.relative_to(root).as_posix(): p for p, ph in heads.items() if ph and ph.header[4] == "DYLIB"
    }
    names = {path: id_name(heads[host]) or "" for path, host in dylibs.items()}
    standins = make_standins(root, arch, "macos", base / "stubs", [STANDIN_OBJECTS[arch]])
    name_map = base / "names.map"
    name_map.write_text(NAME_MAP, encoding="utf-8")
    result = build_cache(
        BuildOptions(arch=arch, output_dir=str(base / "out"), root=str(root), install_name_map=str(name_map))
    )
    return WheelBuild(arch, root, dylibs, names, standins, result)


def test_the_corpus_is_what_issue_8_asks_for(wheels: WheelBuild) -> None:
    """At least 8 wheels and 40 dylibs per arch, none with split seg info, none with an install
    name in Apple's shared-cache locations."""
    assert len(CACHE_WHEELS[wheels.arch]) >= 8
    assert len(wheels.dylibs) >= 40
    objdump.prefetch([(p, ("--private-headers",)) for p in wheels.dylibs.values() if not _fat(p)])
    for path, host in wheels.dylibs.items():
        if _fat(host):
            continue  # llvm-objdump reads one slice at a time; the thin ones cover the rule
        assert objdump.private_headers(host).commands_named("LC_SEGMENT_SPLIT_INFO") == [], path
    assert not [n for n in wheels.names.values() if n.startswith(("/usr/lib/", "/System/Library/"))]
    assert any(n.startswith("@rpath/") for n in wheels.names.values())


def _fat(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\xca\xfe\xba\xbe"


def _placed_share(wheels: WheelBuild) -> float:
    return len(wheels.placed) / len(wheels.dylibs)


def test_placed_share(wheels: WheelBuild) -> None:
    assert _placed_share(wheels) >= PLACED_SHARE, _unplaced(wheels)


def _unplaced(wheels: WheelBuild) -> dict[str, str]:
    reasons = {e.path: e.reason for e in wheels.result.evictions}
    return {p: reasons.get(p, "?") for p in wheels.dylibs if p not in wheels.result.dylibs}


_REFUSED = re.compile(r"^no split seg info, and it cannot be synthesized: .+: __\w+,__\w+\+0x[0-9a-f]+: \S")
_STRANDED = re.compile(r"^Depends on dylib '/.+' which was evicted from the cache$")


def test_every_dylib_not_placed_has_a_named_reason(wheels: WheelBuild) -> None:
    """A refusal names the section and offset; anything else is a dependency that was evicted."""
    for path, reason in _unplaced(wheels).items():
        assert _REFUSED.match(reason) or _STRANDED.match(reason), (path, reason)
    assert sorted(wheels.result.synthesized) == sorted(wheels.placed), "every wheel dylib needed synthesis"
    assert {s.install_name for s in wheels.standins} <= set(wheels.result.dylibs)


#: an LLVM jump-table dispatch in llvm-objdump's text: range check, table base, entry load
_DISPATCH = re.compile(
    r"cmpl\t\$0x([0-9a-f]+), %\w+\n\s+[0-9a-f]+:\tja\t.*\n"
    r"\s+[0-9a-f]+:\tleaq\t0x([0-9a-f]+)\(%rip\), %(\w+)\n"
    r"\s+([0-9a-f]+):\tmovslq\t\(%\3,%r\w+,4\)"
)


def test_x86_64_jump_table_entry_into_another_segment_is_refused(tmp_path: Path) -> None:
    """h5py's zlib (x86_64, no data-in-code) has jump tables in __text. llvm-objdump gives the
    first: its base (the ``lea`` before ``movslq (base,index,4)``) and its length (``cmpl $n`` +
    ``ja``: n + 1 entries). Its bytes are data: no synthesized entry lies in them. An entry
    rewritten to reach __DATA (first, last, or far outside the image) refuses the dylib,
    naming the table's section and offset: such an entry would change when segments move."""
    (folder,) = [f for f in wheel_folders(CACHE_WHEELS["x86_64"]) if f.name.startswith("h5py-")]
    src = folder / "h5py" / ".dylibs" / "libz.1.3.2.dylib"
    found = _DISPATCH.search(objdump.run(src, "-d", "--no-show-raw-insn"))
    assert found is not None
    count, table = int(found.group(1), 16) + 1, int(found.group(2), 16) + int(found.group(4), 16)
    data = src.read_bytes()
    lay = cov.layout(data)
    text = lay.names.index("__TEXT,__text")
    data_start = lay.segments[lay.segment[lay.names.index("__DATA,__data")]][0]
    assert lay.segment_of(table) == lay.segment[text]
    entries = synthesize_split_seg(open_macho(src))
    fields = [lay.addr[f] + fo for _, f, _, fo, _ in entries.tolist()]
    assert fields and not [a for a in fields if table <= a < table + 4 * count]
    (sect,) = [
        s for s in objdump.private_headers(src).sections if (s.segname, s.sectname) == ("__TEXT", "__text")
    ]
    at = sect.offset + table - sect.addr
    for k, target in ((0, data_start), (count - 1, data_start + 8), (count // 2, table - (1 << 28))):
        mutated = bytearray(data)
        struct.pack_into("<i", mutated, at + 4 * k, target - table)
        path = tmp_path / f"libz-{k}.dylib"
        path.write_bytes(bytes(mutated))
        with pytest.raises(SplitSegSynthesisError) as err:
            synthesize_split_seg(open_macho(path))
        assert err.value.section == "__TEXT,__text", err.value
        assert err.value.offset == table - sect.addr, err.value
        assert "another segment" in err.value.message, err.value


def _loads(raw: RawCache, name: str) -> list[tuple[str, str]]:
    out = []
    for cmd, body in raw.load_commands(name):
        if cmd in LOAD_COMMANDS:
            (offset,) = struct.unpack_from("<I", body, 8)
            out.append((LOAD_COMMANDS[cmd], body[offset:].split(b"\0", 1)[0].decode()))
    return out


def test_cached_loads_reach_cached_dylibs(wheels: WheelBuild) -> None:
    """Every load of a placed wheel dylib names a dylib of the cache: by its absolute path, or,
    where the longer names do not fit in the load commands (a warning says which), relative to
    the dylib itself, which dyld resolves against its cache path."""
    raw = RawCache(wheels.main)
    cached = {p for p, _ in raw.images}
    relative_ok = {w.split(":", 1)[0] for w in wheels.result.warnings if "written relative to it" in w}
    for name in wheels.placed:
        for kind, load in _loads(raw, name):
            if load.startswith("@loader_path/"):
                assert name in relative_ok, (name, load)
                load = posixpath.normpath(
                    posixpath.join(posixpath.dirname(name), load[len("@loader_path/") :])
                )
            assert load in cached or kind == "weak", (name, load)


def test_dyldextractor_extracts_every_image(wheels: WheelBuild, tmp_path: Path) -> None:
    python_module("DyldExtractor")
    from dyldextractor_gate import run_gate

    gate = run_gate(wheels.main, arm64_fixers=wheels.arch != "x86_64", outdir=tmp_path)
    assert sorted(gate.extracted) == sorted(wheels.result.dylibs)
    # DyldExtractor looks a load's name up in the cache as it is: it does not resolve the
    # @loader_path names written where absolute ones do not fit (dyld does)
    relative = {w.split(":", 1)[0] for w in wheels.result.warnings if "written relative to it" in w}
    unresolved = re.compile(r"^Unable to find dependency: b'@loader_path/[^']+'$")
    for name, messages in gate.failures.items():
        assert name in relative and all(unresolved.match(m) for m in messages), (name, messages)


def test_verify_passes(wheels: WheelBuild) -> None:
    proc = run_cli("verify", wheels.main)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# real code of the wheels, in unicorn at a random slide

BUF = 0x6000_0000  # scratch memory for arguments and results
BUF_SIZE = 0x200000


@dataclass
class Running:
    loaded: Any
    wheels: WheelBuild
    slide: int
    initialized: set[str] = field(default_factory=set)

    def fn(self, suffix: str, symbol: str) -> int:
        """``symbol`` of the placed dylib whose install path ends with ``suffix`` (a test of a
        library that synthesis refused on this arch skips: the placement tests count those)."""
        found = [p for p in self.wheels.placed if p.endswith(suffix)]
        if not found:
            pytest.skip(f"{suffix} is not placed on {self.wheels.arch}")
        (name,) = found
        if name not in self.initialized:  # dyld runs a dylib's initializers before any call
            self.initialized.add(name)
            for init in self.loaded.initializers(name):
                self.loaded.machine.call(init)
        addr = self.loaded.lookup(name, symbol)
        assert addr is not None, f"{symbol} is not exported by {name}"
        return int(addr)

    def call(self, suffix: str, symbol: str, *args: int) -> int:
        return int(self.loaded.machine.call(self.fn(suffix, symbol), *args))

    def put(self, offset: int, data: bytes) -> int:
        self.loaded.machine.write(BUF + offset, data)
        return BUF + offset

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.loaded.machine.read(BUF + offset, size))

    def cstring(self, addr: int) -> bytes:
        raw = bytes(self.loaded.machine.read(addr, 256))
        return raw[: raw.index(0)]


@pytest.fixture(scope="module")
def running(wheels: WheelBuild) -> Running:
    python_module("unicorn")
    import emulator

    slide = random_slide(wheels.main)
    loaded = emulator.load_cache(wheels.main, wheels.arch, slide)
    loaded.machine.map(BUF, BUF_SIZE)
    return Running(loaded, wheels, slide)


def _samples() -> list[bytes]:
    text = b"".join(b"line %d of a log that repeats itself\n" % (i % 23) for i in range(400))
    return [b"", b"a", bytes(range(256)) * 9, text, os.urandom(3000)]


#: pillow's zlib: zlib-ng in zlib-compatible mode on arm64, zlib itself on x86_64
ZLIB = {"arm64": "/PIL/.dylibs/libz.1.3.1.zlib-ng.dylib", "x86_64": "/PIL/.dylibs/libz.1.3.1.dylib"}
LZMA = "/PIL/.dylibs/liblzma.5.dylib"
PNG = "/PIL/.dylibs/libpng16.16.dylib"
SODIUM = "/zmq/.dylibs/libsodium.26.dylib"


def test_zlib_checksums_and_compression_equal_pythons(running: Running) -> None:
    lib = ZLIB[running.wheels.arch]
    for data in _samples():
        src = running.put(0, data)
        assert running.call(lib, "_crc32", 0, src, len(data)) & 0xFFFFFFFF == zlib.crc32(data), running.slide
        assert running.call(lib, "_adler32", 1, src, len(data)) & 0xFFFFFFFF == zlib.adler32(data)
        # compress2(dest, &destLen, source, sourceLen, level): zlib's own format, which Python reads
        size_at = running.put(0x10000, struct.pack("<Q", 0x40000))
        dest = BUF + 0x20000
        assert running.call(lib, "_compress2", dest, size_at, src, len(data), 6) == 0  # Z_OK
        (n,) = struct.unpack("<Q", running.read(0x10000, 8))
        assert zlib.decompress(running.read(0x20000, n)) == data
        # and uncompress what Python compressed
        theirs = running.put(0x80000, zlib.compress(data, 9))
        running.put(0x10000, struct.pack("<Q", 0x40000))
        assert running.call(lib, "_uncompress", dest, size_at, theirs, len(zlib.compress(data, 9))) == 0
        (n,) = struct.unpack("<Q", running.read(0x10000, 8))
        assert running.read(0x20000, n) == data
    # the library reports the zlib version it is (compatible with), and its file is named after it
    assert running.cstring(running.call(lib, "_zlibVersion")).decode() in lib


def _crc64_xz(data: bytes) -> int:
    """CRC-64/XZ (ECMA-182 polynomial, reflected, initial and final value all ones)."""
    poly, crc = 0xC96C5795D7870F42, 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (poly if crc & 1 else 0)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def test_lzma_checksums_equal_pythons(running: Running) -> None:
    assert _crc64_xz(b"123456789") == 0x995DC9BBDF1939FA  # the catalogue's check value
    for data in _samples():
        src = running.put(0, data)
        assert running.call(LZMA, "_lzma_crc32", src, len(data), 0) & 0xFFFFFFFF == zlib.crc32(data)
        assert running.call(LZMA, "_lzma_crc64", src, len(data), 0) == _crc64_xz(data)


def test_png_signature_check(running: Running) -> None:
    """png_sig_cmp(sig, start, n) is 0 for the PNG signature (PNG spec 5.2), non-zero otherwise."""
    signature = b"\x89PNG\r\n\x1a\n"
    assert running.call(PNG, "_png_sig_cmp", running.put(0, signature), 0, 8) == 0
    for broken in (b"\x89PNG\r\n\x1a\x0b", b"GIF89a\0\0", bytes(8)):
        assert running.call(PNG, "_png_sig_cmp", running.put(0, broken), 0, 8) != 0


def test_libsodium_hashes_equal_hashlib(running: Running) -> None:
    import hashlib

    for data in _samples():
        src = running.put(0, data)
        assert running.call(SODIUM, "_crypto_hash_sha256", BUF + 0x100000, src, len(data)) == 0
        assert running.read(0x100000, 32) == hashlib.sha256(data).digest()
        assert running.call(SODIUM, "_crypto_hash_sha512", BUF + 0x100000, src, len(data)) == 0
        assert running.read(0x100000, 64) == hashlib.sha512(data).digest()
