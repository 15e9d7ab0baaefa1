"""Caches built once per test session from the example dylibs, and a raw reader of their files.

:data:`CACHES` declares every distinct cache the cache-builder tests use; the session fixture
``cache_factory`` (tests/conftest.py) links each root and builds each cache on first use, and
runs the costly oracles (DyldExtractor, emulation) once per cache.

:class:`RawCache` reads cache files with ``struct`` at the offsets of docs/cache-format.md §1-§2,
independently of ``dyldcache.cache``: the tests' expected values must not come from the reader
they check.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from oracles import read_uleb

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# ---------------------------------------------------------------------------------------------
# the native oracle (shared with test_native_harness: one gcc build per session)


def native_harness() -> ModuleType:
    name = "fixtures_native_harness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FIXTURES / "native_harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fixture_install_names() -> dict[str, str]:
    """object name (liba, ...) -> install name, from expected.json."""
    doc = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
    return {name: info["install_name"] for name, info in doc["dylibs"].items()}


# ---------------------------------------------------------------------------------------------
# raw cache files (docs/cache-format.md §1.1, §2.1-§2.5)

#: header field -> (offset, struct format), from the dyld-1162 field table
HEADER_FIELDS: dict[str, tuple[int, str]] = {
    "magic": (0x000, "16s"),
    "mappingOffset": (0x010, "I"),
    "mappingCount": (0x014, "I"),
    "imagesOffsetOld": (0x018, "I"),
    "imagesCountOld": (0x01C, "I"),
    "codeSignatureOffset": (0x028, "Q"),
    "codeSignatureSize": (0x030, "Q"),
    "localSymbolsOffset": (0x048, "Q"),
    "localSymbolsSize": (0x050, "Q"),
    "uuid": (0x058, "16s"),
    "cacheType": (0x068, "Q"),
    "imagesTextOffset": (0x088, "Q"),
    "imagesTextCount": (0x090, "Q"),
    "platform": (0x0D8, "I"),
    "formatBits": (0x0DC, "I"),
    "sharedRegionStart": (0x0E0, "Q"),
    "sharedRegionSize": (0x0E8, "Q"),
    "maxSlide": (0x0F0, "Q"),
    "dylibsTrieAddr": (0x108, "Q"),
    "dylibsTrieSize": (0x110, "Q"),
    "mappingWithSlideOffset": (0x138, "I"),
    "mappingWithSlideCount": (0x13C, "I"),
    "subCacheArrayOffset": (0x188, "I"),
    "subCacheArrayCount": (0x18C, "I"),
    "symbolFileUUID": (0x190, "16s"),
    "imagesOffset": (0x1C0, "I"),
    "imagesCount": (0x1C4, "I"),
    "cacheSubType": (0x1C8, "I"),
    "dynamicDataOffset": (0x1F0, "Q"),
    "dynamicDataMaxSize": (0x1F8, "Q"),
}


@dataclass(frozen=True)
class RawMapping:
    address: int
    size: int
    file_offset: int
    slide_info_offset: int
    slide_info_size: int
    flags: int
    max_prot: int
    init_prot: int

    @property
    def end(self) -> int:
        return self.address + self.size


class RawFile:
    """One cache file: its bytes, header fields and mappings (mapping_and_slide_info array)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.data = Path(path).read_bytes()
        count = self.field("mappingWithSlideCount")
        at = self.field("mappingWithSlideOffset")
        self.mappings = [
            RawMapping(*struct.unpack_from("<6Q2I", self.data, at + 56 * i)) for i in range(count)
        ]

    def field(self, name: str) -> Any:
        """A header field; one past the end of an older, shorter header (mappingOffset) reads as 0."""
        off, fmt = HEADER_FIELDS[name]
        if off >= struct.unpack_from("<I", self.data, 0x10)[0]:
            return b"" if fmt.endswith("s") else 0
        return struct.unpack_from("<" + fmt, self.data, off)[0]

    def plain_mappings(self) -> list[tuple[int, int, int, int, int]]:
        """The dyld_cache_mapping_info array: (address, size, fileOffset, maxProt, initProt)."""
        at, count = self.field("mappingOffset"), self.field("mappingCount")
        return [struct.unpack_from("<3Q2I", self.data, at + 32 * i) for i in range(count)]


@dataclass(frozen=True)
class RawSubcacheEntry:
    uuid: bytes
    vm_offset: int
    suffix: str


@dataclass(frozen=True)
class RawSegment:
    name: str
    vmaddr: int
    vmsize: int
    fileoff: int
    filesize: int


