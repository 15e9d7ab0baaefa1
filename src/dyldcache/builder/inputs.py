"""Phase 1, calculate_inputs: which input files become cache dylibs, in which order, under
which aliases.

Eligibility follows ``docs/cache-format.md`` §8 (dyld-1162 ``canBePlacedInDyldCache`` and
the builder's own filters). Every rejection is an :class:`Eviction` reported in Apple's
wording; a malformed file is evicted with the reader's error, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import FormatError, SplitSegSynthesisError
from ..macho import constants as C
from ..macho.fat import is_fat, parse_fat, thin_arch
from ..macho.file import MachOFile, MappedFile, parse_macho
from ..names import encode_name
from ..synth import synthesized_split_seg_info
from .config import CacheConfig
from .eligibility import SILENT_SKIPS, check_eligibility, is_eligible_path
from .export_table import ExportTable
from .fixup_facts import FixupFacts, fixup_facts
from .input_files import InputFile, RootFS
from .install_names import LOADER_PATH, is_relative_name, resolve_load
from .load_commands import load_command_room_problem
from .rebuilt_exports import exports_size_bound, rebuilt_trie_nodes
from .scratch import ScratchArray, ScratchFiles
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
    #: the install name in the cache when it is not the image's own: renamed by the install-name
    #: map, or the path in the root of a dylib whose LC_ID_DYLIB is relative (@rpath/...)
    cache_name: str = ""
    #: the names the cached LC_*_DYLIB commands carry, in ordinal order (relative and renamed
    #: loads replaced by the install name of the dylib they reach)
    load_names: list[str] = field(default_factory=list)
    #: its split seg info was synthesized from its code and data (the input has none)
    synthesized_split_seg: bool = False
    #: its @rpath loads were resolved through its LC_RPATHs (which the cache drops)
    rpaths_resolved: bool = False
    #: what phases 1-4 need of its fixups (phase 1's workers decode them; nobody keeps them)
    facts: FixupFacts | None = None
    #: its exports (phase 1's workers read them)
    export_table: ExportTable | None = None
    #: bytes its rebuilt export trie can take at most (rebuilt_exports.py)
    exports_size_bound: int = 0
    #: the nodes of its rebuilt export trie, in the scratch files (rebuilt_exports.py)
    exports_trie_nodes: ScratchArray | None = None

    @property
    def install_name(self) -> str:
        name = self.cache_name or self.image.install_name
        assert name is not None
        return name

    @property
    def exports(self) -> ExportTable:
        assert self.export_table is not None, "calculate_inputs fills it"
        return self.export_table

    @property
    def fixup_facts(self) -> FixupFacts:
        assert self.facts is not None, "calculate_inputs fills it"
        return self.facts

    def restore_decodes(self, *, last: bool = False) -> None:
        """Give the image its decoded fixups and split seg info back, for the per-dylib passes
        (``last``: theirs, the last read; the scratch space is given back)."""
        self.fixup_facts.restore(self.image, last=last)

    def drop_decodes(self) -> None:
        """Forget what :meth:`restore_decodes` gave, and the LINKEDIT tables the image decoded
        on demand since (a worker passes over hundreds of dylibs: kept, they would add up)."""
        self.image.forget_decodes()

    @contextlib.contextmanager
    def decoded(self) -> Iterator[None]:
        """The decoded fixups and split seg info, back for the ``with`` block only (the builder
        process keeps none between phases)."""
        self.restore_decodes()
        try:
            yield
        finally:
            self.drop_decodes()


class _ResolutionNode:
    """A candidate as symbol resolution sees it: dependents as indexes among the candidates."""

    __slots__ = ("bound_imports", "dependents", "exports", "image", "install_name")

    def __init__(self, ci: CacheInput, at: dict[str, int], resolve: Callable[[str], str | None]) -> None:
        self.image = ci.image
        self.exports = ci.exports
        self.install_name = ci.install_name
        self.bound_imports = ci.fixup_facts.bound_imports
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
    #: things the user should know that evicted nothing
    warnings: list[str] = field(default_factory=list)


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
    #: the install name in the cache (the image's own, renamed or made absolute)
    install_name: str | None
    #: eviction reason; "" for a silent skip; None when eligible
    reason: str | None
    #: the exports of an eligible dylib, which the parent keeps (compact)
    exports: ExportTable | None = None
    #: the facts of its fixups and split seg info (the arrays are in the scratch files)
    facts: FixupFacts | None = None
    #: its split seg info was synthesized (it is in the scratch files)
    synthesized: bool = False
    #: bytes its rebuilt export trie can take at most
    exports_size_bound: int = 0
    #: the nodes of its rebuilt export trie (in the scratch files)
    exports_trie_nodes: ScratchArray | None = None


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


def _placed_path(path: str, install_name: str | None, aliases: dict[str, str]) -> str:
    """The path a file is cached under: its own, or its install name when that is a symlink in
    the root that resolves to the file. dyld-1162 does this on macOS and for cryptex paths; we do
    it on every platform, Apple's rules or not, since a root installs a dylib under its versioned
    file name with the install name as a symlink on every platform (the real-root tests rely on
    it on iOS)."""
    if install_name is None or install_name == path or aliases.get(install_name) != path:
        return path
    return install_name


def cache_install_name(image: MachOFile, f: InputFile, config: CacheConfig) -> str | None:
    """The install name ``image`` gets in the cache: renamed by the install-name map, its path in
    the root when its own is relative (not with Apple's rules), else its own."""
    own = image.install_name
    if own is None:
        return None
    renamed = config.install_names.rename(own) if config.install_names is not None else None
    if renamed is not None:
        return renamed
    if is_relative_name(own) and f.path and not config.apple_rules:
        return f.path
    return own


def _examine(f: InputFile, config: CacheConfig, aliases: dict[str, str], scratch: ScratchFiles) -> _Examined:
    loaded = _load(f, config)
    if isinstance(loaded, str):
        return _Examined(f.path or f.host_path, None, loaded)
    _, image = loaded
    install = cache_install_name(image, f, config)
    path = f.path or install or f.host_path
    if f.path:
        path = _placed_path(path, install, aliases)
    if path in SILENT_SKIPS:
        return _Examined(path, install, "")
    if config.apple_rules and not is_eligible_path(path):
        return _Examined(path, install, "path is not in a shared cache location")
    exports: ExportTable | None = None
    facts: FixupFacts | None = None
    synthesized = False
    trie_bound = 0
    trie_nodes: ScratchArray | None = None
    try:
        reason = check_eligibility(image, path, config, install)
        if reason is None and image.split_seg_version is None:
            # no split seg info from the linker (Apple's rules evicted it above): derive it
            try:
                image.__dict__["split_seg"] = synthesized_split_seg_info(image, keep_page_offsets=True)
                synthesized = True
            except SplitSegSynthesisError as exc:
                reason = f"no split seg info, and it cannot be synthesized: {exc}"
        if reason is None:
            # the exports come back to the parent with the verdict; the fixups and split seg
            # info (checked by check_eligibility) go to the scratch files
            _check_linkedit_tables(image)
            exports = ExportTable.of_image(image)
            facts = fixup_facts(image, scratch)
            nodes = rebuilt_trie_nodes(exports)
            trie_bound = exports_size_bound(exports, nodes)
            trie_nodes = scratch.write(nodes)
    except FormatError as exc:
        reason, exports = f"malformed Mach-O: {exc}", None
    except Exception as exc:  # a bug of ours on odd input: costs this dylib, not the build
        reason, exports = internal_error_reason(exc), None
    if exports is None:
        return _Examined(path, install, reason)
    return _Examined(path, install, reason, exports, facts, synthesized, trie_bound, trie_nodes)


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
    scratch: ScratchFiles,
    on_examined: Callable[[], None] | None = None,
) -> list[_Examined]:
    """Examine every file, in worker processes when there are enough of them."""
    return run_tasks(
        lambda i: _examine(files[i], config, aliases, scratch),
        len(files),
        jobs if len(files) >= 16 else 1,
        on_result=on_examined,
    )


