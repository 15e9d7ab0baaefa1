"""Phase 1, calculate_inputs: which input files become cache dylibs, in which order, under
which aliases.

Eligibility follows ``docs/cache-format.md`` §8 (dyld-1162 ``canBePlacedInDyldCache`` and
the builder's own filters). Every rejection is an :class:`Eviction` reported in Apple's
wording; a malformed file is evicted with the reader's error, never a traceback.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError, UsageError
from ..macho import constants as C
from ..macho.fat import is_fat, parse_fat, thin_arch
from ..macho.file import MachOFile, MappedFile, parse_macho
from ..macho.fixups import FixupKind
from ..macho.split_seg import unsupported_v1_entry, unsupported_v2_entry
from .config import CacheConfig
from .symbol_resolution import ExportIndex

ELIGIBLE_PREFIXES = (
    "/usr/lib/",
    "/System/Library/",
    "/System/iOSSupport/usr/lib/",
    "/System/iOSSupport/System/Library/",
    "/Library/Apple/usr/lib/",
    "/Library/Apple/System/Library/",
    "/System/DriverKit/",
    "/System/Cryptexes/OS/usr/lib/",
    "/System/Cryptexes/OS/System/Library/",
    "/System/Cryptexes/OS/System/iOSSupport/usr/lib/",
    "/System/Cryptexes/OS/System/iOSSupport/System/Library/",
    "/System/ExclaveKit/usr/lib/",
    "/System/ExclaveKit/System/Library/",
)
_MACOS_EXCLUDED_PREFIXES = (
    "/usr/lib/system/introspection/",
    "/System/Library/QuickTime/",
    "/System/Library/Tcl/",
    "/System/Library/Perl/",
    "/System/Library/MonitorPanels/",
    "/System/Library/Accessibility/",
    "/usr/local/",
    "/usr/lib/pam/",
    "/System/Library/Templates/Data/",
)
_EMBEDDED_EXCLUDED = (
    "/System/Library/Caches/com.apple.xpc/sdk.dylib",
    "/System/Library/Caches/com.apple.xpcd/xpcd_cache.dylib",
)
_EXCLUDED_SUFFIXES = ("_profile.dylib", "_debug.dylib", "_asan.dylib", "_profile", "_debug", "/CoreADI")
_SILENT_SKIPS = ("/usr/lib/libobjc-trampolines.dylib", "/usr/lib/libffi-trampolines.dylib")
_ALLOWED_CHAINED_FORMATS = frozenset(
    {
        C.DYLD_CHAINED_PTR_64,
        C.DYLD_CHAINED_PTR_64_OFFSET,
        C.DYLD_CHAINED_PTR_ARM64E,
        C.DYLD_CHAINED_PTR_ARM64E_USERLAND,
        C.DYLD_CHAINED_PTR_ARM64E_USERLAND24,
        C.DYLD_CHAINED_PTR_32,
    }
)
_RX = C.VM_PROT_READ | C.VM_PROT_EXECUTE
_RW = C.VM_PROT_READ | C.VM_PROT_WRITE


@dataclass(frozen=True, slots=True)
class Eviction:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"Dylib located at '{self.path}' not placed in shared cache because: {self.reason}"

    @property
    def kind(self) -> str:
        """The reason without the names in it, for counting evictions by reason."""
        text = _QUOTED.sub("'…'", self.reason)
        text = _HEX.sub("N", text)
        return text.split(": ", 1)[0] if text.startswith("malformed Mach-O") else text


_QUOTED = re.compile(r"'[^']*'")
_HEX = re.compile(r"\b(0x[0-9a-fA-F]+|\d+)\b")


def eviction_summary(evictions: list[Eviction], most: int = 4) -> str:
    """One line: how many dylibs were evicted, for the commonest reasons first."""
    counts = Counter(e.kind for e in evictions)
    parts = [f"{kind} ({n})" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:most]]
    rest = len(counts) - most
    if rest > 0:
        parts.append(f"{rest} other reason{'s' if rest > 1 else ''}")
    return f"{len(evictions)} evicted: " + "; ".join(parts)


@dataclass(slots=True)
class InputFile:
    """One file handed to the builder: its install path and where its bytes are."""

    path: str  # install path (inside the root)
    host_path: str  # where to read it
    mtime: int = 0
    inode: int = 0


@dataclass(slots=True)
class CacheInput:
    """An eligible dylib: the parsed image plus the facts later phases need."""

    file: InputFile
    image: MachOFile
    mapped: MappedFile
    #: index in the final dylib order (image index in the cache)
    index: int = -1
    #: install names of dependencies: (path, kind) in ordinal order
    dependencies: list[tuple[str, str]] = field(default_factory=list)

    @property
    def install_name(self) -> str:
        name = self.image.install_name
        assert name is not None
        return name


class _ResolutionNode:
    """A candidate as symbol resolution sees it: dependents as indexes among the candidates."""

    __slots__ = ("dependents", "image", "install_name")

    def __init__(self, ci: CacheInput, at: dict[str, int], resolve: Callable[[str], str | None]) -> None:
        self.image = ci.image
        self.install_name = ci.install_name
        self.dependents: list[tuple[int | None, str]] = []
        for dep, kind in ci.dependencies:
            target = resolve(dep)
            self.dependents.append((None if target is None else at[target], kind))


@dataclass(slots=True)
class Inputs:
    dylibs: list[CacheInput]
    evictions: list[Eviction]
    #: alias path -> install name of the cache dylib it points at
    aliases: dict[str, str]
    #: install names of dylibs that were handed to the builder, eligible or not
    input_install_names: set[str]


def is_eligible_path(path: str) -> bool:
    return path.startswith(ELIGIBLE_PREFIXES)


def _excluded(path: str, config: CacheConfig) -> bool:
    if config.platform in (C.PLATFORM_MACOS, C.PLATFORM_MACCATALYST):
        return path.startswith(_MACOS_EXCLUDED_PREFIXES) or ".app/" in path or "HelloWorldMacHelper" in path
    return path in _EMBEDDED_EXCLUDED


def _platform_ok(image: MachOFile, config: CacheConfig) -> bool:
    platforms = {bv.platform for bv in image.build_versions}
    if image.version_min is not None:
        platforms.add(image.version_min[0])
    if not platforms:
        return True  # very old dylibs carry none; dyld treats them as the host platform
    if config.platform == C.PLATFORM_MACOS and C.PLATFORM_MACCATALYST in platforms:
        return True
    return config.platform in platforms


def check_eligibility(image: MachOFile, path: str, config: CacheConfig) -> str | None:
    """The reason ``image`` (installed at ``path``) cannot go into the cache, or None.

    Rules in the order of dyld-1162 (cache-format.md §8.1 and §8.2); the first that fails
    is reported.
    """
    if image.filetype != C.MH_DYLIB:
        return "Not MH_DYLIB"
    if image.header.cputype != config.arch.cputype or (
        config.arch.uses_pointer_auth != (image.arch == "arm64e")
    ):
        return f"arch {image.arch} is not {config.arch.name}"
    install = image.install_name
    if install is None:
        return "Missing LC_ID_DYLIB"
    if not install.startswith("/"):
        return "install name not an absolute path"
    if install != path:
        return f"install name '{install}' does not match install path '{path}'"
    if "//" in install or "./" in install:
        return "install name contains '//' or './'"
    if _excluded(path, config):
        return "path is excluded from the shared cache on this platform"
    if not image.flags & C.MH_TWOLEVEL:
        return "Not built with two level namespaces"
    if path.endswith(_EXCLUDED_SUFFIXES):
        return "Variant image (profile, debug, asan) not placed in the cache"
    if image.split_seg_version is None:
        return "Missing split seg info"
    if image.dyld_info_command is None and C.LC_DYLD_EXPORTS_TRIE not in image.linkedit_commands:
        return "Old binary, missing dyld info or exports trie"
    if not _platform_ok(image, config):
        built = ", ".join(bv.platform_name for bv in image.build_versions)
        return f"built for {built}, not {config.platform_name}"
    for dep in image.dylibs:
        if not dep.is_weak and not is_eligible_path(dep.path):
            return f"Depends on dylib '{dep.path}' which is not in a shared cache location"
    for sect in image.sections:
        if sect.type == C.S_INTERPOSING or (
            sect.sectname == "__interpose" and sect.segname.startswith(("__DATA", "__AUTH"))
        ):
            return "Has interposing tuples"
    if config.arch.uses_pointer_auth and image.split_seg_version != 2:
        return "arm64e dylibs require split seg info v2"
    if image.split_seg_version == 1:
        for seg in image.segments:
            if seg.initprot & C.VM_PROT_WRITE and seg.name != "__DATA":
                return f"split seg v1 dylib has writable segment {seg.name} other than __DATA"
        info = image.split_seg
        assert info is not None
        problem = unsupported_v1_entry(info.entries, image.segments[0].vmsize)
        if problem is not None:
            return problem
    if image.split_seg_version == 2:
        info = image.split_seg
        assert info is not None
        problem = unsupported_v2_entry(info.entries, len(image.sections))
        if problem is not None:
            return problem
    dy = image.dysymtab_command
    if dy is not None and (dy.ntoc or dy.nmodtab or dy.nextrefsyms or dy.nextrel or dy.nlocrel):
        return "LC_DYSYMTAB has a table of contents, module table, external references or relocations"
    for seg in image.segments:
        if seg.name == "__PAGEZERO":
            return "has a __PAGEZERO segment"
        # dyld-1162 sorts segments by their initial protections only (CacheDylib.cpp); ld64 of
        # macOS 10.14 and earlier wrote maxprot rwx, which the builders of that time accepted
        if seg.initprot not in (_RX, _RW, C.VM_PROT_READ):
            return f"segment {seg.name} has unsupported initial permissions {seg.prot_string}"
    return _check_fixups(image, config)


def _check_fixups(image: MachOFile, config: CacheConfig) -> str | None:
    fixups = image.fixups  # may raise FormatError: the caller evicts with the reader's message
    bad_formats = set(fixups.pointer_formats.values()) - _ALLOWED_CHAINED_FORMATS
    if bad_formats:
        return f"unsupported chained fixup pointer format {min(bad_formats)}"
    records = fixups.records
    for imp in fixups.imports:
        if imp.ordinal == C.BIND_SPECIAL_DYLIB_FLAT_LOOKUP:
            return f"has flat-namespace bind to {imp.name}"
        if imp.ordinal == C.BIND_SPECIAL_DYLIB_MAIN_EXECUTABLE:
            return f"binds to the main executable ({imp.name})"
        if imp.ordinal > len(image.dylibs):
            return (
                f"bind to {imp.name} uses library ordinal {imp.ordinal}; there are {len(image.dylibs)} dylibs"
            )
    binds = records[(records["kind"] == FixupKind.BIND) | (records["kind"] == FixupKind.AUTH_BIND)]
    if len(binds):
        auth = binds["kind"] == FixupKind.AUTH_BIND
        addend = binds["addend"] & np.int64(0x00FFFFFFFFFFFFFF)
        if np.any(~auth & (addend >= (1 << 23))):
            return "bind addend too large for the patch table (>= 2^23)"
        if np.any(auth & (binds["addend"] >= (1 << 5))):
            return "authenticated bind addend too large for the patch table (>= 2^5)"
    if config.arch.name == "x86_64":
        rebases = records[records["kind"] == FixupKind.REBASE]
        if len(rebases):
            lo = min(s.vmaddr for s in image.segments)
            hi = max(s.vmaddr + s.vmsize for s in image.segments)
            if np.any((rebases["target"] < lo) | (rebases["target"] > hi)):
                return "rebase target outside the dylib's own address range"
        addrs = records["address"]
        if np.any(addrs & np.uint64(3)):
            return "pointer fixup not 4-byte aligned"
        if np.any((addrs & np.uint64(0xFFF)) == 0xFFC):
            return "pointer fixup crosses a 4 KiB page"
    return None


# ---------------------------------------------------------------------------------------------
# gathering files


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return int(st.st_mtime), st.st_ino


def files_from_root(
    root: str, dylib_list: list[str] | None = None
) -> tuple[list[InputFile], dict[str, str], list[str]]:
    """Regular files under ``root`` (or only those in ``dylib_list``), symlinks as aliases.

    Returns (files, aliases: link path -> install path it resolves to, warnings). A link
    that resolves outside the root is refused with a warning.
    """
    root_abs = os.path.realpath(root)
    if not os.path.isdir(root_abs):
        raise UsageError(f"--root {root}: not a directory")
    files: list[InputFile] = []
    aliases: dict[str, str] = {}
    warnings: list[str] = []

    def install_path(host: str) -> str:
        return "/" + os.path.relpath(host, root_abs).replace(os.sep, "/")

    def consider(host: str) -> None:
        try:
            st = os.lstat(host)
        except OSError as exc:
            warnings.append(f"cannot read '{install_path(host)}': {exc.strerror}")
            return
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(host)
            if not (real == root_abs or real.startswith(root_abs + os.sep)):
                warnings.append(f"symlink '{install_path(host)}' points outside the root; ignored")
                return
            if os.path.isfile(real):
                aliases[install_path(host)] = install_path(real)
            return
        if stat.S_ISREG(st.st_mode):
            with open(host, "rb") as f:
                magic = f.read(4)
            if (
                len(magic) == 4 and int.from_bytes(magic, "little") in (C.MH_MAGIC_64, C.MH_MAGIC)
            ) or int.from_bytes(magic, "big") in (C.FAT_MAGIC, C.FAT_MAGIC_64):
                files.append(InputFile(install_path(host), host, int(st.st_mtime), st.st_ino))

    if dylib_list is not None:
        for p in dylib_list:
            host = os.path.join(root_abs, p.lstrip("/"))
            if not os.path.lexists(host):
                warnings.append(f"'{p}' from the dylib list does not exist under the root")
                continue
            consider(host)
    else:
        for dirpath, dirnames, filenames in os.walk(root_abs):
            dirnames.sort()
            for name in sorted(filenames) + sorted(
                d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
            ):
                consider(os.path.join(dirpath, name))
    return files, aliases, warnings


def files_from_paths(paths: Iterable[str]) -> list[InputFile]:
    """Dylibs given by host path, without a root: each is placed at its own install name."""
    out = []
    for p in paths:
        if not os.path.isfile(p):
            raise UsageError(f"{p}: no such file")
        mtime, ino = _stat(p)
        out.append(InputFile("", p, mtime, ino))
    return out


# ---------------------------------------------------------------------------------------------
# the phase


def _sort_key(install_name: str, order: dict[str, int]) -> tuple[int, int, int, bytes]:
    return (
        0 if install_name == "/usr/lib/libobjc.A.dylib" else 1,
        order.get(install_name, len(order)),
        1 if install_name.startswith("/System/iOSSupport/") else 0,
        install_name.encode(),
    )


@dataclass(slots=True)
class _Examined:
    """What one input file turned out to be (computed in a worker process)."""

    path: str
    install_name: str | None
    #: eviction reason; "" for a silent skip; None when eligible
    reason: str | None
    #: decoded LINKEDIT of an eligible dylib, handed back to the parent's MachOFile
    decoded: dict[str, object] | None = None


def _load(f: InputFile, config: CacheConfig) -> tuple[MappedFile, MachOFile] | str:
    try:
        mapped = MappedFile(f.host_path)
        if is_fat(mapped.data):
            slices = parse_fat(mapped.data, f.host_path)
            if not any(s.arch == config.arch.name for s in slices):
                have = ", ".join(s.arch for s in slices)
                return f"fat file has no {config.arch.name} slice (it has {have})"
            return mapped, parse_macho(mapped.data, f.host_path, config.arch.name)
        thin = thin_arch(mapped.data)
        if thin is not None and thin != config.arch.name:
            return f"file is {thin}, not {config.arch.name}"
        return mapped, parse_macho(mapped.data, f.host_path)
    except FormatError as exc:
        return f"malformed Mach-O: {exc}"


def _placed_path(path: str, install_name: str | None, aliases: dict[str, str], config: CacheConfig) -> str:
    """The path a file is cached under: its own, or its install name when that is a symlink in
    the root that resolves to the file (dyld-1162 does this on macOS and for cryptex paths; we
    do it everywhere unless Apple's rules are asked for, since a root installs a dylib under its
    versioned file name with the install name as a symlink on every platform)."""
    if install_name is None or install_name == path or aliases.get(install_name) != path:
        return path
    if config.apple_rules and not (
        config.platform == C.PLATFORM_MACOS or path.startswith("/System/Cryptexes/OS/")
    ):
        return path
    return install_name


def _examine(f: InputFile, config: CacheConfig, aliases: dict[str, str]) -> _Examined:
    loaded = _load(f, config)
    if isinstance(loaded, str):
        return _Examined(f.path or f.host_path, None, loaded)
    _, image = loaded
    path = f.path or image.install_name or f.host_path
    if f.path:
        path = _placed_path(path, image.install_name, aliases, config)
    if path in _SILENT_SKIPS:
        return _Examined(path, image.install_name, "")
    if not is_eligible_path(path):
        return _Examined(path, image.install_name, "path is not in a shared cache location")
    decoded: dict[str, object] | None = None
    try:
        reason = check_eligibility(image, path, config)
        if reason is None:
            # the expensive decodes; they come back to the parent with the verdict
            decoded = {"fixups": image.fixups, "split_seg": image.split_seg, "exports": image.exports}
    except FormatError as exc:
        reason, decoded = f"malformed Mach-O: {exc}", None
    return _Examined(path, image.install_name, reason, decoded)


_EXAMINE_STATE: tuple[list[InputFile], CacheConfig, dict[str, str]] | None = None


def _examine_index(i: int) -> _Examined:
    assert _EXAMINE_STATE is not None
    files, config, aliases = _EXAMINE_STATE
    return _examine(files[i], config, aliases)


def _examine_all(
    files: list[InputFile], config: CacheConfig, aliases: dict[str, str], jobs: int
) -> list[_Examined]:
    """Examine every file, in worker processes when there are enough of them."""
    global _EXAMINE_STATE
    if jobs <= 1 or len(files) < 16 or "fork" not in multiprocessing.get_all_start_methods():
        return [_examine(f, config, aliases) for f in files]
    _EXAMINE_STATE = (files, config, aliases)
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            return list(
                pool.map(_examine_index, range(len(files)), chunksize=max(1, len(files) // (jobs * 8)))
            )
    finally:
        _EXAMINE_STATE = None


def calculate_inputs(
    files: list[InputFile],
    aliases: dict[str, str],
    config: CacheConfig,
    order_file: list[str] | None = None,
    jobs: int = 1,
) -> Inputs:
    """Parse every input once, evict what cannot go into the cache, order the rest."""
    evictions: list[Eviction] = []
    candidates: dict[str, CacheInput] = {}
    input_names: set[str] = set()
    #: file path -> the install name it is cached under, where the two differ
    renamed: dict[str, str] = {}
    for f, ex in zip(files, _examine_all(files, config, aliases, jobs), strict=True):
        if ex.install_name:
            input_names.add(ex.install_name)
        if ex.reason == "":
            continue
        if ex.reason is not None:
            evictions.append(Eviction(ex.path, ex.reason))
            continue
        if ex.path in candidates:
            evictions.append(Eviction(ex.path, "another input has the same install name"))
            continue
        loaded = _load(f, config)
        if isinstance(loaded, str):  # the file changed under us
            evictions.append(Eviction(ex.path, loaded))
            continue
        mapped, image = loaded
        if ex.decoded is not None:
            image.__dict__.update(ex.decoded)  # fill the cached properties from the worker's decode
        if f.path and f.path != ex.path:
            renamed[f.path] = ex.path
        f.path = ex.path
        ci = CacheInput(f, image, mapped, dependencies=[(d.path, d.kind) for d in image.dylibs])
        candidates[f.path] = ci

    # aliases let a dependency name a cache dylib through a symlink
    def resolve(name: str) -> str | None:
        if name in candidates:
            return name
        target = aliases.get(name)
        return target if target in candidates else None

    def evict_unresolved_dependencies() -> None:
        """Self-containment, to a fixed point: evicting one dylib can strand its clients."""
        changed = True
        while changed:
            changed = False
            for path in sorted(candidates):
                ci = candidates[path]
                for dep, kind in ci.dependencies:
                    if resolve(dep) is not None:
                        continue
                    if kind == "weak" and dep not in input_names:
                        continue  # a missing weak dylib is fine unless it exists but was rejected
                    if kind == "weak":
                        reason = f"Depends on weak-linked dylib which was evicted: '{dep}'"
                    else:
                        reason = f"Could not find dependency '{dep}'"
                    if dep in input_names:
                        reason = f"Depends on dylib '{dep}' which was evicted from the cache"
                    evictions.append(Eviction(path, reason))
                    del candidates[path]
                    changed = True
                    break

    # every bind must resolve among what is left, and evicting a dylib can break another's binds
    evict_unresolved_dependencies()
    while True:
        names = sorted(candidates)
        at = {name: i for i, name in enumerate(names)}
        nodes = [_ResolutionNode(candidates[n], at, resolve) for n in names]
        index = ExportIndex(nodes)
        unresolved = []
        for i, name in enumerate(names):
            try:
                reason = index.missing_symbol(i)
            except FormatError as exc:
                reason = f"malformed Mach-O: {exc}"
            if reason is not None:
                unresolved.append(Eviction(name, reason))
        if not unresolved:
            break
        for e in unresolved:
            evictions.append(e)
            del candidates[e.path]
        evict_unresolved_dependencies()

    rank = {name: i for i, name in enumerate(order_file or [])}
    dylibs = sorted(candidates.values(), key=lambda c: _sort_key(c.install_name, rank))
    for i, ci in enumerate(dylibs):
        ci.index = i
    # a dylib cached under its install name keeps its file path, and the links to that file, as aliases
    links = {a: renamed.get(t, t) for a, t in aliases.items()}
    links.update({p: name for p, name in renamed.items() if name in candidates})
    cache_aliases = {a: t for a, t in sorted(links.items()) if t in candidates and a not in candidates}
    return Inputs(dylibs, evictions, cache_aliases, input_names)