class RawCache:
    """A main file, the subcaches its header lists and the .symbols file named by symbolFileUUID."""

    def __init__(self, main_path: str | Path) -> None:
        self.main = RawFile(main_path)
        m = self.main
        self.entries = []
        at = m.field("subCacheArrayOffset")
        for i in range(m.field("subCacheArrayCount")):
            uuid, vm_offset, suffix = struct.unpack_from("<16sQ32s", m.data, at + 56 * i)
            self.entries.append(RawSubcacheEntry(uuid, vm_offset, suffix.split(b"\0")[0].decode()))
        self.subcaches = [RawFile(str(main_path) + e.suffix) for e in self.entries]
        self.symbols: RawFile | None = None
        if any(m.field("symbolFileUUID")):
            self.symbols = RawFile(str(main_path) + ".symbols")
        ioff, icount = m.field("imagesOffset"), m.field("imagesCount")
        if not icount:  # headers before dyld-940 keep the image array in the old fields
            ioff, icount = m.field("imagesOffsetOld"), m.field("imagesCountOld")
        self.images: list[tuple[str, int]] = []
        for i in range(icount):
            addr, _mtime, _inode, path_off = struct.unpack_from("<3QI", m.data, ioff + 32 * i)
            path = m.data[path_off : m.data.index(b"\0", path_off)].decode()
            self.images.append((path, addr))

    @property
    def files(self) -> list[RawFile]:
        """Mapped files: main first, then the listed subcaches (not .symbols)."""
        return [self.main, *self.subcaches]

    @property
    def base(self) -> int:
        return int(self.main.field("sharedRegionStart"))

    def locate(self, address: int) -> tuple[RawFile, RawMapping]:
        for f in self.files:
            for mp in f.mappings:
                if mp.address <= address < mp.end:
                    return f, mp
        raise KeyError(f"{address:#x} is in no mapping")

    def read(self, address: int, size: int) -> bytes:
        f, mp = self.locate(address)
        off = mp.file_offset + address - mp.address
        return f.data[off : off + size]

    def image_address(self, install_name: str) -> int:
        return dict(self.images)[install_name]

    def load_commands(self, install_name: str) -> list[tuple[int, bytes]]:
        """(cmd, bytes) of every load command of a cached image."""
        addr = self.image_address(install_name)
        hdr = self.read(addr, 32)
        magic, _cpu, _sub, _ft, ncmds, sizeofcmds = struct.unpack_from("<6I", hdr)
        assert magic == 0xFEEDFACF, f"{install_name}: magic {magic:#x}"
        raw = self.read(addr + 32, sizeofcmds)
        out, off = [], 0
        for _ in range(ncmds):
            cmd, size = struct.unpack_from("<II", raw, off)
            out.append((cmd, raw[off : off + size]))
            off += size
        return out

    def segments(self, install_name: str) -> list[RawSegment]:
        return [parse_segment(body) for cmd, body in self.load_commands(install_name) if cmd == 0x19]

    def symtab(self, install_name: str) -> list[tuple[str, int, int, int]]:
        """The cached image's nlist entries: (name, n_type, n_sect, n_value).

        symoff/stroff are file offsets in the file holding the image's __LINKEDIT (§13).
        """
        cmds = self.load_commands(install_name)
        le = next(s for s in self.segments(install_name) if s.name == "__LINKEDIT")
        f, _ = self.locate(le.vmaddr)
        body = next(b for c, b in cmds if c == 0x2)  # LC_SYMTAB
        symoff, nsyms, stroff, strsize = struct.unpack_from("<4I", body, 8)
        return read_nlists(f.data, symoff, nsyms, f.data[stroff : stroff + strsize])


def parse_segment(body: bytes) -> RawSegment:
    name = body[8:24].split(b"\0")[0].decode()
    vmaddr, vmsize, fileoff, filesize = struct.unpack_from("<4Q", body, 24)
    return RawSegment(name, vmaddr, vmsize, fileoff, filesize)


def read_nlists(data: bytes, symoff: int, nsyms: int, strings: bytes) -> list[tuple[str, int, int, int]]:
    out = []
    for i in range(nsyms):
        strx, n_type, n_sect, _desc, value = struct.unpack_from("<IBBhQ", data, symoff + 16 * i)
        end = strings.find(b"\0", strx)
        out.append((strings[strx:end].decode(), n_type, n_sect, value))
    return out


#: fat_arch cputype per arch (mach/machine.h)
FAT_CPU_TYPES = {"x86_64": 0x01000007, "arm64": 0x0100000C}