def calculate_inputs(
    files: list[InputFile],
    aliases: dict[str, str],
    config: CacheConfig,
    scratch: ScratchFiles,
    order_file: list[str] | None = None,
    jobs: int = 1,
    excluded: dict[str, str] | None = None,
    root: RootFS | None = None,
    on_examined: Callable[[], None] | None = None,
) -> Inputs:
    """Parse every input once, evict what cannot go into the cache, order the rest.

    ``excluded`` (path -> reason) are dylibs a later phase of an earlier attempt failed on:
    they are evicted with that reason. The decoded fixups and split seg info of eligible dylibs
    are written to ``scratch``. ``root`` resolves dependency paths through the root's
    symlinks (a dependency may name a cache dylib through a symlinked folder). ``on_examined``
    is called once per input file examined (progress).
    """
    excluded = excluded or {}
    evictions: list[Eviction] = []
    warnings: list[str] = []
    candidates: dict[str, CacheInput] = {}
    input_names: set[str] = set()
    #: file path -> the install name it is cached under, where the two differ
    renamed: dict[str, str] = {}
    #: install path of every file examined, eligible or not
    examined: set[str] = set()
    pending: list[tuple[InputFile, _Examined]] = []
    for f, ex in zip(files, _examine_all(files, config, aliases, jobs, scratch, on_examined), strict=True):
        if ex.install_name:
            input_names.add(ex.install_name)
        if f.path:
            examined.add(f.path)
            if f.path != ex.path:
                renamed[f.path] = ex.path
        pending.append((f, ex))

    def locate(candidate: str) -> str | None:
        """The install path of the file a resolved load names, if there is one."""
        if root is None:
            plain = posixpath.normpath(candidate)
            return plain if plain in input_names else None
        found = root.resolve(candidate)
        if found is None or not os.path.isfile(root.host(found)):
            return None
        return renamed.get(found, found)

    for f, ex in pending:
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
        f.path = ex.path
        ci = CacheInput(
            f,
            image,
            mapped,
            synthesized_split_seg=ex.synthesized,
            facts=ex.facts,
            export_table=ex.exports,
            exports_size_bound=ex.exports_size_bound,
            exports_trie_nodes=ex.exports_trie_nodes,
        )
        if ex.install_name != image.install_name and ex.install_name is not None:
            ci.cache_name = ex.install_name
        problem = _resolve_dependencies(ci, config, locate)
        if problem is not None:
            evictions.append(Eviction(ex.path, problem))
            continue
        candidates[f.path] = ci

    # aliases let a dependency name a cache dylib through a symlink
    def resolve(name: str) -> str | None:
        if name in candidates:
            return name
        target = aliases.get(name)
        if target is None and root is not None:
            target = root.resolve(name)
        if target is None:
            return None
        target = renamed.get(target, target)
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
                    known = dep in input_names or dep in examined
                    if kind == "weak" and not known:
                        continue  # a missing weak dylib is fine unless it exists but was rejected
                    if kind == "weak":
                        reason = f"Depends on weak-linked dylib which was evicted: '{dep}'"
                    else:
                        reason = f"Could not find dependency '{dep}'"
                    if known:
                        reason = f"Depends on dylib '{dep}' which was evicted from the cache"
                    evictions.append(Eviction(path, reason))
                    del candidates[path]
                    changed = True
                    break

    # every bind must resolve among what is left, and evicting a dylib can break another's binds;
    # the cached load commands must fit where the input's are
    while True:
        evict_unresolved_dependencies()
        names = sorted(candidates)
        at = {name: i for i, name in enumerate(names)}
        nodes = [_ResolutionNode(candidates[n], at, resolve) for n in names]
        # every dylib's binds, looked up in the worker processes (they inherit the tables)
        reasons = run_tasks(
            functools.partial(_missing_symbol, ExportIndex(nodes), nodes),
            len(names),
            jobs if len(names) >= 64 else 1,
        )
        unresolved = [
            Eviction(name, reason) for name, reason in zip(names, reasons, strict=True) if reason is not None
        ]
        if not unresolved:
            unresolved = _cramped_load_commands(candidates, resolve, warnings)
        if not unresolved:
            break
        for e in unresolved:
            evictions.append(e)
            del candidates[e.path]

    rank = {name: i for i, name in enumerate(order_file or [])}
    dylibs = sorted(candidates.values(), key=lambda c: _sort_key(c.install_name, rank))
    for i, ci in enumerate(dylibs):
        ci.index = i
        # later phases look dependencies up by the install names of the cache dylibs
        ci.dependencies = [(resolve(dep) or dep, kind) for dep, kind in ci.dependencies]
    # a dylib cached under its install name keeps its file path, and the links to that file, as aliases
    links = {a: renamed.get(t, t) for a, t in aliases.items()}
    links.update({p: name for p, name in renamed.items() if name in candidates})
    cache_aliases = {a: t for a, t in sorted(links.items()) if t in candidates and a not in candidates}
    return Inputs(dylibs, evictions, cache_aliases, input_names, warnings)


