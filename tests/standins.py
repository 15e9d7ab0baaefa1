"""Stand-ins for the libraries a real root lacks, so that what it does have can go into a cache.

A root copied from a device or a package archive (``../shared/data/real``) rarely holds every
library its dylibs link against: the iOS 14.4 root misses most of libSystem's re-exported
libraries, libobjc, libc++ and the frameworks; the macOS 10.14 root misses libobjc and the
frameworks. :func:`make_standins` scans a root, writes a TAPI v4 stub for every missing library
(the union of the symbols the root's images import from it) and links each stub into a
stand-in dylib with ``dyldcache link -stub_library``: every function traps, data is zeroed, and
the real code of the objects given (tests/fixtures/obj/<arch>/standin_system.o: a heap and the
string functions) serves the symbols it defines.

Imports through an umbrella are resolved as dyld resolves them: a bind to libSystem.B for
``_malloc`` is satisfied by one of libSystem's re-exported libraries, so a symbol that the
present libraries (libSystem.B itself and its present re-exports) do not export goes to one of
its missing re-exports: the one that some image imports the symbol from directly, else the
first of ``prefer`` that is missing, else the first missing one.

A symbol is data in the stub's ``-stub_data_list`` when no image calls it: no image lists it in
a stub or lazy-pointer section's indirect symbols (calls go through those; data and function
addresses through non-lazy pointers).

The scan uses dyldcache's Mach-O reader: it only decides what the stand-ins hold; the tests'
expected values never come from here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dyldcache.errors import FormatError
from dyldcache.link.linker import LinkInput, LinkOptions, link
from dyldcache.macho import constants as C
from dyldcache.macho.file import MachOFile, format_version, open_macho
from dyldcache.macho.tbd import format_tbd

FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: the real code of the stand-ins, per arch (tests/fixtures/src/standin_system.c)
STANDIN_OBJECTS = {arch: FIXTURES / "obj" / arch / "standin_system.o" for arch in ("arm64", "x86_64")}
#: the ObjC fixture's libobjc (tests/fixtures/src/objc/runtime.m): NSObject, Protocol, objc_msgSend,
#: __TEXT,__objc_opt_ro and __DATA_CONST,__objc_opt_ptrs, so that the ObjC optimizers run
LIBOBJC = "/usr/lib/libobjc.A.dylib"
RUNTIME_OBJECTS = {
    arch: FIXTURES / "src" / "objc" / "obj" / arch / "runtime.o" for arch in ("arm64", "x86_64")
}
#: where an umbrella's symbols go when no image says which of its missing re-exports has them
PREFERRED_OWNERS = ("/usr/lib/system/libsystem_c.dylib",)

_CALL_SECTION_TYPES = (C.S_SYMBOL_STUBS, C.S_LAZY_SYMBOL_POINTERS)


@dataclass
class Image:
    """What the scan keeps of one Mach-O image of the root."""

    path: str  # install path (inside the root)
    install_name: str | None
    filetype: int
    #: (install name, kind) per LC_*_DYLIB, in ordinal order; kind as DylibRef.kind
    dependencies: list[tuple[str, str]]
    #: (install name, current version, compatibility version) per LC_*_DYLIB
    dependency_versions: list[tuple[str, int, int]]
    #: (dependency install name, symbol) of every bind to a dependency or to the image itself
    imports: set[tuple[str, str]]
    #: symbols named by the image's stubs and lazy pointers: the ones it calls
    called: set[str]
    #: exported names (re-export entries included)
    exports: set[str]


@dataclass
class RootScan:
    arch: str
    images: list[Image]
    #: install name -> the image that has it (dylibs only)
    by_install_name: dict[str, Image]
    #: install name -> (largest current, largest compatibility version) its clients recorded
    versions: dict[str, tuple[int, int]]
    #: files the scan could not read: path -> error
    unreadable: dict[str, str] = field(default_factory=dict)

    def provided(self, install_name: str, root: Path) -> bool:
        return install_name in self.by_install_name or os.path.lexists(root / install_name.lstrip("/"))

    def reexports(self, install_name: str) -> list[str]:
        image = self.by_install_name.get(install_name)
        return [] if image is None else [d for d, kind in image.dependencies if kind == "reexport"]


def _image(path: str, m: MachOFile) -> Image:
    deps = [(d.path, d.kind) for d in m.dylibs]
    fixups = m.fixups
    imports = set()
    ordinals = fixups.records["bind"][fixups.records["bind"] >= 0]
    for idx in set(ordinals.tolist()):
        imp = fixups.imports[idx]
        if 1 <= imp.ordinal <= len(deps):
            imports.add((deps[imp.ordinal - 1][0], imp.name))
        elif imp.ordinal == C.BIND_SPECIAL_DYLIB_SELF and m.install_name:
            # an umbrella binding to itself: dyld looks in its re-exports too (libSystem.B)
            imports.add((m.install_name, imp.name))
    called: set[str] = set()
    indirect = m.indirect_symbols
    names = m.symbol_table
    for sect in m.sections:
        if sect.type not in _CALL_SECTION_TYPES:
            continue
        stride = sect.reserved2 if sect.type == C.S_SYMBOL_STUBS else 8
        for k in range(sect.reserved1, sect.reserved1 + (sect.size // stride if stride else 0)):
            if k < len(indirect) and not indirect[k] & (C.INDIRECT_SYMBOL_LOCAL | C.INDIRECT_SYMBOL_ABS):
                called.add(names.name(int(names.nlist[int(indirect[k])]["n_strx"])))
    versions = [(d.path, d.current_version, d.compatibility_version) for d in m.dylibs]
    exports = {e.name for e in m.exports}
    return Image(path, m.install_name, m.filetype, deps, versions, imports, called, exports)


def scan_root(root: str | Path, arch: str) -> RootScan:
    """Every Mach-O image of ``arch`` under ``root`` (symlinks are not followed)."""
    root = Path(root)
    images: list[Image] = []
    unreadable: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            host = Path(dirpath) / name
            if host.is_symlink():
                continue
            with open(host, "rb") as f:
                magic = f.read(4)
            if magic not in (b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe"):
                continue
            path = "/" + host.relative_to(root).as_posix()
            try:
                images.append(_image(path, open_macho(host, arch)))
            except FormatError as exc:
                unreadable[path] = str(exc)
    by_name: dict[str, Image] = {}
    versions: dict[str, tuple[int, int]] = {}
    for img in images:
        if img.filetype == C.MH_DYLIB and img.install_name:
            by_name.setdefault(img.install_name, img)
    for img in images:
        for dep, current, compatibility in img.dependency_versions:
            cur, compat = versions.get(dep, (0, 0))
            versions[dep] = (max(cur, current), max(compat, compatibility))
    return RootScan(arch, images, by_name, versions, unreadable)


@dataclass
class StandInPlan:
    install_name: str
    #: every symbol the stand-in exports
    symbols: set[str] = field(default_factory=set)
    #: the ones no image calls (zeroed data instead of a trap)
    data: set[str] = field(default_factory=set)


def plan_standins(
    scan: RootScan, root: str | Path, prefer: Sequence[str] = PREFERRED_OWNERS
) -> dict[str, StandInPlan]:
    """install name -> what its stand-in must export, for every library the root lacks."""
    root = Path(root)
    # (a relative dependency, @rpath/..., cannot be stood in: its clients are not cacheable anyway)
    missing = sorted(
        {
            d
            for img in scan.images
            for d, _ in img.dependencies
            if d.startswith("/") and not scan.provided(d, root)
        }
    )
    plans = {name: StandInPlan(name) for name in missing}
    called = {s for img in scan.images for s in img.called}
    direct: dict[str, set[str]] = {}  # symbol -> missing libraries it is imported from directly
    for img in scan.images:
        for lib, sym in img.imports:
            if lib in plans:
                direct.setdefault(sym, set()).add(lib)

    def owner(lib: str, sym: str) -> str | None:
        """The missing library that must export ``sym`` for a bind to ``lib`` to resolve."""
        if lib in plans:
            return lib
        candidates: list[str] = []
        todo, seen = [lib], set()
        while todo:  # lib itself, then its re-exports, depth first in load-command order
            name = todo.pop(0)
            if name in seen:
                continue
            seen.add(name)
            image = scan.by_install_name.get(name)
            if image is None:
                if name in plans:
                    candidates.append(name)
                continue
            if sym in image.exports:
                return None
            todo[0:0] = scan.reexports(name)
        if not candidates:
            return None  # the real library lacks it: nothing a stand-in can do
        for pick in (*sorted(direct.get(sym, set()) & set(candidates)), *prefer, candidates[0]):
            if pick in candidates:
                return pick
        raise AssertionError("unreachable")

    for img in scan.images:
        for lib, sym in sorted(img.imports):
            target = owner(lib, sym)
            if target is not None:
                plans[target].symbols.add(sym)
    for plan in plans.values():
        plan.data = {s for s in plan.symbols if s not in called}
    return plans


def object_exports(path: str | Path, arch: str) -> set[str]:
    """Names an object file defines and exports."""
    m = open_macho(path, arch)
    return {
        name
        for name, n_type, _sect, _desc, _value in m.iter_symbols()
        if n_type & C.N_EXT and not n_type & (C.N_PEXT | C.N_STAB) and n_type & C.N_TYPE == C.N_SECT
    }


@dataclass
class StandIn:
    install_name: str
    path: Path
    tbd: Path
    symbols: set[str]
    data: set[str]
    #: the real-code objects linked in
    objects: list[Path]
    warnings: list[str]


def make_standins(
    root: str | Path,
    arch: str,
    platform: str,
    scratch: str | Path,
    objects: Iterable[str | Path] = (),
    *,
    fixups: str = "chained",
    split_seg_version: int = 2,
    prefer: Sequence[str] = PREFERRED_OWNERS,
    own_inputs: Mapping[str, Sequence[str | Path]] | None = None,
) -> list[StandIn]:
    """Write a stub for every library ``root`` lacks into ``scratch`` and link it into ``root``.
    ``own_inputs``: install name -> more inputs of that stand-in only (objects, and the dylibs
    their undefined symbols bind to: other stand-ins among them, which are linked first)."""
    root, scratch = Path(root), Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    scan = scan_root(root, arch)
    plans = plan_standins(scan, root, prefer)
    code = [(Path(o), object_exports(o, arch)) for o in objects]
    made = []
    # a stand-in with inputs of its own last: they may be other stand-ins (libobjc's calloc)
    for name, plan in sorted(plans.items(), key=lambda item: (item[0] in (own_inputs or {}), item[0])):
        current, compat = scan.versions.get(name, (0x10000, 0x10000))
        stem = name.strip("/").replace("/", "_")
        tbd = scratch / f"{stem}.tbd"
        tbd.write_text(
            format_tbd(
                name,
                [f"{arch}-{platform}"],
                sorted(plan.symbols),
                format_version(current),
                format_version(compat),
            ),
            encoding="utf-8",
        )
        data_list = scratch / f"{stem}.data.txt"
        data_list.write_text("".join(f"{s}\n" for s in sorted(plan.data)), encoding="utf-8")
        linked = [o for o, exported in code if exported & plan.symbols]
        linked += [Path(o) for o in (own_inputs or {}).get(name, ())]
        out = root / name.lstrip("/")
        out.parent.mkdir(parents=True, exist_ok=True)
        result = link(
            LinkOptions(
                arch=arch,
                output=str(out),
                install_name="",
                inputs=[LinkInput(str(o)) for o in linked],
                platform=platform,
                fixups=fixups,
                split_seg_version=split_seg_version,
                stub_library=str(tbd),
                stub_data=frozenset(plan.data),
            )
        )
        made.append(StandIn(name, out, tbd, plan.symbols, plan.data, linked, result.warnings))
    return made


def recreate_install_name_links(root: str | Path, arch: str) -> list[tuple[str, str]]:
    """Symlink each dylib's install name to its file where a package installed the file under a
    longer versioned name in the same folder and the link was lost (libzstd.1.dylib ->
    libzstd.1.4.5.dylib). Returns (install name, file path) per link made."""
    root = Path(root)
    made = []
    for img in scan_root(root, arch).images:
        name = img.install_name
        if img.filetype != C.MH_DYLIB or not name or not name.startswith("/") or name == img.path:
            continue
        if os.path.dirname(name) != os.path.dirname(img.path):
            continue
        link_path = root / name.lstrip("/")
        if os.path.lexists(link_path):
            continue
        os.symlink(os.path.basename(img.path), link_path)
        made.append((name, img.path))
    return made


def copy_root(src: str | Path, dst: str | Path) -> Path:
    """A writable copy of a root (symlinks kept as symlinks)."""
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)


def restore_link_texts(root: Path) -> dict[str, str]:
    """Files whose whole content is a path (how the source stored symlinks) become symlinks again."""
    made = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or not p.is_file() or p.stat().st_size > 1024:
            continue
        text = p.read_bytes()
        if b"\0" in text or (not text.endswith(b".dylib") and b"/" not in text):
            continue
        try:
            target = text.decode("ascii")
        except UnicodeDecodeError:
            continue
        if not target.startswith(("/", "../", "./")) and "/" not in target:
            continue
        p.unlink()
        os.symlink(target, p)
        made["/" + p.relative_to(root).as_posix()] = target
    return made


#: links every macOS 10.14 /usr/lib has (and ../shared's copy lost): alias -> target, relative
MACOS_SYSTEM_ALIASES = {
    "/usr/lib/libSystem.dylib": "libSystem.B.dylib",
    "/usr/lib/libc.dylib": "libSystem.dylib",
    "/usr/lib/libm.dylib": "libSystem.dylib",
    "/usr/lib/libpthread.dylib": "libSystem.dylib",
    "/usr/lib/libdl.dylib": "libSystem.B.dylib",
    "/usr/lib/libz.dylib": "libz.1.dylib",
}


def prepare_macos_root(
    source: Path, base: Path
) -> tuple[Path, dict[str, str], list[tuple[str, str]], list[StandIn]]:
    """The macOS 10.14 /usr/lib of ../shared as a root a build can take: copied to ``base/root``
    (writable), its link texts turned back into links, the install-name links and the well-known
    aliases restored, stand-ins for the missing libraries. Returns (root, link texts, install-name
    links, stand-ins)."""
    root = copy_root(source, base / "root")
    for p in root.rglob("*"):
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o200)
    texts = restore_link_texts(root)
    links = recreate_install_name_links(root, "x86_64")
    for alias, target in MACOS_SYSTEM_ALIASES.items():
        os.symlink(target, root / alias.lstrip("/"))
    # libobjc: the ObjC fixture's runtime (calloc and strcmp from the real libSystem parts)
    system = root / "usr" / "lib" / "system"
    libobjc = [RUNTIME_OBJECTS["x86_64"], system / "libsystem_malloc.dylib", system / "libsystem_c.dylib"]
    standins = make_standins(
        root, "x86_64", "macos", base / "stubs", [STANDIN_OBJECTS["x86_64"]], own_inputs={LIBOBJC: libobjc}
    )
    return root, texts, links, standins


def prepare_ios_root(
    source: Path, base: Path, *, objc_runtime: bool = True
) -> tuple[Path, list[tuple[str, str]], list[StandIn]]:
    """The iOS 14.4 root of ../shared as a root a build can take: copied to ``base/root``, the
    install-name links restored, stand-ins for the missing libraries. ``objc_runtime``: libobjc's
    stand-in holds the ObjC fixture's arm64 runtime (calloc and strcmp from the libsystem_malloc
    and libsystem_c stand-ins), so the ObjC optimizers run. Returns (root, install-name links,
    stand-ins)."""
    root = copy_root(source, base / "root")
    links = recreate_install_name_links(root, "arm64")
    system = root / "usr" / "lib" / "system"
    libobjc = [RUNTIME_OBJECTS["arm64"], system / "libsystem_malloc.dylib", system / "libsystem_c.dylib"]
    standins = make_standins(
        root,
        "arm64",
        "ios",
        base / "stubs",
        [STANDIN_OBJECTS["arm64"]],
        own_inputs={LIBOBJC: libobjc} if objc_runtime else None,
    )
    return root, links, standins