def slice_offset(data: bytes, arch: str) -> int:
    """File offset of ``arch``'s slice in a fat file (fat.h, big-endian), 0 for a thin file."""
    if data[:4] != b"\xca\xfe\xba\xbe":
        return 0
    cpu = FAT_CPU_TYPES[arch]
    for i in range(int.from_bytes(data[4:8], "big")):
        rec = data[8 + 20 * i : 28 + 20 * i]
        if int.from_bytes(rec[0:4], "big") == cpu and int.from_bytes(rec[4:8], "big") & 0xFF == 3:
            return int.from_bytes(rec[8:12], "big")
    raise AssertionError(f"no {arch} slice")


def input_segments(path: str | Path, arch: str = "") -> list[RawSegment]:
    """Segments of an input (standalone) dylib, from its load commands (a fat file: of its
    ``arch`` slice)."""
    data = Path(path).read_bytes()
    if arch:
        data = data[slice_offset(data, arch) :]
    _magic, _cpu, _sub, _ft, ncmds, _size = struct.unpack_from("<6I", data)
    out, off = [], 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == 0x19:
            out.append(parse_segment(data[off : off + size]))
        off += size
    return out


def input_symtab(path: str | Path) -> list[tuple[str, int, int, int]]:
    data = Path(path).read_bytes()
    _magic, _cpu, _sub, _ft, ncmds, _size = struct.unpack_from("<6I", data)
    off = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == 0x2:
            symoff, nsyms, stroff, strsize = struct.unpack_from("<4I", data, off + 8)
            return read_nlists(data, symoff, nsyms, data[stroff : stroff + strsize])
        off += size
    return []


def slide_of(segments_in: list[RawSegment], segments_cached: list[RawSegment], address: int) -> int:
    """How far the segment holding input ``address`` moved into the cache (§13)."""
    cached = {s.name: s for s in segments_cached}
    for exact in (True, False):
        for s in segments_in:
            if s.name == "__LINKEDIT" or s.name not in cached:
                continue
            end_ok = address < s.vmaddr + s.vmsize if exact else address <= s.vmaddr + s.vmsize
            if s.vmaddr <= address and end_ok:
                return cached[s.name].vmaddr - s.vmaddr
    raise KeyError(f"input address {address:#x} is in no segment")


# ---------------------------------------------------------------------------------------------
# what the tests build


@dataclass(frozen=True)
class CacheSpec:
    arch: str
    platform: str = "macos"
    fixups: str = "chained"
    #: "examples", or "evictions" (the examples plus dylibs the builder must evict)
    root: str = "examples"
    subcache_text_limit: int | None = None
    unmap_locals: bool | None = None
    #: split seg info version of the linked inputs (1: x86_64 only, as ld64 links by default)
    split_seg: int = 2
    #: opcode fixups with lazy binding (__la_symbol_ptr + __stub_helper), as ld64 linked before
    #: chained fixups
    lazy: bool = False
    #: dyld-1162's eligibility exactly (--apple-rules): the evictions roots test Apple's rules
    apple_rules: bool = False

    @property
    def slide_version(self) -> int:
        if self.arch != "arm64e":
            return 2
        return 3 if self.platform == "ios" else 5


#: every cache the cache-builder tests build, once per session
CACHES: dict[str, CacheSpec] = {
    "arm64": CacheSpec("arm64"),
    "x86_64": CacheSpec("x86_64"),
    "arm64-opcodes": CacheSpec("arm64", fixups="opcodes"),
    "x86_64-opcodes": CacheSpec("x86_64", fixups="opcodes"),
    "arm64-evictions": CacheSpec("arm64", root="evictions", apple_rules=True),
    "x86_64-evictions": CacheSpec("x86_64", root="evictions", apple_rules=True),
    "arm64-ios": CacheSpec("arm64", "ios"),
    "arm64e-ios": CacheSpec("arm64e", "ios"),
    "arm64e-macos": CacheSpec("arm64e", "macos"),
    "arm64-multi": CacheSpec("arm64", subcache_text_limit=0x2000),
    "x86_64-multi": CacheSpec("x86_64", subcache_text_limit=0x2000),
    "arm64e-ios-multi": CacheSpec("arm64e", "ios", subcache_text_limit=0x2000),
    "arm64e-macos-multi": CacheSpec("arm64e", "macos", subcache_text_limit=0x2000),
    "arm64e-ios-keep-locals": CacheSpec("arm64e", "ios", unmap_locals=False),
    "x86_64-v1": CacheSpec("x86_64", split_seg=1),
    "x86_64-v1-opcodes": CacheSpec("x86_64", fixups="opcodes", split_seg=1),
    # how macOS 10.x-11 x86_64 dylibs come: v1, opcodes, lazy binding
    "x86_64-lazy": CacheSpec("x86_64", fixups="opcodes", split_seg=1, lazy=True),
    "arm64-lazy": CacheSpec("arm64", fixups="opcodes", lazy=True),
}