def _missing_symbol(index: ExportIndex, nodes: list[_ResolutionNode], i: int) -> str | None:
    """Why a bind of ``nodes[i]`` cannot be resolved, or None (ExportIndex.missing_symbol)."""
    try:
        return index.missing_symbol(i, nodes[i].bound_imports)
    except FormatError as exc:
        return f"malformed Mach-O: {exc}"


def _resolve_dependencies(
    ci: CacheInput, config: CacheConfig, locate: Callable[[str], str | None]
) -> str | None:
    """Fill ``ci.dependencies``: each load's install path, relative names resolved and renames
    applied (Apple's rules resolve nothing). Returns the eviction reason of a load that is not
    weak and leads nowhere, or None."""
    image = ci.image
    renames = config.install_names
    loader = ci.install_name
    for dep in image.dylibs:
        name = dep.path
        renamed = renames.rename(name) if renames is not None else None
        if renamed is not None:
            name = renamed
        elif is_relative_name(name) and not config.apple_rules:
            found = resolve_load(name, loader, image.rpaths, locate)
            if found.path is not None:
                ci.rpaths_resolved |= dep.path.startswith("@rpath/")
                name = found.path
            elif not dep.is_weak:
                return found.failure(dep.path)
            # a weak load that leads nowhere is dropped, as dyld drops it
        ci.dependencies.append((name, dep.kind))
    return None


