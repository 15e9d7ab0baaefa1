"""Phase 1, calculate_inputs: which input files become cache dylibs, in which order, under
which aliases.

Eligibility follows ``docs/cache-format.md`` §8 (dyld-1162 ``canBePlacedInDyldCache`` and
the builder's own filters). Every rejection is an :class:`Eviction` reported in Apple's
wording; a malformed file is evicted with the reader's error, never a traceback.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import FormatError
from ..macho import constants as C
from ..macho.fat import is_fat, parse_fat, thin_arch
from ..macho.file import MachOFile, MappedFile, parse_macho
from ..names import encode_name
from .config import CacheConfig
from .eligibility import SILENT_SKIPS, check_eligibility, is_eligible_path
from .input_files import InputFile, RootFS
from .symbol_resolution import ExportIndex
from .workers import run_tasks


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


# ---------------------------------------------------------------------------------------------
# the phase


def _sort_key(install_name: str, order: dict[str, int]) -> tuple[int, int, int, bytes]:
    return (
        0 if install_name == "/usr/lib/libobjc.A.dylib" else 1,
        order.get(install_name, len(order)),
        1 if install_name.startswith("/System/iOSSupport/") else 0,
        encode_name(install_name),
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
    if path in SILENT_SKIPS:
        return _Examined(path, image.install_name, "")
    if not is_eligible_path(path):
        return _Examined(path, image.install_name, "path is not in a shared cache location")
    decoded: dict[str, object] | None = None
    try:
        reason = check_eligibility(image, path, config)
        if reason is None:
            # the expensive decodes; they come back to the parent with the verdict
            decoded = {"fixups": image.fixups, "split_seg": image.split_seg, "exports": image.exports}
            _check_linkedit_tables(image)
    except FormatError as exc:
        reason, decoded = f"malformed Mach-O: {exc}", None
    except Exception as exc:  # a bug of ours on odd input: costs this dylib, not the build
        reason, decoded = internal_error_reason(exc), None
    return _Examined(path, image.install_name, reason, decoded)


def internal_error_reason(exc: BaseException) -> str:
    """An eviction reason for an unexpected error (a bug in dyldcache, shown so it can be reported)."""
    return f"dyldcache could not process it (internal error {type(exc).__name__}: {exc}; please report it)"


def _check_linkedit_tables(image: MachOFile) -> None:
    """Decode what the LINKEDIT pass reads later, so that a bad table evicts the dylib now."""
    symtab = image.symbol_table
    indirect = image.indirect_symbols
    special = C.INDIRECT_SYMBOL_LOCAL | C.INDIRECT_SYMBOL_ABS
    plain = indirect[(indirect & special) == 0]
    if len(plain) and int(plain.max()) >= len(symtab.nlist):
        raise image.error(
            None, f"indirect symbol index {int(plain.max())} is past the {len(symtab.nlist)} symbols"
        )
    dy = image.dysymtab_command
    if dy is not None:
        n = len(symtab.nlist)
        for start, count, what in (
            (dy.ilocalsym, dy.nlocalsym, "locals"),
            (dy.iextdefsym, dy.nextdefsym, "exports"),
            (dy.iundefsym, dy.nundefsym, "imports"),
        ):
            if start + count > n:
                raise image.error(None, f"LC_DYSYMTAB {what} range {start}+{count} exceeds the {n} symbols")
    image.function_starts  # noqa: B018 - decoded for its checks
    image.data_in_code  # noqa: B018


def _examine_all(
    files: list[InputFile],
    config: CacheConfig,
    aliases: dict[str, str],
    jobs: int,
    on_examined: Callable[[], None] | None = None,
) -> list[_Examined]:
    """Examine every file, in worker processes when there are enough of them."""
    return run_tasks(
        lambda i: _examine(files[i], config, aliases),
        len(files),
        jobs if len(files) >= 16 else 1,
        on_result=on_examined,
    )


def calculate_inputs(
    files: list[InputFile],
    aliases: dict[str, str],
    config: CacheConfig,
    order_file: list[str] | None = None,
    jobs: int = 1,
    excluded: dict[str, str] | None = None,
    root: RootFS | None = None,
    on_examined: Callable[[], None] | None = None,
) -> Inputs:
    """Parse every input once, evict what cannot go into the cache, order the rest.

    ``excluded`` (path -> reason) are dylibs a later phase of an earlier attempt failed on:
    they are evicted with that reason. ``root`` resolves dependency paths through the root's
    symlinks (a dependency may name a cache dylib through a symlinked folder). ``on_examined``
    is called once per input file examined (progress).
    """
    excluded = excluded or {}
    evictions: list[Eviction] = []
    candidates: dict[str, CacheInput] = {}
    input_names: set[str] = set()
    #: file path -> the install name it is cached under, where the two differ
    renamed: dict[str, str] = {}
    for f, ex in zip(files, _examine_all(files, config, aliases, jobs, on_examined), strict=True):
        if ex.install_name:
            input_names.add(ex.install_name)
        if ex.reason == "":
            continue
        if ex.reason is not None:
            evictions.append(Eviction(ex.path, ex.reason))
            continue
        if ex.path in excluded:
            evictions.append(Eviction(ex.path, excluded[ex.path]))
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
        if target is None and root is not None:
            target = root.resolve(name)
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