#: install names of the dylibs the "evictions" root adds, by case (see add_eviction_cases)
EVICTION_CASES = {
    # (a) links against a stub of a dylib that is in no root
    "missing_dependency": "/usr/lib/libfxorphan.dylib",
    # (b) install name outside the shared cache locations, installed at another path
    "install_name_mismatch": "/usr/lib/libfxopt.dylib",
    # (b') installed outside the shared cache locations (Apple's rules only)
    "ineligible_path": "/opt/lib/libfxopt.dylib",
    # (c) a copy of libfxa with a load command's cmdsize patched
    "corrupt_load_command": "/usr/lib/libfxcorrupt.dylib",
    # (d) re-exports (a): evicted only once (a) is, by the fixed point (it sorts before (a), so
    # the first pass over the dylibs still sees (a) as a candidate)
    "depends_on_evicted": "/usr/lib/libfxclient.dylib",
    # (e) a copy of libfxa (under its own install name) cut in the middle of its LINKEDIT
    "truncated": "/usr/lib/libfxtrunc.dylib",
    # (f) libfxa (own install name) whose first split seg v2 entry says ARM_MOVW_MOVT (32-bit ARM)
    "unsupported_split_seg_kind": "/usr/lib/libfxmovw.dylib",
    # (g) a fat file holding only a slice of the other architecture
    "fat_without_arch": "/usr/lib/libfxfat.dylib",
    # (h) binds _fxa_* to libfxcycle1, which does not export them: the search goes round the
    # re-export cycle libfxcycle1 <-> libfxcycle2, ends, and finds nothing
    "symbol_not_found_in_cycle": "/usr/lib/libfxcycleclient.dylib",
}
#: dylibs that re-export each other (legal, as libSystem and its parts link each other): placed
CYCLE_DYLIBS = ("/usr/lib/libfxcycle1.dylib", "/usr/lib/libfxcycle2.dylib")
#: the dylib (a) depends on; nothing provides it
GHOST_DYLIB = "/usr/lib/libfxghost.dylib"