def _cramped_load_commands(
    candidates: dict[str, CacheInput], resolve: Callable[[str], str | None], warnings: list[str]
) -> list[Eviction]:
    """Set each candidate's cached load-command names; evict those whose load commands, with
    the new names, no longer fit before the first section of __TEXT.

    A resolved or renamed load is written as the absolute install name of the dylib it reaches.
    Where those do not fit, it is written relative to the loading dylib's own cache path
    (``@loader_path/../x.dylib``), which dyld resolves to the same cache dylib, and a warning
    says so; a dylib whose commands do not fit even then is evicted."""
    out = []
    for path, ci in sorted(candidates.items()):
        absolute: list[str] = []
        relative: list[str] = []
        folder = posixpath.dirname(ci.install_name)
        for ref, (dep, _kind) in zip(ci.image.dylibs, ci.dependencies, strict=True):
            target = resolve(dep)
            if dep == ref.path or target is None:
                absolute.append(ref.path)
                relative.append(ref.path)
            else:
                absolute.append(target)
                relative.append(f"{LOADER_PATH}/{posixpath.relpath(target, folder)}")
        ci.load_names = absolute
        problem = load_command_room_problem(ci.image, ci.install_name, absolute)
        if problem is not None and load_command_room_problem(ci.image, ci.install_name, relative) is None:
            ci.load_names = relative
            warnings.append(
                f"{path}: its resolved loads are written relative to it (@loader_path/...), as "
                f"absolute paths {problem.removeprefix('its load commands with absolute paths ')}"
            )
            problem = None
        if problem is not None:
            out.append(
                Eviction(path, problem + "; relative to the dylib (@loader_path/...) they do not fit either")
            )
    return out