def add_eviction_cases(root: str, arch: str, scratch: str) -> None:
    """Add to an examples root the dylibs of EVICTION_CASES (linked with our linker)."""
    from dyldcache.examples import OBJ_DIR, TBD_DIR
    from dyldcache.link.linker import LinkInput, LinkOptions, link
    from dyldcache.macho.file import open_macho
    from dyldcache.macho.tbd import format_tbd

    lib = os.path.join(root, "usr", "lib")
    system = os.path.join(lib, "libSystem.B.dylib")
    obj = OBJ_DIR / arch

    def put(install_name: str, path: str, inputs: list[LinkInput]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        link(LinkOptions(arch=arch, output=path, install_name=install_name, inputs=inputs))

    def at(install_path: str) -> str:
        return os.path.join(root, install_path.lstrip("/"))

    ghost = os.path.join(scratch, "ghost.tbd")
    with open(ghost, "w", encoding="utf-8") as f:
        f.write(
            format_tbd(GHOST_DYLIB, [f"{arch}-macos"], sorted(e.name for e in open_macho(system).exports))
        )
    orphan = EVICTION_CASES["missing_dependency"]
    put(orphan, at(orphan), [LinkInput(str(obj / "liba.o")), LinkInput(ghost)])
    client = EVICTION_CASES["depends_on_evicted"]
    put(
        client,
        at(client),
        [LinkInput(str(obj / "libc.o")), LinkInput(at(orphan), "reexport"), LinkInput(system)],
    )
    put(
        "/opt/lib/libfxopt.dylib",
        at(EVICTION_CASES["install_name_mismatch"]),
        [LinkInput(str(obj / "liba.o")), LinkInput(system)],
    )
    opt = EVICTION_CASES["ineligible_path"]
    put(opt, at(opt), [LinkInput(str(obj / "liba.o")), LinkInput(system)])
    trunc = EVICTION_CASES["truncated"]
    put(trunc, at(trunc), [LinkInput(str(obj / "liba.o")), LinkInput(system)])
    whole = Path(at(trunc)).read_bytes()
    linkedit = next(s for s in input_segments(at(trunc)) if s.name == "__LINKEDIT")
    Path(at(trunc)).write_bytes(whole[: linkedit.fileoff + linkedit.filesize // 2])
    movw = EVICTION_CASES["unsupported_split_seg_kind"]
    put(movw, at(movw), [LinkInput(str(obj / "liba.o")), LinkInput(system)])
    patched = bytearray(Path(at(movw)).read_bytes())
    patched[first_split_seg_kind(bytes(patched))] = 8  # DYLD_CACHE_ADJ_V2_ARM_MOVW_MOVT
    Path(at(movw)).write_bytes(bytes(patched))
    other = "x86_64" if arch != "x86_64" else "arm64"
    thin = os.path.join(scratch, f"libfxfat-{other}.dylib")
    link(
        LinkOptions(
            arch=other,
            output=thin,
            install_name=EVICTION_CASES["fat_without_arch"],
            inputs=[LinkInput(str(OBJ_DIR / other / "libsystem.o"))],
        )
    )
    Path(at(EVICTION_CASES["fat_without_arch"])).write_bytes(fat_file([Path(thin).read_bytes()]))
    # the cycle: libfxcycle2 first without its re-export, libfxcycle1 re-exporting it, then
    # libfxcycle2 again re-exporting libfxcycle1
    c1, c2 = CYCLE_DYLIBS
    put(c2, at(c2), [LinkInput(str(obj / "libsystem.o"))])
    put(c1, at(c1), [LinkInput(str(obj / "libsystem.o")), LinkInput(at(c2), "reexport")])
    put(c2, at(c2), [LinkInput(str(obj / "libsystem.o")), LinkInput(at(c1), "reexport")])
    claims = os.path.join(scratch, "cycle1.tbd")
    with open(claims, "w", encoding="utf-8") as f:
        names = {e.name for e in open_macho(at(c1)).exports} | {
            e.name for e in open_macho(lib + "/libfxa.dylib").exports
        }
        f.write(format_tbd(c1, [f"{arch}-macos"], sorted(names)))
    client = EVICTION_CASES["symbol_not_found_in_cycle"]
    missing = LinkInput(str(TBD_DIR / "libfxmissing.tbd"), "weak")
    put(client, at(client), [LinkInput(str(obj / "libb.o")), LinkInput(claims), LinkInput(system), missing])
    data = bytearray(Path(lib, "libfxa.dylib").read_bytes())
    # load command 1 (after the first): cmdsize + 3 is no longer a multiple of 8
    first = struct.unpack_from("<I", data, 32 + 4)[0]
    struct.pack_into("<I", data, 32 + first + 4, struct.unpack_from("<I", data, 32 + first + 4)[0] + 3)
    Path(at(EVICTION_CASES["corrupt_load_command"])).write_bytes(bytes(data))


def first_split_seg_kind(image: bytes) -> int:
    """File offset of the first kind byte of a split seg v2 stream (cache-format.md §9): after
    0x7F come count, fromSectionIndex, toSectionIndex, toOffsetCount, toSectionOffsetDelta and
    fromOffsetCount, then the kind."""
    payload_at = None
    _magic, _cpu, _sub, _ft, ncmds, _size = struct.unpack_from("<6I", image)
    off = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", image, off)
        if cmd == 0x1E:  # LC_SEGMENT_SPLIT_INFO
            payload_at = struct.unpack_from("<I", image, off + 8)[0]
        off += size
    assert payload_at is not None and image[payload_at] == 0x7F
    p = payload_at + 1
    for _ in range(6):
        _value, p = read_uleb(image, p)
    return p


def fat_file(slices: list[bytes]) -> bytes:
    """A fat (universal) file of thin 64-bit slices, each aligned to 16 KiB (fat.h, big-endian)."""
    header = struct.pack(">II", 0xCAFEBABE, len(slices))
    body = b""
    at = 0x4000
    for raw in slices:
        cputype, cpusubtype = struct.unpack_from("<ii", raw, 4)
        header += struct.pack(">iiIII", cputype, cpusubtype & 0x00FFFFFF, at, len(raw), 14)
        body += bytes(at - 0x4000 - len(body)) + raw
        at = -(-(at + len(raw)) // 0x4000) * 0x4000
    return header + bytes(0x4000 - len(header)) + body


@dataclass
class Built:
    key: str
    spec: CacheSpec
    root: str
    outdir: str
    #: dyldcache.builder.pipeline.BuildResult
    result: Any

    @property
    def main(self) -> str:
        return str(self.result.files[0])

    def input_path(self, install_name: str) -> str:
        return os.path.join(self.root, install_name.lstrip("/"))


class CacheFactory:
    """Links roots and builds the caches of CACHES on demand, each once."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._roots: dict[tuple[str, str, str, str, str], str] = {}
        self._built: dict[str, Built] = {}
        self._gates: dict[str, Any] = {}
        self.rng = random.Random(int.from_bytes(os.urandom(8), "little"))

    def root(
        self,
        arch: str,
        platform: str = "macos",
        fixups: str = "chained",
        kind: str = "examples",
        split_seg: int = 2,
        lazy: bool = False,
    ) -> str:
        key = (arch, platform, fixups, kind, f"v{split_seg}" + ("-lazy" if lazy else ""))
        if key not in self._roots:
            from dyldcache.examples import link_examples

            path = str(self.base / "roots" / "-".join(key))
            if kind == "examples":
                link_examples(
                    arch,
                    path,
                    fixups=fixups,
                    platform=platform,
                    split_seg_version=split_seg,
                    lazy_binding=lazy,
                )
            elif kind == "evictions":
                shutil.copytree(self.root(arch, platform, fixups), path, symlinks=True)
                scratch = str(self.base / "scratch" / "-".join(key))
                os.makedirs(scratch, exist_ok=True)
                add_eviction_cases(path, arch, scratch)
            else:
                raise ValueError(kind)
            self._roots[key] = path
        return self._roots[key]

    def build(self, key: str, outdir: str | None = None) -> Built:
        """The cache CACHES[key]; with ``outdir``, a fresh build of the same inputs there."""
        if outdir is None and key in self._built:
            return self._built[key]
        from dyldcache.builder.pipeline import BuildOptions, build_cache

        spec = CACHES[key]
        root = self.root(spec.arch, spec.platform, spec.fixups, spec.root, spec.split_seg, spec.lazy)
        out = outdir or str(self.base / "caches" / key)
        result = build_cache(
            BuildOptions(
                arch=spec.arch,
                platform=spec.platform,
                output_dir=out,
                root=root,
                subcache_text_limit=spec.subcache_text_limit,
                unmap_locals=spec.unmap_locals,
                jobs=1,
                apple_rules=spec.apple_rules,
            )
        )
        built = Built(key, spec, root, out, result)
        if outdir is None:
            self._built[key] = built
        return built

    def gate(self, key: str) -> Any:
        """DyldExtractor on CACHES[key] (extracting every image), once."""
        if key not in self._gates:
            from dyldextractor_gate import run_gate

            built = self.build(key)
            self._gates[key] = run_gate(
                built.main,
                arm64_fixers=built.spec.arch != "x86_64",
                outdir=self.base / "extracted" / key,
            )
        return self._gates[key]

    def random_slide(self, main_path: str) -> int:
        return random_slide(main_path, self.rng)


def random_slide(main_path: str, rng: random.Random | None = None) -> int:
    """A random non-zero slide, a 16 KiB multiple no larger than the header's maxSlide."""
    max_slide = RawFile(main_path).field("maxSlide")
    return int((rng or random.Random()).randrange(1, max(2, max_slide // 0x4000)) * 0x4000)


# ---------------------------------------------------------------------------------------------
# what every pointer of a cached image must hold, from its input dylib (LIEF + raw bytes)


@dataclass(frozen=True)
class ExpectedPointer:
    """One fixup of an input dylib, moved into the cache.

    ``target`` is the unslid cache address (0 for a missing weak import); ``high8`` the top byte
    the pointer carries; ``key`` is 0 IA, 1 IB, 2 DA, 3 DB (authenticated pointers only).
    """

    location: int
    target: int
    high8: int = 0
    auth: bool = False
    key: int = 0
    diversity: int = 0
    addr_div: bool = False
    what: str = ""


class InputImages:
    """The input dylibs of a built cache, parsed with LIEF; resolves symbols to cache addresses."""

    def __init__(self, built: Built, raw: RawCache) -> None:
        import lief

        lief.logging.disable()
        self.lief = lief
        self.built = built
        self.raw = raw
        self._bins: dict[str, Any] = {}
        self._segments: dict[str, tuple[list[RawSegment], list[RawSegment]]] = {}

    def binary(self, install_name: str) -> Any:
        if install_name not in self._bins:
            fat = self.lief.MachO.parse(self.built.input_path(install_name))
            assert fat is not None, install_name
            # the binary belongs to the fat object: keep both alive
            self._bins[install_name] = (fat, fat.at(0))
        return self._bins[install_name][1]

    def to_cache(self, install_name: str, address: int) -> int:
        if install_name not in self._segments:
            self._segments[install_name] = (
                input_segments(self.built.input_path(install_name)),
                self.raw.segments(install_name),
            )
        seg_in, seg_cached = self._segments[install_name]
        return address + slide_of(seg_in, seg_cached, address)

    def resolve(self, install_name: str, symbol: str, depth: int = 0) -> int | None:
        """Cache address of ``symbol`` as exported by ``install_name`` (following re-exports)."""
        if depth > 8 or install_name not in dict(self.raw.images):
            return None
        b = self.binary(install_name)
        for sym in b.exported_symbols:
            if sym.name != symbol:
                continue
            info = sym.export_info
            flags = int(info.flags)
            if flags & 0x08:  # EXPORT_SYMBOL_FLAGS_REEXPORT
                lib = info.alias_library.name
                alias = info.alias.name if info.alias is not None and info.alias.name else symbol
                return self.resolve(lib, alias, depth + 1)
            if flags & 0x03 == 0x02:  # absolute
                return int(info.address)
            return self.to_cache(install_name, int(info.address))
        for lib in b.libraries:
            if lib.command == self.lief.MachO.LoadCommand.TYPE.REEXPORT_DYLIB:
                found = self.resolve(lib.name, symbol, depth + 1)
                if found is not None:
                    return found
        return None

    def weak_lookup(self, install_name: str, symbol: str) -> int | None:
        """Ordinal -3: the image itself, then its dependencies (§8.2)."""
        found = self.resolve(install_name, symbol)
        if found is not None:
            return found
        for lib in self.binary(install_name).libraries:
            if lib.command != self.lief.MachO.LoadCommand.TYPE.ID_DYLIB:
                found = self.resolve(lib.name, symbol)
                if found is not None:
                    return found
        return None

    def objc_rewritten(self, install_name: str) -> set[int]:
        """Cache locations whose values the ObjC optimizers change when libobjc is cached: the
        selector references and the words of pointer method list entries (retargeted to the
        canonical selector strings, entries sorted), protocols' extended method types (moved
        with their methods) and the protocol references (retargeted to canonical protocols).
        tests/test_objc_*.py check them by their meaning (names, IMPs, order, canonical
        protocols); the input structure comes from the builder's ObjC reader (no values)."""
        from dyldcache.builder.optimizers.objc_input import has_objc, read_objc_input
        from dyldcache.macho.file import open_macho

        if "/usr/lib/libobjc.A.dylib" not in dict(self.raw.images):
            return set()
        image = open_macho(self.built.input_path(install_name), self.built.spec.arch)
        if not has_objc(image):
            return set()
        meta = read_objc_input(image, install_name)
        if meta.problem is not None:
            return set()
        out = {int(a) for a in meta.selref_locations.tolist()}
        out |= {int(a) for a in meta.protocol_ref_slots.tolist()}  # canonical protocols
        for ml in meta.method_lists():
            if not ml.relative:
                out |= set(range(ml.first, ml.first + ml.entsize * len(ml.names), 8))
        for p in meta.protocols:
            if p.extended_types:
                n = sum(len(ml.names) for ml in p.method_lists if ml is not None)
                out |= set(range(p.extended_types, p.extended_types + 8 * n, 8))
        return {self.to_cache(install_name, a) for a in out}

    def expected_pointers(self, install_name: str) -> list[ExpectedPointer]:
        """Every rebase and bind of the input dylib (chained fixups), as it must be in the cache."""
        b = self.binary(install_name)
        data = Path(self.built.input_path(install_name)).read_bytes()
        segs = input_segments(self.built.input_path(install_name))
        arm64e = self.built.spec.arch == "arm64e"

        def raw_at(address: int) -> int:
            for s in segs:
                if s.vmaddr <= address < s.vmaddr + s.filesize:
                    return int(struct.unpack_from("<Q", data, s.fileoff + address - s.vmaddr)[0])
            raise KeyError(f"{install_name}: {address:#x} has no file bytes")

        def attrs(raw: int, rebase: bool) -> dict[str, Any]:
            # docs/cache-format.md §10: arm64e auth pointers carry diversity 32-47, addrDiv 48,
            # key 49-50 and auth bit 63; plain arm64e rebases high8 at 43-50; PTR_64 at 36-43
            if arm64e and raw >> 63:
                return {
                    "auth": True,
                    "diversity": (raw >> 32) & 0xFFFF,
                    "addr_div": bool((raw >> 48) & 1),
                    "key": (raw >> 49) & 3,
                }
            if not rebase:
                return {}
            return {"high8": (raw >> 43) & 0xFF if arm64e else (raw >> 36) & 0xFF}

        out: dict[int, ExpectedPointer] = {}
        for r in b.relocations:
            kind = type(r).__name__
            if kind == "RelocationFixup":  # chained rebase: LIEF decodes the target
                target, extra = int(r.target), attrs(raw_at(r.address), True)
            elif kind == "RelocationDyld":  # rebase opcode: the location holds the target vmaddr
                target, extra = raw_at(r.address), {}
            else:
                continue
            loc = self.to_cache(install_name, r.address)
            out[loc] = ExpectedPointer(
                loc,
                self.to_cache(install_name, target),
                what=f"{install_name}+{r.address:#x} rebase",
                **extra,
            )
        for bi in b.bindings:
            sym = bi.symbol.name
            chained = type(bi).__name__ == "ChainedBindingInfo"
            addend = bi.addend + (bi.sign_extended_addend if chained else 0)
            coalesce = str(getattr(bi, "binding_class", "")).endswith("WEAK")
            if coalesce or (not bi.has_library and bi.library_ordinal in (-3, 0)):
                value = self.weak_lookup(install_name, sym)
                if value is None and coalesce:
                    continue  # weak-bind table entry nobody else defines: the rebase stands
            elif bi.has_library:
                value = self.resolve(bi.library.name, sym)
            else:
                raise AssertionError(f"{install_name}: bind to {sym} with ordinal {bi.library_ordinal}")
            if value is None:
                assert bi.weak_import, f"{install_name}: {sym} is bound but exported by nobody"
                target = 0  # a missing weak import is null
            else:
                target = value + addend
            loc = self.to_cache(install_name, bi.address)
            out[loc] = ExpectedPointer(
                loc,
                target,
                what=f"{install_name}+{bi.address:#x} bind {sym}+{addend}",
                **(attrs(raw_at(bi.address), False) if chained else {}),
            )
        return list(out.values())


# ---------------------------------------------------------------------------------------------
# llvm-objdump on dylibs


@dataclass
class ObjdumpResult:
    returncode: int
    stdout: str
    stderr: str
    #: export trie: name -> address (None for a re-export)
    exports: dict[str, int | None]


def objdump_dylib(objdump: str, path: str | Path) -> ObjdumpResult:
    """``llvm-objdump --macho --private-headers --exports-trie`` on one dylib."""
    import subprocess

    proc = subprocess.run(
        [objdump, "--macho", "--private-headers", "--exports-trie", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    exports: dict[str, int | None] = {}
    lines = proc.stdout.splitlines()
    if "Exports trie:" in lines:
        for line in lines[lines.index("Exports trie:") + 1 :]:
            parts = line.split()
            if not parts:
                continue
            if parts[0].startswith("0x"):
                exports[parts[1]] = int(parts[0], 16)
            elif parts[0] == "[re-export]":
                exports[parts[1]] = None
    return ObjdumpResult(proc.returncode, proc.stdout, proc.stderr, exports)


# ---------------------------------------------------------------------------------------------
# emulation: every call of expected.json against the native oracle


@dataclass
class EmulationRun:
    slide: int
    #: the emulator's LoadedCache (tests/emulator.py)
    loaded: Any
    #: install name -> number of initializers run
    initializers: dict[str, int]
    #: (dylib, function, args) -> (emulated, native) for every call that differed
    mismatches: dict[tuple[str, str, tuple[int, ...]], tuple[int | str, int]]
    calls: int


def emulate_calls(main_path: str, arch: str, slide: int, names: dict[str, str] | None = None) -> EmulationRun:
    """Map the cache at ``slide`` (the emulator applies the slide info itself), run the
    initializers of every fixture dylib bottom-up, then call every function of expected.json.

    ``names`` (object name -> install name) places the fixtures elsewhere than expected.json
    says; the calls of objects it leaves out are not made."""
    import emulator

    harness = native_harness()
    expected = harness.expected_results()
    if names is None:
        names = fixture_install_names()
    else:
        names = {k: names[k] for k in fixture_install_names() if k in names}
    loaded = emulator.load_cache(main_path, arch, slide)
    inits: dict[str, int] = {}
    # expected.json lists the dylibs dependencies first, the order dyld runs initializers in
    for name in names.values():
        if name not in loaded.images:
            continue
        fns = loaded.initializers(name)
        for init in fns:
            loaded.machine.call(init)
        inits[name] = len(fns)
    mismatches: dict[tuple[str, str, tuple[int, ...]], tuple[int | str, int]] = {}
    calls = [c for c in harness.load_calls() if c.dylib in names]
    for c in calls:
        fn = loaded.lookup(names[c.dylib], c.symbol)
        got: int | str
        if fn is None:
            got = "not exported"
        else:
            try:
                got = loaded.machine.call_int(fn, *c.args)
            except emulator.EmulationError as exc:
                got = str(exc)
        if got != expected[c.key]:
            mismatches[c.key] = (got, expected[c.key])
    return EmulationRun(slide, loaded, inits, mismatches, len(calls))


def snapshot(folder: str | Path) -> dict[str, str]:
    """file name -> sha256 of every file in ``folder`` (hidden ones included)."""
    import hashlib

    return {
        name: hashlib.sha256((Path(folder) / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(folder))
    }
